/* T-MAC: 2- and 4-bit weights times fp32 activations through int8 lookup tables, no weight
 * ever dequantized (microsoft/T-MAC; the arithmetic and its plain-torch reference:
 * ember/kernels/linear/tmac_ref.py, the packing: tmac.py).
 *
 * Per activation row, every 4 inputs x0..x3 get a table of the 16 sums T[c] = sum_j bit_j(c) x_j;
 * the 16 tables of a group of 64 inputs share one int8 scale d (max |T| / 127). A weight code
 * q = sum_i 2^i bit_i is stored as bit planes, 4 bits of a plane (4 inputs of one row) being
 * one table index, so a plane's share of those 4 products is one byte lookup, and 32 lookups
 * are one vpshufb (the table repeated in each 128-bit lane). Weights are stored in blocks of
 * 16 output rows, planes in pairs:
 *   codes [N/16, G, P, 8, 32], P = bits / 2: byte 2r + h of table pair j holds, for row r and
 *         plane 2p + h, the index into table 16g + 2j (low nibble) and 16g + 2j + 1 (high);
 *   sm    [N/16, G, 2, 16]: fp16 scales of the 16 rows, then their minimums.
 * A lookup result thus holds the two planes of each row side by side, and vpmaddubsw by the
 * planes' weights (1, 2) or (4, 8) adds them into one int16 per row: the group's integer sum
 * sum_i 2^i sum_t T_t[c] in 16 int16 lanes (<= 16 x 15 x 127 = 30480, no overflow). Per group:
 *   y[n] += scale[n] d * sum + minimum[n] * sum_{k in g} x[k].
 * Under the avx512 variant (AVX-512BW) 64-byte vpshufb takes two table pairs per instruction;
 * the tables are laid out for whichever loop the variant compiles (table_slot).
 * Up to 4 activation rows share each loaded index vector; threads split blocks of 16 rows.
 */
#ifndef EMBER_LINEAR_TMAC_H
#define EMBER_LINEAR_TMAC_H

#include <stdlib.h>

#include "simd.h"
#include "weight.h"

#define TMAC_ROWS 16         /* output rows per block */
#define TMAC_GROUP 64        /* inputs per weight scale and per table scale */
#define TMAC_TABLES 16       /* tables per group (4 inputs each) */
#define TMAC_TABLE_BYTES 32  /* a 16-entry int8 table, stored twice (one copy per 128-bit lane) */

/* Byte offset of table t (of a row's K/4) in the table buffer; its second copy follows at +16.
 * AVX2 reads a table per 32-byte load. AVX-512 reads tables 4a, 4a + 2 in one 64-byte load and
 * 4a + 1, 4a + 3 in the next, to match the two table pairs one 64-byte index load spans. */
static inline long table_slot(long t) {
#if defined(__AVX512BW__)
    static const long within[4] = {0, 64, 32, 96};
    return 128 * (t >> 2) + within[t & 3];
#else
    return TMAC_TABLE_BYTES * t;
#endif
}

typedef struct {
    int8_t* tab;  /* [M, K/4 * 32]: every row's tables, quantized */
    float* d;     /* [M, G] table scales */
    float* X;     /* [M, G] sum of the group's activations (the minimums' share) */
} tmac_tables;

/* Rows m0..m1-1 of x -> their quantized tables. T[0..7] = (x0 b0 + x1 b1) + x2 b2 and
 * T[8..15] = T[0..7] + x3 (tmac_ref.build_tables adds in this order: equal fp32 tables). */
