/* Causal attention of one prefill chunk: q_len queries at the end of ctx cached keys.
 *
 * Why: torch's fused SDPA for CPU runs a 512-token prefill of this model's 64-wide heads at
 * ~30 GFLOP/s and takes ~2/3 of the prefill's non-GEMM time. Here each task is two query rows
 * of one head: their scores against every key they see (two queries x four keys per step,
 * eight independent FMA chains), an exact softmax per row, then p.V with the two rows' outputs
 * in registers, 32 dims at a time. The team works through one head at a time (heads sharing
 * a KV head read the same K/V, which stay in L2), its pairs dealt round-robin so the long
 * rows at the end of the causal triangle spread over the threads.
 * q: [q_len, H, D] with row stride q_stride floats; k, v: [ctx, Hkv, D] contiguous;
 * out: [q_len, H, D] contiguous. Query i sits at position ctx - q_len + i. D: a multiple of 32,
 * at most 256.
 * Reference: TorchAttention.attend_one (ember/kernels/attention/torch_ref.py).
 */
#include <stdlib.h>

#include "simd.h"

/* Scores of query rows a, b against keys 0..n-1 (n >= 1), times scale, into sa, sb. */
static void scores2(const float* a, const float* b, const float* k, long n, long kstride, long D, float scale,
                    float* sa, float* sb) {
    const __m128 vs = _mm_set1_ps(scale);
    for (long t = 0; t < n; t += 4) {
        const float* kr[4];
        for (int j = 0; j < 4; j++) kr[j] = k + (t + j < n ? t + j : n - 1) * kstride;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
        for (long i = 0; i < D; i += 8) {
            __m256 qa = _mm256_loadu_ps(a + i), qb = _mm256_loadu_ps(b + i);
            __m256 k0 = _mm256_loadu_ps(kr[0] + i), k1 = _mm256_loadu_ps(kr[1] + i);
            __m256 k2 = _mm256_loadu_ps(kr[2] + i), k3 = _mm256_loadu_ps(kr[3] + i);
            a0 = _mm256_fmadd_ps(qa, k0, a0), a1 = _mm256_fmadd_ps(qa, k1, a1);
            a2 = _mm256_fmadd_ps(qa, k2, a2), a3 = _mm256_fmadd_ps(qa, k3, a3);
            b0 = _mm256_fmadd_ps(qb, k0, b0), b1 = _mm256_fmadd_ps(qb, k1, b1);
            b2 = _mm256_fmadd_ps(qb, k2, b2), b3 = _mm256_fmadd_ps(qb, k3, b3);
        }
        __m256 ha = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
        __m256 hb = _mm256_hadd_ps(_mm256_hadd_ps(b0, b1), _mm256_hadd_ps(b2, b3));
        _mm_storeu_ps(sa + t, _mm_mul_ps(_mm_add_ps(_mm256_castps256_ps128(ha), _mm256_extractf128_ps(ha, 1)), vs));
        _mm_storeu_ps(sb + t, _mm_mul_ps(_mm_add_ps(_mm256_castps256_ps128(hb), _mm256_extractf128_ps(hb, 1)), vs));
    }
}

/* oa = sa . V[0..na-1] * ia, ob = sb . V[0..nb-1] * ib (na <= nb: row a sees fewer keys). */
static void weighted_values2(const float* sa, long na, float ia, const float* sb, long nb, float ib, const float* v,
                             long vstride, long D, float* oa, float* ob) {
    for (long c = 0; c < D; c += 32) {
        __m256 a[4], b[4];
        for (int i = 0; i < 4; i++) a[i] = b[i] = _mm256_setzero_ps();
        long t = 0;
        for (; t < na; t++) {
            const float* vr = v + t * vstride + c;
            __m256 pa = _mm256_set1_ps(sa[t]), pb = _mm256_set1_ps(sb[t]);
            for (int i = 0; i < 4; i++) {
                __m256 x = _mm256_loadu_ps(vr + 8 * i);
                a[i] = _mm256_fmadd_ps(pa, x, a[i]);
                b[i] = _mm256_fmadd_ps(pb, x, b[i]);
            }
        }
        for (; t < nb; t++) {
            const float* vr = v + t * vstride + c;
            __m256 pb = _mm256_set1_ps(sb[t]);
            for (int i = 0; i < 4; i++) b[i] = _mm256_fmadd_ps(pb, _mm256_loadu_ps(vr + 8 * i), b[i]);
        }
        for (int i = 0; i < 4; i++) {
            _mm256_storeu_ps(oa + c + 8 * i, _mm256_mul_ps(a[i], _mm256_set1_ps(ia)));
            _mm256_storeu_ps(ob + c + 8 * i, _mm256_mul_ps(b[i], _mm256_set1_ps(ib)));
        }
    }
}

void ember_attend_causal(const float* q, long q_stride, const float* k, const float* v, long q_len, long ctx,
                         long H, long Hkv, long D, float scale, float* out, int nthreads) {
    const long pairs = (q_len + 1) / 2, group = H / Hkv, kv_stride = Hkv * D, first = ctx - q_len;
    #pragma omp parallel num_threads(nthreads)
    {
        float* sa = (float*)malloc(sizeof(float) * (2 * ctx + 8));
        float* sb = sa + ctx + 4;
        #pragma omp for schedule(static, 1)
        for (long task = 0; task < pairs * H; task++) {
            /* head by head, so the team shares one head's K/V in cache; within a head the pairs
             * alternate between threads, from the long rows at the end of the triangle down */
            long h = task / pairs, pair = pairs - 1 - task % pairs;
            long ia = 2 * pair, ib = ia + 1 < q_len ? ia + 1 : ia;
            long na = first + ia + 1, nb = first + ib + 1;
            const float* qa = q + ia * q_stride + h * D;
            const float* qb = q + ib * q_stride + h * D;
            const float* kh = k + (h / group) * D;
            const float* vh = v + (h / group) * D;
            scores2(qa, qb, kh, nb, kv_stride, D, scale, sa, sb);
            float inva = softmax_in_place(sa, na), invb = softmax_in_place(sb, nb);
            float spare[256];  /* an odd chunk's last row is its own pair: its twin goes here */
            float* ob = ib != ia ? out + ib * H * D + h * D : spare;
            weighted_values2(sa, na, inva, sb, nb, invb, vh, kv_stride, D, out + ia * H * D + h * D, ob);
        }
        free(sa);
    }
}
