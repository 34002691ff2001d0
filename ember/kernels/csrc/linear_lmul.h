/* L-Mul products (Luo & Sun, arXiv 2410.00907): kinds lmul7 and lmul4, w: bf16 [N, K] whose
 * values already have m = 7 or 4 mantissa bits (ember/kernels/linear/lmul.py rounds them at
 * packing; subnormals flushed).
 *
 * Every product x*w is ember/numerics/lmul.py's mode "bits", computed as that file describes
 * it: the two operands' exponent|mantissa fields (sign cleared) are added as integers, the
 * exponent bias (127 << 23) subtracted and the offset 2^-l(m) added in mantissa units
 * (1 << (23 - l)); a sum below the smallest normal flushes to zero, one at or above inf's
 * field is inf; the sign is the xor of the signs; a zero operand gives zero. The activations
 * are rounded to m mantissa bits (nearest even, subnormals flushed) once per call, by every
 * thread into its own buffer (no barrier; M x K is small beside N x M x K). The field sum of
 * two finite operands is below 2^32, so it is formed as uint32 and compared unsigned (the
 * 0x80000000 flip turns AVX2's signed compares into unsigned ones). Products add up in fp32,
 * 8 lanes per row, in k order within a lane; the reference (lmul.py's lmul_matmul) sums in
 * another order, so the two agree to fp32 rounding of the sums, not bit for bit.
 * Per 8 products this is ~16 integer operations and one fp32 add, against one FMA for a
 * float product: on a CPU the L-Mul is a slowdown; its case is a multiplier-free circuit.
 * AVX2 only (the same code runs in every variant).
 */
#ifndef EMBER_LINEAR_LMUL_H
#define EMBER_LINEAR_LMUL_H

#include <stdlib.h>
#include <string.h>

#include "simd.h"
#include "weight.h"

#define LMUL_BIAS_FIELD 0x3F800000u
#define LMUL_MIN_NORMAL 0x00800000u
#define LMUL_INF 0x7F800000u

static inline int lmul_offset_exponent(int m) { return m <= 3 ? m : (m == 4 ? 3 : 4); }

/* x rounded to m mantissa bits as lmul.py's round_mantissa (nearest even, subnormals to
 * signed zero): the magnitude field and the sign bit of each value. */
static inline void lmul_prepare(const float* x, long n, int m, uint32_t* field, uint32_t* sign) {
    const uint32_t drop = 23 - (uint32_t)m;
    for (long i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, x + i, 4);
        uint32_t a = u & 0x7FFFFFFFu;
        if (a < LMUL_MIN_NORMAL) {
            a = 0;
        } else if (drop) {
            uint32_t lsb = (a >> drop) & 1u;
            a = (a + (1u << (drop - 1)) - 1u + lsb) & ~((1u << drop) - 1u);
        }
        field[i] = a;
        sign[i] = u & 0x80000000u;
    }
}

/* Rows 0..mt-1 (mt <= 4) of the prepared activations times one bf16 weight row: r[i]. */
static inline __attribute__((always_inline)) void lmul_row_tile(const uint16_t* wrow, const uint32_t* fx, const uint32_t* sx,
                                                                long K, long mt, int m, float* r) {
    const uint32_t off = 1u << (23 - lmul_offset_exponent(m));
    const __m256i flip = _mm256_set1_epi32((int)0x80000000u), absmask = _mm256_set1_epi32(0x7FFFFFFF);
    const __m256i low = _mm256_set1_epi32((int)((LMUL_MIN_NORMAL + LMUL_BIAS_FIELD - off) ^ 0x80000000u));
    const __m256i high_m1 = _mm256_set1_epi32((int)((LMUL_INF + LMUL_BIAS_FIELD - off - 1u) ^ 0x80000000u));
    const __m256i bias = _mm256_set1_epi32((int)(LMUL_BIAS_FIELD - off)), inf = _mm256_set1_epi32((int)LMUL_INF);
    const __m256i zero = _mm256_setzero_si256();
    __m256 acc[4];
    for (int i = 0; i < 4; i++) acc[i] = _mm256_setzero_ps();
    for (long k = 0; k < K; k += 8) {
        __m256i wv = _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)(wrow + k))), 16);
        __m256i fw = _mm256_and_si256(wv, absmask);
        __m256i wz = _mm256_cmpeq_epi32(fw, zero);
        for (int i = 0; i < 4; i++) {
            if (i < mt) {
                __m256i f = _mm256_loadu_si256((const __m256i*)(fx + i * K + k));
                __m256i s = _mm256_add_epi32(fw, f);  /* < 2^32: exact as uint32 */
                __m256i t = _mm256_xor_si256(s, flip);
                __m256i under = _mm256_cmpgt_epi32(low, t), over = _mm256_cmpgt_epi32(t, high_m1);
                __m256i p = _mm256_blendv_epi8(_mm256_sub_epi32(s, bias), inf, over);
                __m256i dead = _mm256_or_si256(_mm256_or_si256(under, wz), _mm256_cmpeq_epi32(f, zero));
                p = _mm256_andnot_si256(dead, p);
                __m256i sg = _mm256_and_si256(_mm256_xor_si256(wv, _mm256_loadu_si256((const __m256i*)(sx + i * K + k))), flip);
                acc[i] = _mm256_add_ps(acc[i], _mm256_castsi256_ps(_mm256_or_si256(p, sg)));
            }
        }
    }
    for (int i = 0; i < mt; i++) r[i] = hsum_ps(acc[i]);
}

static inline __attribute__((always_inline)) void linear_lmul_omp(const ember_weight* W, const float* x, long M, float* y,
                                                                  long ldy, int accumulate, int kind) {
    const int m = kind == EMBER_LMUL4 ? 4 : 7;
    const long N = W->n, K = W->k;
    uint32_t* fx = (uint32_t*)malloc(sizeof(uint32_t) * 2 * M * K);
    uint32_t* sx = fx + M * K;
    lmul_prepare(x, M * K, m, fx, sx);
    #pragma omp for schedule(static)
    for (long n = 0; n < N; n++) {
        const uint16_t* row = (const uint16_t*)W->w + n * K;
        for (long m0 = 0; m0 < M; m0 += 4) {
            long mt = M - m0 < 4 ? M - m0 : 4;
            float r[4];
            lmul_row_tile(row, fx + m0 * K, sx + m0 * K, K, mt, m, r);
            for (long i = 0; i < mt; i++) {
                float v = r[i];
                if (W->bias) v += W->bias[n];
                float* out = y + (m0 + i) * ldy + n;
                *out = accumulate ? *out + v : v;
            }
        }
    }
    free(fx);
}

#endif
