/* INT4 weights times int8 activations, all batch sizes: integer dots, 8 output rows per vector.
 *
 * Activations are quantized per group of 32 inputs to int8 (d = max|x| / 127, q = round(x / d):
 * llama.cpp's Q8_0). Weights are stored in blocks of 8 output rows so that one 32-byte load
 * holds 4 consecutive codes of each of the 8 rows (two such quads, in the low and high nibbles):
 *   codes [N/8, G, 4, 32]: byte 4r + t of quad pair j = code (row r, input 32g + 8j + t) in the
 *                          low nibble, (row r, input 32g + 8j + 4 + t) in the high nibble;
 *   sm    [N/8, G, 2, 8]:  fp16 scales of the 8 rows in group g, then their minimums:
 *                          w = q * scale + minimum (GGUF's Q4_1 grid; Q4_0 is minimum = -8 scale).
 * Against a broadcast of 4 activation bytes, vpmaddubsw then gives each row's products in its
 * own lanes: no horizontal sums anywhere, and every per-group step (int16 -> int32, to float,
 * times scale * d, plus the minimums' term minimum * d * sum(q)) is one instruction
 * for 8 rows. int16 sums of a whole group cannot overflow: 8 quads x 2 x 15 x 127 < 2^15.
 * Weights are decoded once per group and reused by up to 4 activation rows; batched decode and
 * prefill run here too, at a multiple of the fp32 FMA rate (4x more multiply-adds per
 * instruction).
 * Reference: the int4 method's `reference_apply` (dequantize, quantize_q8(x), F.linear).
 */
#ifndef EMBER_LINEAR_INT4_H
#define EMBER_LINEAR_INT4_H

#include <stdlib.h>

#include "simd.h"
#include "weight.h"

typedef struct {
    int8_t* q;  /* [M, K] codes */
    float* d;   /* [M, G] scales */
    float* X;   /* [M, G] d * sum(q): the minimums' share */
} q8_rows;

static void quantize_q8_rows(const float* x, long m0, long m1, long K, q8_rows* out) {
    const long G = K / 32;
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);  /* undoes the packs' lane split */
    for (long m = m0; m < m1; m++)
        for (long g = 0; g < G; g++) {
            const float* p = x + m * K + 32 * g;
            __m256 v0 = _mm256_loadu_ps(p), v1 = _mm256_loadu_ps(p + 8), v2 = _mm256_loadu_ps(p + 16), v3 = _mm256_loadu_ps(p + 24);
            __m256 mx = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v0), _mm256_andnot_ps(sign, v1)),
                                      _mm256_max_ps(_mm256_andnot_ps(sign, v2), _mm256_andnot_ps(sign, v3)));
            float amax = hmax_ps(mx);
            float d = amax / 127.0f, id = amax > 0.0f ? 127.0f / amax : 0.0f;
            __m256 vid = _mm256_set1_ps(id);
            __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(v0, vid)), i1 = _mm256_cvtps_epi32(_mm256_mul_ps(v1, vid));
            __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(v2, vid)), i3 = _mm256_cvtps_epi32(_mm256_mul_ps(v3, vid));
            __m256i s = _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3));
            __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
            s4 = _mm_hadd_epi32(s4, s4);
            s4 = _mm_hadd_epi32(s4, s4);
            __m256i b = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
            _mm256_storeu_si256((__m256i*)(out->q + m * K + 32 * g), _mm256_permutevar8x32_epi32(b, order));
            out->d[m * G + g] = d;
            out->X[m * G + g] = d * (float)_mm_cvtsi128_si32(s4);
        }
}

#define PREFETCH_BYTES 2048

