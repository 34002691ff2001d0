/* Bit planes with a scale each, through T-MAC's int8 lookup tables: w = sum_i scale_i bit_i +
 * minimum, any scale per (row, group of 64, plane). It runs ShiftAddLLM's binary-coding
 * quantization (BCQ: w = sum_i alpha_i b_i with b_i = +-1, i.e. scale_i = 2 alpha_i and
 * minimum = -sum alpha_i) and round-to-nearest at odd widths (scale_i = 2^i scale), whose
 * planes can't be paired into linear_tmac.h's byte pairs. References: tmac_ref.py
 * (lut_linear), planes.py (packing), bcq.py and tmac.py (quantizers).
 *
 * Same tables as linear_tmac.h (tmac_build_tables, table_slot). Weights in blocks of 32 rows:
 *   codes [N/32, G, P, 8, 32]: for plane i and table pair j, byte 2e + h holds row e + 16h's
 *         index into table 16g + 2j (low nibble) and 16g + 2j + 1 (high nibble);
 *   sm    [N/32, G, P + 1, 32]: fp16 scales of the 32 rows for each plane, then minimums.
 * One vpshufb gives 32 rows' lookups; vpmaddubsw by (1, 0) and by (0, 1) widens the even
 * bytes (rows 0-15) and the odd bytes (rows 16-31) to int16, in row order. A plane's sums of
 * a group (<= 16 x 127) become fp32 once per group and take the plane's scale times d.
 * Per lookup this is ~1.5x linear_tmac.h's paired-plane work (it pays for per-plane scales).
 */
#ifndef EMBER_LINEAR_PLANES_H
#define EMBER_LINEAR_PLANES_H

#include <stdlib.h>

#include "linear_tmac.h"
#include "simd.h"
#include "weight.h"

#define PLANES_ROWS 32  /* output rows per block */

/* Rows m0..m0+mt-1 (mt <= 4) times the 32 rows of one block of P planes; r[i][0..3]: row i's
 * 32 sums, 8 rows each. always_inline: P is a constant in each caller. */
static inline __attribute__((always_inline)) void planes_block_tile(const uint8_t* codes, const uint16_t* sm,
                                                                    const tmac_tables* xt, long K, long m0, long mt,
                                                                    int P, __m256 r[4][4]) {
    const long G = K / TMAC_GROUP, T = K / 4;
    __m256 sum[4][4];
    for (int i = 0; i < 4; i++)
        for (int q = 0; q < 4; q++) sum[i][q] = _mm256_setzero_ps();
    for (long g = 0; g < G; g++, sm += (P + 1) * PLANES_ROWS) {
        for (int p = 0; p < P; p++, codes += 8 * 32) {
            /* the weights stream from DRAM at batch 1: fetch 2 KB ahead, as linear_int4.h does */
            for (long ahead = 0; ahead < 8 * 32; ahead += 64) _mm_prefetch((const char*)codes + 2048 + ahead, _MM_HINT_T0);
            __m256i even[4], odd[4];  /* int16 sums of rows 0-15, rows 16-31 */
#if defined(__AVX512BW__)
            const __m512i nib = _mm512_set1_epi8(15), c10 = _mm512_set1_epi16(1), c01 = _mm512_set1_epi16(1 << 8);
            __m512i e2[4], o2[4];
            for (int i = 0; i < 4; i++) e2[i] = o2[i] = _mm512_setzero_si512();
            #pragma GCC unroll 1
            for (int jj = 0; jj < 4; jj++) {
                __m512i v = _mm512_loadu_si512((const void*)(codes + 2 * jj * 32));
                __m512i lo = _mm512_and_si512(v, nib), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), nib);
                for (int i = 0; i < 4; i++) {
                    if (i < mt) {
                        const int8_t* tab = xt->tab + (m0 + i) * T * TMAC_TABLE_BYTES + table_slot(TMAC_TABLES * g + 4 * jj);
                        __m512i a = _mm512_shuffle_epi8(_mm512_loadu_si512((const void*)tab), lo);
                        __m512i b = _mm512_shuffle_epi8(_mm512_loadu_si512((const void*)(tab + 64)), hi);
                        e2[i] = _mm512_add_epi16(e2[i], _mm512_add_epi16(_mm512_maddubs_epi16(c10, a), _mm512_maddubs_epi16(c10, b)));
                        o2[i] = _mm512_add_epi16(o2[i], _mm512_add_epi16(_mm512_maddubs_epi16(c01, a), _mm512_maddubs_epi16(c01, b)));
                    }
                }
            }
            for (int i = 0; i < 4; i++) {
                even[i] = _mm256_add_epi16(_mm512_castsi512_si256(e2[i]), _mm512_extracti64x4_epi64(e2[i], 1));
                odd[i] = _mm256_add_epi16(_mm512_castsi512_si256(o2[i]), _mm512_extracti64x4_epi64(o2[i], 1));
            }
#else
            const __m256i nib = _mm256_set1_epi8(15), c10 = _mm256_set1_epi16(1), c01 = _mm256_set1_epi16(1 << 8);
            for (int i = 0; i < 4; i++) even[i] = odd[i] = _mm256_setzero_si256();
            #pragma GCC unroll 1
            for (int j = 0; j < 8; j++) {
                __m256i v = _mm256_loadu_si256((const __m256i*)(codes + j * 32));
                __m256i lo = _mm256_and_si256(v, nib), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), nib);
                for (int i = 0; i < 4; i++) {
                    if (i < mt) {
                        const int8_t* tab = xt->tab + (m0 + i) * T * TMAC_TABLE_BYTES + table_slot(TMAC_TABLES * g + 2 * j);
                        __m256i a = _mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i*)tab), lo);
                        __m256i b = _mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i*)(tab + TMAC_TABLE_BYTES)), hi);
                        even[i] = _mm256_add_epi16(even[i], _mm256_add_epi16(_mm256_maddubs_epi16(c10, a), _mm256_maddubs_epi16(c10, b)));
                        odd[i] = _mm256_add_epi16(odd[i], _mm256_add_epi16(_mm256_maddubs_epi16(c01, a), _mm256_maddubs_epi16(c01, b)));
                    }
                }
            }