static void tmac_build_tables(const float* x, long m0, long m1, long K, tmac_tables* out) {
    const long G = K / TMAC_GROUP, T = K / 4;
    const __m256 b0 = _mm256_castsi256_ps(_mm256_setr_epi32(0, -1, 0, -1, 0, -1, 0, -1));
    const __m256 b1 = _mm256_castsi256_ps(_mm256_setr_epi32(0, 0, -1, -1, 0, 0, -1, -1));
    const __m256 b2 = _mm256_castsi256_ps(_mm256_setr_epi32(0, 0, 0, 0, -1, -1, -1, -1));
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (long m = m0; m < m1; m++) {
        int8_t* tab = out->tab + m * T * TMAC_TABLE_BYTES;
        for (long g = 0; g < G; g++) {
            const float* p = x + m * K + TMAC_GROUP * g;
            __m256 lo[TMAC_TABLES], hi[TMAC_TABLES], mx = _mm256_setzero_ps(), xs = _mm256_setzero_ps();
            for (int t = 0; t < TMAC_TABLES; t++) {
                __m256 x0 = _mm256_set1_ps(p[4 * t]), x1 = _mm256_set1_ps(p[4 * t + 1]);
                __m256 x2 = _mm256_set1_ps(p[4 * t + 2]), x3 = _mm256_set1_ps(p[4 * t + 3]);
                lo[t] = _mm256_add_ps(_mm256_add_ps(_mm256_and_ps(b0, x0), _mm256_and_ps(b1, x1)), _mm256_and_ps(b2, x2));
                hi[t] = _mm256_add_ps(lo[t], x3);
                mx = _mm256_max_ps(mx, _mm256_max_ps(_mm256_andnot_ps(sign, lo[t]), _mm256_andnot_ps(sign, hi[t])));
            }
            for (int k = 0; k < TMAC_GROUP; k += 8) xs = _mm256_add_ps(xs, _mm256_loadu_ps(p + k));
            float amax = hmax_ps(mx);
            __m256 inv = _mm256_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
            for (int t = 0; t < TMAC_TABLES; t++) {
                __m256i qlo = _mm256_cvtps_epi32(_mm256_mul_ps(lo[t], inv)), qhi = _mm256_cvtps_epi32(_mm256_mul_ps(hi[t], inv));
                /* packs work per 128-bit lane: reorder the int16s to entries 0..15, then narrow */
                __m256i q16 = _mm256_permute4x64_epi64(_mm256_packs_epi32(qlo, qhi), 0xD8);
                __m128i q8 = _mm_packs_epi16(_mm256_castsi256_si128(q16), _mm256_extracti128_si256(q16, 1));
                int8_t* slot = tab + table_slot(TMAC_TABLES * g + t);
                _mm_storeu_si128((__m128i*)slot, q8);
                _mm_storeu_si128((__m128i*)(slot + 16), q8);
            }
            out->d[m * G + g] = amax / 127.0f;
            out->X[m * G + g] = hsum_ps(xs);
        }
    }
}

/* Rows m0..m0+mt-1 (mt <= 4) times the 16 rows of one block with P plane pairs; r[i][0..1]:
 * row i's 16 sums (rows 0-7, 8-15). always_inline: P is a constant in each caller. */