/* Rows m0..m0+mt-1 (mt <= 4) of quantized x times the 8 rows of block b; r[i]: row i's 8 sums. */
static inline void int4_block_tile(const uint8_t* codes, const uint16_t* sm, const q8_rows* xq, long K,
                                   long m0, long mt, __m256 r[4]) {
    const long G = K / 32;
    const __m256i nib = _mm256_set1_epi8(15), ones = _mm256_set1_epi16(1);
    /* local sums, stored to r at the end: __m256 may alias the float loads below, so sums kept
     * in r itself would go through memory at every group */
    __m256 sum[4];
    for (int i = 0; i < 4; i++) sum[i] = _mm256_setzero_ps();
    for (long g = 0; g < G; g++, codes += 128, sm += 16) {
        /* 2 KB ahead (16 groups): measured ~15% off batch-1 decode, whose weights stream from
         * DRAM; the hardware prefetchers alone leave the two streams short of bandwidth. */
        _mm_prefetch((const char*)(codes + PREFETCH_BYTES), _MM_HINT_T0);
        _mm_prefetch((const char*)(codes + PREFETCH_BYTES + 64), _MM_HINT_T0);
        if (!(g & 1)) _mm_prefetch((const char*)sm + PREFETCH_BYTES / 4, _MM_HINT_T0);
        __m256i acc[4];
        for (int i = 0; i < 4; i++) acc[i] = _mm256_setzero_si256();
        /* not unrolled: unrolled, gcc hoists all 32 products of a group and spills them */
        #pragma GCC unroll 1
        for (int j = 0; j < 4; j++) {
            __m256i v = _mm256_loadu_si256((const __m256i*)(codes + 32 * j));
            __m256i lo = _mm256_and_si256(v, nib), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), nib);
            for (int i = 0; i < 4; i++) {
                if (i < mt) {
                    const int8_t* xg = xq->q + (m0 + i) * K + 32 * g + 8 * j;
                    __m256i xa = _mm256_set1_epi32(*(const int32_t*)xg), xb = _mm256_set1_epi32(*(const int32_t*)(xg + 4));
                    acc[i] = _mm256_add_epi16(acc[i], _mm256_add_epi16(_mm256_maddubs_epi16(lo, xa), _mm256_maddubs_epi16(hi, xb)));
                }
            }
        }
        __m256 s = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)sm));
        __m256 mn = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(sm + 8)));
        for (int i = 0; i < 4; i++) {
            if (i < mt) {
                long at = (m0 + i) * G + g;
                __m256 dot = _mm256_cvtepi32_ps(_mm256_madd_epi16(acc[i], ones));
                sum[i] = _mm256_fmadd_ps(dot, _mm256_mul_ps(s, _mm256_set1_ps(xq->d[at])), sum[i]);
                sum[i] = _mm256_fmadd_ps(mn, _mm256_set1_ps(xq->X[at]), sum[i]);
            }
        }
    }
    for (int i = 0; i < 4; i++) r[i] = sum[i];
}

/* y[m * ldy + n] = (or +=) x[m] . W[n] + bias[n], threads splitting blocks of 8 rows. Small
 * batches: every thread quantizes x for itself (no barrier); larger ones share the work.
 * kind: always int4 (the common signature of linear.h's per-kind table). */
static void linear_int4_omp(const ember_weight* W, const float* x, long M, float* y, long ldy, int accumulate, int kind) {
    (void)kind;
    const long K = W->k, G = K / 32, blocks = W->n / 8;
    q8_rows xq;
    int shared = M > 4;
    int8_t* qbuf = NULL;
    float* fbuf = NULL;
    if (shared) {
        #pragma omp single copyprivate(qbuf, fbuf)
        {
            qbuf = (int8_t*)malloc(M * K);
            fbuf = (float*)malloc(sizeof(float) * 2 * M * G);
        }
    } else {
        qbuf = (int8_t*)malloc(M * K);
        fbuf = (float*)malloc(sizeof(float) * 2 * M * G);
    }
    xq.q = qbuf, xq.d = fbuf, xq.X = fbuf + M * G;
    if (shared) {
        #pragma omp for schedule(static)
        for (long m = 0; m < M; m++) quantize_q8_rows(x, m, m + 1, K, &xq);
    } else {
        quantize_q8_rows(x, 0, M, K, &xq);
    }
    #pragma omp for schedule(static)
    for (long b = 0; b < blocks; b++) {
        const uint8_t* codes = (const uint8_t*)W->w + b * G * 128;
        const uint16_t* sm = W->sm + b * G * 16;
        __m256 bias = W->bias ? _mm256_loadu_ps(W->bias + 8 * b) : _mm256_setzero_ps();
        for (long m0 = 0; m0 < M; m0 += 4) {
            long mt = M - m0 < 4 ? M - m0 : 4;
            __m256 r[4];
            int4_block_tile(codes, sm, &xq, K, m0, mt, r);
            for (long i = 0; i < mt; i++) {
                float* out = y + (m0 + i) * ldy + 8 * b;
                __m256 v = _mm256_add_ps(r[i], bias);
                _mm256_storeu_ps(out, accumulate ? _mm256_add_ps(_mm256_loadu_ps(out), v) : v);
            }
        }
    }
    if (shared) {
        #pragma omp barrier
        #pragma omp single nowait
        {
            free(qbuf);
            free(fbuf);
        }
    } else {
        free(qbuf);
        free(fbuf);
    }
}

#endif