#endif
            const uint16_t* s = sm + p * PLANES_ROWS;
            __m256 s0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)s));
            __m256 s1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(s + 8)));
            __m256 s2 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(s + 16)));
            __m256 s3 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(s + 24)));
            for (int i = 0; i < 4; i++) {
                if (i < mt) {
                    __m256 d = _mm256_set1_ps(xt->d[(m0 + i) * G + g]);
                    sum[i][0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(even[i]))), _mm256_mul_ps(s0, d), sum[i][0]);
                    sum[i][1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_extracti128_si256(even[i], 1))), _mm256_mul_ps(s1, d), sum[i][1]);
                    sum[i][2] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(odd[i]))), _mm256_mul_ps(s2, d), sum[i][2]);
                    sum[i][3] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_extracti128_si256(odd[i], 1))), _mm256_mul_ps(s3, d), sum[i][3]);
                }
            }
        }
        const uint16_t* mn = sm + P * PLANES_ROWS;
        for (int q = 0; q < 4; q++) {
            __m256 minimum = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(mn + 8 * q)));
            for (int i = 0; i < 4; i++)
                if (i < mt) sum[i][q] = _mm256_fmadd_ps(minimum, _mm256_set1_ps(xt->X[(m0 + i) * G + g]), sum[i][q]);
        }
    }
    for (int i = 0; i < 4; i++)
        for (int q = 0; q < 4; q++) r[i][q] = sum[i][q];
}

/* y[m * ldy + n] = (or +=) x[m] . W[n] + bias[n] for the kinds planes1..planes4 (P = 1..4,
 * a constant in each kind's instance); tables built as linear_tmac_omp builds them. */
static inline __attribute__((always_inline)) void linear_planes_omp(const ember_weight* W, const float* x, long M, float* y,
                                                                    long ldy, int accumulate, int kind) {
    const int P = kind == EMBER_PLANES1 ? 1 : kind == EMBER_PLANES2 ? 2 : kind == EMBER_PLANES3 ? 3 : 4;
    const long K = W->k, G = K / TMAC_GROUP, blocks = W->n / PLANES_ROWS;
    tmac_tables xt;
    const int shared = tmac_tables_begin(x, M, K, &xt);
    #pragma omp for schedule(static)
    for (long b = 0; b < blocks; b++) {
        const uint8_t* codes = (const uint8_t*)W->w + b * G * P * 8 * 32;
        const uint16_t* sm = W->sm + b * G * (P + 1) * PLANES_ROWS;
        for (long m0 = 0; m0 < M; m0 += 4) {
            long mt = M - m0 < 4 ? M - m0 : 4;
            __m256 r[4][4];
            planes_block_tile(codes, sm, &xt, K, m0, mt, P, r);
            for (long i = 0; i < mt; i++) {
                float* out = y + (m0 + i) * ldy + PLANES_ROWS * b;
                for (int q = 0; q < 4; q++) {
                    __m256 v = r[i][q];
                    if (W->bias) v = _mm256_add_ps(v, _mm256_loadu_ps(W->bias + PLANES_ROWS * b + 8 * q));
                    if (accumulate) v = _mm256_add_ps(_mm256_loadu_ps(out + 8 * q), v);
                    _mm256_storeu_ps(out + 8 * q, v);
                }
            }
        }
    }
    tmac_tables_end(&xt, shared);
}

#endif