static inline __attribute__((always_inline)) void tmac_block_tile(const uint8_t* codes, const uint16_t* sm,
                                                                  const tmac_tables* xt, long K, long m0, long mt,
                                                                  int P, __m256 r[4][2]) {
    const long G = K / TMAC_GROUP, T = K / 4;
    const long group_bytes = (long)P * 8 * 32;
    __m256 sum[4][2];
    for (int i = 0; i < 4; i++) sum[i][0] = sum[i][1] = _mm256_setzero_ps();
    for (long g = 0; g < G; g++, codes += group_bytes, sm += 2 * TMAC_ROWS) {
        /* the weights stream from DRAM at batch 1: fetch 2 KB ahead, as linear_int4.h does */
        for (long ahead = 0; ahead < group_bytes; ahead += 64) _mm_prefetch((const char*)codes + 2048 + ahead, _MM_HINT_T0);
        _mm_prefetch((const char*)sm + 512, _MM_HINT_T0);
        __m256i acc[4];
#if defined(__AVX512BW__)
        const __m512i nib = _mm512_set1_epi8(15);
        __m512i acc2[4];
        for (int i = 0; i < 4; i++) acc2[i] = _mm512_setzero_si512();
        for (int p = 0; p < P; p++) {
            const __m512i coef = _mm512_set1_epi16((short)((p ? 4 : 1) | (p ? 8 : 2) << 8));
            #pragma GCC unroll 1
            for (int jj = 0; jj < 4; jj++) {
                /* two table pairs: 2jj in the low 256 bits, 2jj + 1 in the high */
                __m512i v = _mm512_loadu_si512((const void*)(codes + (p * 8 + 2 * jj) * 32));
                __m512i lo = _mm512_and_si512(v, nib), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), nib);
                for (int i = 0; i < 4; i++) {
                    if (i < mt) {
                        const int8_t* tab = xt->tab + (m0 + i) * T * TMAC_TABLE_BYTES + table_slot(TMAC_TABLES * g + 4 * jj);
                        __m512i tl = _mm512_loadu_si512((const void*)tab), th = _mm512_loadu_si512((const void*)(tab + 64));
                        acc2[i] = _mm512_add_epi16(acc2[i], _mm512_add_epi16(_mm512_maddubs_epi16(coef, _mm512_shuffle_epi8(tl, lo)),
                                                                            _mm512_maddubs_epi16(coef, _mm512_shuffle_epi8(th, hi))));
                    }
                }
            }
        }
        for (int i = 0; i < 4; i++)
            acc[i] = _mm256_add_epi16(_mm512_castsi512_si256(acc2[i]), _mm512_extracti64x4_epi64(acc2[i], 1));
#else
        const __m256i nib = _mm256_set1_epi8(15);
        for (int i = 0; i < 4; i++) acc[i] = _mm256_setzero_si256();
        for (int p = 0; p < P; p++) {
            /* the planes' weights in each row's byte pair: 1, 2 for planes 0-1; 4, 8 for 2-3 */
            const __m256i coef = _mm256_set1_epi16((short)((p ? 4 : 1) | (p ? 8 : 2) << 8));
            #pragma GCC unroll 1
            for (int j = 0; j < 8; j++) {
                __m256i v = _mm256_loadu_si256((const __m256i*)(codes + (p * 8 + j) * 32));
                __m256i lo = _mm256_and_si256(v, nib), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), nib);
                for (int i = 0; i < 4; i++) {
                    if (i < mt) {
                        const int8_t* tab = xt->tab + (m0 + i) * T * TMAC_TABLE_BYTES + table_slot(TMAC_TABLES * g + 2 * j);
                        __m256i tl = _mm256_loadu_si256((const __m256i*)tab);
                        __m256i th = _mm256_loadu_si256((const __m256i*)(tab + TMAC_TABLE_BYTES));
                        acc[i] = _mm256_add_epi16(acc[i], _mm256_add_epi16(_mm256_maddubs_epi16(coef, _mm256_shuffle_epi8(tl, lo)),
                                                                          _mm256_maddubs_epi16(coef, _mm256_shuffle_epi8(th, hi))));
                    }
                }
            }
        }
#endif
        __m256 s0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)sm));
        __m256 s1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(sm + 8)));
        __m256 n0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(sm + 16)));
        __m256 n1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(sm + 24)));
        for (int i = 0; i < 4; i++) {
            if (i < mt) {
                long at = (m0 + i) * G + g;
                __m256 d = _mm256_set1_ps(xt->d[at]), X = _mm256_set1_ps(xt->X[at]);
                __m256 a0 = _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(acc[i])));
                __m256 a1 = _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_extracti128_si256(acc[i], 1)));
                sum[i][0] = _mm256_fmadd_ps(n0, X, _mm256_fmadd_ps(a0, _mm256_mul_ps(s0, d), sum[i][0]));
                sum[i][1] = _mm256_fmadd_ps(n1, X, _mm256_fmadd_ps(a1, _mm256_mul_ps(s1, d), sum[i][1]));
            }
        }
    }
    for (int i = 0; i < 4; i++) r[i][0] = sum[i][0], r[i][1] = sum[i][1];
}

