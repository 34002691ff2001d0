/* Integer-dot kernel for INT4 decode at batch 1-4: activations quantized to int8 per group of
 * 32 (one fp32 scale d = max|x| / 127 per group, q = round(x * 127 / max|x|): llama.cpp's
 * Q8_0), codes multiplied as integers with vpmaddubsw / vpmaddwd, one float multiply-add per
 * group: fewer instructions than widening 4-bit codes to fp32, which bounds batch-1 decode of
 * 4-bit weights on AVX2 (~1.3x faster here). Used where ember_weight.q8_activations is set.
 * (For INT8 weights the sign-trick equivalent measured no faster than fp32 activations: the
 * bytes, not the instructions, bound them.)
 * Reference: the method's reference on quantize_q8(x) (ember/kernels/linear/q8.py).
 */
#ifndef EMBER_LINEAR_Q8_H
#define EMBER_LINEAR_Q8_H

#include "simd.h"

typedef struct {
    int8_t* q;     /* [M, K] codes, in the byte order INT4 wants */
    float* d;      /* [M, G] scales */
    float* X;      /* [M, G] group sums of the dequantized activations: d * sum(q) */
} q8_rows;

/* Quantize M rows, each group's bytes in the order codes 0-7, 16-23, 8-15, 24-31: the order
 * INT4's two nibble halves come out of one 16-byte load. (Packing 4 x 8 int32 to bytes leaves
 * 4-byte pieces in the order 0, 2, 4, 6, 1, 3, 5, 7; the permutation puts them where they go.) */
static void quantize_q8(const float* x, long M, long K, q8_rows* out) {
    const long G = K / 32;
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256i order = _mm256_setr_epi32(0, 4, 2, 6, 1, 5, 3, 7);
    for (long m = 0; m < M; m++)
        for (long g = 0; g < G; g++) {
            const float* p = x + m * K + 32 * g;
            __m256 v0 = _mm256_loadu_ps(p), v1 = _mm256_loadu_ps(p + 8), v2 = _mm256_loadu_ps(p + 16), v3 = _mm256_loadu_ps(p + 24);
            __m256 mx = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v0), _mm256_andnot_ps(sign, v1)),
                                      _mm256_max_ps(_mm256_andnot_ps(sign, v2), _mm256_andnot_ps(sign, v3)));
            __m128 h = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
            h = _mm_max_ps(h, _mm_movehl_ps(h, h));
            h = _mm_max_ss(h, _mm_movehdup_ps(h));
            float amax = _mm_cvtss_f32(h);
            float d = amax / 127.0f, id = amax > 0.0f ? 127.0f / amax : 0.0f;
            __m256 vid = _mm256_set1_ps(id);
            __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(v0, vid)), i1 = _mm256_cvtps_epi32(_mm256_mul_ps(v1, vid));
            __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(v2, vid)), i3 = _mm256_cvtps_epi32(_mm256_mul_ps(v3, vid));
            __m256i s = _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3));
            __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
            s4 = _mm_hadd_epi32(s4, s4);
            s4 = _mm_hadd_epi32(s4, s4);
            __m256i b = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
            b = _mm256_permutevar8x32_epi32(b, order);
            _mm256_storeu_si256((__m256i*)(out->q + m * K + 32 * g), b);
            out->d[m * G + g] = d;
            out->X[m * G + g] = d * (float)_mm_cvtsi128_si32(s4);
        }
}

/* One group of INT4 codes as 32 unsigned bytes, in the order quantize_q8 puts x for INT4. */
static inline __m256i int4_codes(const uint8_t* c) {
    __m128i raw = _mm_loadu_si128((const __m128i*)c);
    const __m128i low = _mm_set1_epi8(15);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), low), _mm_and_si128(raw, low));
}

static inline __m256 int_dot(__m256i codes, const int8_t* xq) {
    __m256i p = _mm256_maddubs_epi16(codes, _mm256_loadu_si256((const __m256i*)xq));
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(p, _mm256_set1_epi16(1)));
}

/* Rows 0..mt-1 (mt <= 4) of quantized x times INT4 row n. The per-group factors s_g * d_g
 * are formed 8 groups at a time first (sd: scratch of 4 * G floats), so the loop over groups
 * is loads, integer dots and one multiply-add; two groups per iteration, two accumulators. */
static void dot_rows_int4_q8(const ember_weight* W, long n, const q8_rows* xq, long mt, float* r, float* sd) {
    const long K = W->k, G = K / 32;
    const uint8_t* c = (const uint8_t*)W->w + n * (K / 2);
    const uint16_t* sz = W->sz + n * G * 2;
    float zsum[4];  /* sum_g (z_g - 8 s_g) X_g per row, formed in the same pass as sd */
    for (long i = 0; i < mt; i++) zsum[i] = zero_point_sum(sz, xq->X + i * G, G, xq->d + i * G, sd + i * G);
    __m256 acc[4][2];
    for (int i = 0; i < 4; i++) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    long g = 0;
    for (; g + 2 <= G; g += 2) {
        __m256i c0 = int4_codes(c + 16 * g), c1 = int4_codes(c + 16 * g + 16);
        for (int i = 0; i < 4; i++) {
            if (i < mt) {
                const int8_t* xg = xq->q + i * K + 32 * g;
                acc[i][0] = _mm256_fmadd_ps(int_dot(c0, xg), _mm256_broadcast_ss(sd + i * G + g), acc[i][0]);
                acc[i][1] = _mm256_fmadd_ps(int_dot(c1, xg + 32), _mm256_broadcast_ss(sd + i * G + g + 1), acc[i][1]);
            }
        }
    }
    if (g < G) {
        __m256i c0 = int4_codes(c + 16 * g);
        for (int i = 0; i < 4; i++)
            if (i < mt)
                acc[i][0] = _mm256_fmadd_ps(int_dot(c0, xq->q + i * K + 32 * g), _mm256_broadcast_ss(sd + i * G + g), acc[i][0]);
    }
    for (int i = 0; i < mt; i++)
        r[i] = hsum_ps(_mm256_add_ps(acc[i][0], acc[i][1])) + zsum[i];
}

#endif
