/* Weight-only int8 GEMM for small batches (decode): y[M,N] = x[M,K] @ (q[N,K] * scale[N])^T.
 *
 * fp32 activations, fp32 accumulation: the int8 weights are widened to fp32 in registers
 * (8 per vpmovsxbd + vcvtdq2ps) and multiplied with FMA, so the only difference from
 * "dequantize, then F.linear" is the order of the fp32 sums. Each weight row is converted once
 * per tile of 4 activation rows and stays in L1 across tiles, so weights stream from memory
 * once per call. A row's result depends only on that row (batch-invariant).
 * Rows of W are split over OpenMP threads: the same libgomp torch loads (same soname), so
 * torch.set_num_threads governs both and the pools never oversubscribe.
 * Reference: ember/kernels/linear/int8.py:native_reference_apply. Built by linear/_native.py.
 */
#include <immintrin.h>
#include <stdint.h>

static inline float hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline __m256 widen8(const int8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)p)));
}

/* K must be a multiple of 16. */
void ember_int8_gemm(const float* x, const int8_t* q, const float* scale, float* y,
                     long M, long N, long K) {
    #pragma omp parallel for schedule(static)
    for (long n = 0; n < N; n++) {
        const int8_t* w = q + n * K;
        for (long m0 = 0; m0 < M; m0 += 4) {
            long mt = M - m0 < 4 ? M - m0 : 4;
            const float* xr = x + m0 * K;
            __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
            __m256 a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
            __m256 b0 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps();
            __m256 b2 = _mm256_setzero_ps(), b3 = _mm256_setzero_ps();
            for (long k = 0; k < K; k += 16) {
                __m256 w0 = widen8(w + k), w1 = widen8(w + k + 8);
                a0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xr + k), a0);
                b0 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xr + k + 8), b0);
                if (mt > 1) {
                    a1 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xr + K + k), a1);
                    b1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xr + K + k + 8), b1);
                }
                if (mt > 2) {
                    a2 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xr + 2 * K + k), a2);
                    b2 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xr + 2 * K + k + 8), b2);
                }
                if (mt > 3) {
                    a3 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xr + 3 * K + k), a3);
                    b3 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xr + 3 * K + k + 8), b3);
                }
            }
            float s = scale[n];
            y[m0 * N + n] = hsum_ps(_mm256_add_ps(a0, b0)) * s;
            if (mt > 1) y[(m0 + 1) * N + n] = hsum_ps(_mm256_add_ps(a1, b1)) * s;
            if (mt > 2) y[(m0 + 2) * N + n] = hsum_ps(_mm256_add_ps(a2, b2)) * s;
            if (mt > 3) y[(m0 + 3) * N + n] = hsum_ps(_mm256_add_ps(a3, b3)) * s;
        }
    }
}