/* Every row's tables for one product, inside the caller's parallel region. Small batches
 * (M <= 4) build their own copy per thread, with no barrier; larger ones share one buffer and
 * split its rows. Returns whether it is shared, for tmac_tables_end. */
static inline __attribute__((always_inline)) int tmac_tables_begin(const float* x, long M, long K, tmac_tables* xt) {
    const long G = K / TMAC_GROUP, T = K / 4;
    int shared = M > 4;
    int8_t* tbuf = NULL;
    float* fbuf = NULL;
    if (shared) {
        #pragma omp single copyprivate(tbuf, fbuf)
        {
            tbuf = (int8_t*)malloc(M * T * TMAC_TABLE_BYTES);
            fbuf = (float*)malloc(sizeof(float) * 2 * M * G);
        }
    } else {
        tbuf = (int8_t*)malloc(M * T * TMAC_TABLE_BYTES);
        fbuf = (float*)malloc(sizeof(float) * 2 * M * G);
    }
    xt->tab = tbuf, xt->d = fbuf, xt->X = fbuf + M * G;
    if (shared) {
        #pragma omp for schedule(static)
        for (long m = 0; m < M; m++) tmac_build_tables(x, m, m + 1, K, xt);
    } else {
        tmac_build_tables(x, 0, M, K, xt);
    }
    return shared;
}

static inline __attribute__((always_inline)) void tmac_tables_end(tmac_tables* xt, int shared) {
    if (shared) {
        #pragma omp barrier
        #pragma omp single nowait
        {
            free(xt->tab);
            free(xt->d);
        }
    } else {
        free(xt->tab);
        free(xt->d);
    }
}

/* y[m * ldy + n] = (or +=) x[m] . W[n] + bias[n] for the T-MAC kinds (kind: tmac2 or tmac4,
 * a constant in each kind's instance). Small batches: every thread builds x's tables for
 * itself (no barrier); larger ones share the work, as linear_int4_omp does. */
static inline __attribute__((always_inline)) void linear_tmac_omp(const ember_weight* W, const float* x, long M, float* y,
                                                                  long ldy, int accumulate, int kind) {
    const int P = kind == EMBER_TMAC4 ? 2 : 1;
    const long K = W->k, G = K / TMAC_GROUP, blocks = W->n / TMAC_ROWS;
    tmac_tables xt;
    const int shared = tmac_tables_begin(x, M, K, &xt);
    #pragma omp for schedule(static)
    for (long b = 0; b < blocks; b++) {
        const uint8_t* codes = (const uint8_t*)W->w + b * G * P * 8 * 32;
        const uint16_t* sm = W->sm + b * G * 2 * TMAC_ROWS;
        __m256 bias0 = W->bias ? _mm256_loadu_ps(W->bias + TMAC_ROWS * b) : _mm256_setzero_ps();
        __m256 bias1 = W->bias ? _mm256_loadu_ps(W->bias + TMAC_ROWS * b + 8) : _mm256_setzero_ps();
        for (long m0 = 0; m0 < M; m0 += 4) {
            long mt = M - m0 < 4 ? M - m0 : 4;
            __m256 r[4][2];
            tmac_block_tile(codes, sm, &xt, K, m0, mt, P, r);
            for (long i = 0; i < mt; i++) {
                float* out = y + (m0 + i) * ldy + TMAC_ROWS * b;
                __m256 v0 = _mm256_add_ps(r[i][0], bias0), v1 = _mm256_add_ps(r[i][1], bias1);
                if (accumulate) v0 = _mm256_add_ps(_mm256_loadu_ps(out), v0), v1 = _mm256_add_ps(_mm256_loadu_ps(out + 8), v1);
                _mm256_storeu_ps(out, v0);
                _mm256_storeu_ps(out + 8, v1);
            }
        }
    }
    tmac_tables_end(&xt, shared);
}

#endif
