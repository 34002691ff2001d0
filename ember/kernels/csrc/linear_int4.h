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
 * Under AVX-512 (avx512, avx512vnni variants) two blocks share a 64-byte vector (16 rows) and
 * up to 8 activation rows share its decode; with VNNI, vpdpbusd sums 4 products straight into
 * int32 lanes (int4_pair_tile). The same kernel runs `w4a4` (kind W4A4): the same weights,
 * activations on 4 bits with the outlier eighth of groups on 8 (quantize_a4_rows).
 * Reference: the int4 method's `reference_apply` (dequantize, quantize_q8(x), F.linear);
 * w4a4's (w4a4.py: dequantize, quantize_a4(x), F.linear).
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

/* max |x| over the 32 inputs at p */
static inline float group_amax(const float* p) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 v0 = _mm256_loadu_ps(p), v1 = _mm256_loadu_ps(p + 8), v2 = _mm256_loadu_ps(p + 16), v3 = _mm256_loadu_ps(p + 24);
    return hmax_ps(_mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v0), _mm256_andnot_ps(sign, v1)),
                                 _mm256_max_ps(_mm256_andnot_ps(sign, v2), _mm256_andnot_ps(sign, v3))));
}

/* One group of 32 inputs at p onto the symmetric grid of qmax levels each side (127: Q8_0; 7:
 * 4 bits): d = amax / qmax, q = round(x * (qmax / amax)) into q, d and d * sum(q) into *d, *X. */
static inline void quantize_group(const float* p, float amax, float qmax, int8_t* q, float* d, float* X) {
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);  /* undoes the packs' lane split */
    __m256 v0 = _mm256_loadu_ps(p), v1 = _mm256_loadu_ps(p + 8), v2 = _mm256_loadu_ps(p + 16), v3 = _mm256_loadu_ps(p + 24);
    float dd = amax / qmax, id = amax > 0.0f ? qmax / amax : 0.0f;
    __m256 vid = _mm256_set1_ps(id);
    __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(v0, vid)), i1 = _mm256_cvtps_epi32(_mm256_mul_ps(v1, vid));
    __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(v2, vid)), i3 = _mm256_cvtps_epi32(_mm256_mul_ps(v3, vid));
    __m256i s = _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3));
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    s4 = _mm_hadd_epi32(s4, s4);
    s4 = _mm_hadd_epi32(s4, s4);
    __m256i b = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
    _mm256_storeu_si256((__m256i*)q, _mm256_permutevar8x32_epi32(b, order));
    *d = dd;
    *X = dd * (float)_mm_cvtsi128_si32(s4);
}

static void quantize_q8_rows(const float* x, long m0, long m1, long K, q8_rows* out) {
    const long G = K / 32;
    for (long m = m0; m < m1; m++)
        for (long g = 0; g < G; g++) {
            const float* p = x + m * K + 32 * g;
            quantize_group(p, group_amax(p), 127.0f, out->q + m * K + 32 * g, out->d + m * G + g, out->X + m * G + g);
        }
}

/* w4a4 (COMET's mixed activations, per row): the A4_KEEP_8BIT-th part of a row's groups with
 * the largest max |x| (ceil(G / 8): the outlier blocks) on Q8_0's grid, every other group on 4
 * bits (q in -7..7, d = amax / 7). A group keeps 8 bits when fewer than ceil(G / 8) groups of
 * its row have a strictly larger max (ties keep 8 bits together): integer counts, so the C
 * kernel and the reference (w4a4.py's quantize_a4) choose the same groups. The 4-bit codes are
 * held in int8 lanes: the integer dot is int4's. */
#define A4_KEEP_8BIT 8
static void quantize_a4_rows(const float* x, long m0, long m1, long K, q8_rows* out) {
    const long G = K / 32, keep = (G + A4_KEEP_8BIT - 1) / A4_KEEP_8BIT;
    float* amax = (float*)malloc(sizeof(float) * G);
    for (long m = m0; m < m1; m++) {
        for (long g = 0; g < G; g++) amax[g] = group_amax(x + m * K + 32 * g);
        for (long g = 0; g < G; g++) {
            long above = 0;
            for (long h = 0; h < G; h++) above += amax[h] > amax[g];
            quantize_group(x + m * K + 32 * g, amax[g], above < keep ? 127.0f : 7.0f, out->q + m * K + 32 * g,
                           out->d + m * G + g, out->X + m * G + g);
        }
    }
    free(amax);
}

/* The activation quantizer of a kind of this family: int4's Q8_0, w4a4's mixed 4/8 bits. */
static inline void quantize_rows(int kind, const float* x, long m0, long m1, long K, q8_rows* out) {
    if (kind == EMBER_W4A4) quantize_a4_rows(x, m0, m1, K, out);
    else quantize_q8_rows(x, m0, m1, K, out);
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

#if defined(__AVX512BW__)
/* The AVX-512 form (avx512 and avx512vnni variants): two blocks of 8 rows side by side in one
 * 64-byte vector, so 16 output rows share each broadcast of 4 activation bytes, and up to
 * INT4_ROWS_512 activation rows share each decoded weight vector. Same layout, same products,
 * same order of the fp32 sums as int4_block_tile (the group's integer dot is exact either way).
 * With AVX512-VNNI one vpdpbusd multiplies 4 codes of 16 rows by 4 activation bytes and adds
 * into int32 lanes (no int16 step, no vpmaddwd per group); without it vpmaddubsw + int16 sums
 * as in the AVX2 loop, 64 bytes wide. */
#define INT4_ROWS_512 8

/* Rows 0..MT-1 of the quantized rows xq (from row m0) times blocks b (codes0, sm0) and b + 1
 * (codes1, sm1): r[i] holds row i's 16 sums (block b's 8 rows, then block b + 1's). MT is a
 * constant in each instance (int4_pair_rows), so the tile has no row tests inside. */
static inline __attribute__((always_inline)) void int4_pair_tile(const uint8_t* codes0, const uint8_t* codes1,
                                                                 const uint16_t* sm0, const uint16_t* sm1,
                                                                 const q8_rows* xq, long K, long m0, const int MT,
                                                                 __m512 r[INT4_ROWS_512]) {
    const long G = K / 32;
    const __m512i nib = _mm512_set1_epi8(15);
#if !defined(__AVX512VNNI__)
    const __m512i ones = _mm512_set1_epi16(1);
#endif
    __m512 sum[INT4_ROWS_512];
    for (int i = 0; i < MT; i++) sum[i] = _mm512_setzero_ps();
    const int8_t* xr = xq->q + m0 * K;
    const float* dr = xq->d + m0 * G;
    const float* Xr = xq->X + m0 * G;
    for (long g = 0; g < G; g++, codes0 += 128, codes1 += 128, sm0 += 16, sm1 += 16) {
        _mm_prefetch((const char*)(codes0 + PREFETCH_BYTES), _MM_HINT_T0);
        _mm_prefetch((const char*)(codes0 + PREFETCH_BYTES + 64), _MM_HINT_T0);
        _mm_prefetch((const char*)(codes1 + PREFETCH_BYTES), _MM_HINT_T0);
        _mm_prefetch((const char*)(codes1 + PREFETCH_BYTES + 64), _MM_HINT_T0);
        if (!(g & 1)) {
            _mm_prefetch((const char*)sm0 + PREFETCH_BYTES / 4, _MM_HINT_T0);
            _mm_prefetch((const char*)sm1 + PREFETCH_BYTES / 4, _MM_HINT_T0);
        }
        __m512i acc[INT4_ROWS_512];
        for (int i = 0; i < MT; i++) acc[i] = _mm512_setzero_si512();
        #pragma GCC unroll 1
        for (int j = 0; j < 4; j++) {
            __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i*)(codes0 + 32 * j))),
                                           _mm256_loadu_si256((const __m256i*)(codes1 + 32 * j)), 1);
            __m512i lo = _mm512_and_si512(v, nib), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), nib);
            for (int i = 0; i < MT; i++) {
                const int8_t* xg = xr + i * K + 32 * g + 8 * j;
                __m512i xa = _mm512_set1_epi32(*(const int32_t*)xg), xb = _mm512_set1_epi32(*(const int32_t*)(xg + 4));
#if defined(__AVX512VNNI__)
                acc[i] = _mm512_dpbusd_epi32(acc[i], lo, xa);
                acc[i] = _mm512_dpbusd_epi32(acc[i], hi, xb);
#else
                acc[i] = _mm512_add_epi16(acc[i], _mm512_add_epi16(_mm512_maddubs_epi16(lo, xa), _mm512_maddubs_epi16(hi, xb)));
#endif
            }
        }
        __m256i s16 = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i*)sm0)),
                                              _mm_loadu_si128((const __m128i*)sm1), 1);
        __m256i m16 = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i*)(sm0 + 8))),
                                              _mm_loadu_si128((const __m128i*)(sm1 + 8)), 1);
        __m512 s = _mm512_cvtph_ps(s16), mn = _mm512_cvtph_ps(m16);
        for (int i = 0; i < MT; i++) {
#if defined(__AVX512VNNI__)
            __m512 dot = _mm512_cvtepi32_ps(acc[i]);
#else
            __m512 dot = _mm512_cvtepi32_ps(_mm512_madd_epi16(acc[i], ones));
#endif
            sum[i] = _mm512_fmadd_ps(dot, _mm512_mul_ps(s, _mm512_set1_ps(dr[i * G + g])), sum[i]);
            sum[i] = _mm512_fmadd_ps(mn, _mm512_set1_ps(Xr[i * G + g]), sum[i]);
        }
    }
    for (int i = 0; i < MT; i++) r[i] = sum[i];
}

/* One pair of blocks against rows m0..m0+mt-1, the tile instantiated for each row count. */
static void int4_pair_rows(const uint8_t* codes0, const uint8_t* codes1, const uint16_t* sm0, const uint16_t* sm1,
                           const q8_rows* xq, long K, long m0, long mt, __m512 r[INT4_ROWS_512]) {
    switch (mt) {
#define INT4_CASE(n) case n: int4_pair_tile(codes0, codes1, sm0, sm1, xq, K, m0, n, r); break;
        INT4_CASE(1) INT4_CASE(2) INT4_CASE(3) INT4_CASE(4) INT4_CASE(5) INT4_CASE(6) INT4_CASE(7) INT4_CASE(8)
#undef INT4_CASE
    }
}
#endif

/* y[m * ldy + n] = (or +=) x[m] . W[n] + bias[n], threads splitting blocks of 8 rows. Small
 * batches: every thread quantizes x for itself (no barrier); larger ones share the work.
 * kind: int4 or w4a4 (the same weights; they differ in how activations are quantized). */
static void linear_int4_omp(const ember_weight* W, const float* x, long M, float* y, long ldy, int accumulate, int kind) {
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
        for (long m = 0; m < M; m++) quantize_rows(kind, x, m, m + 1, K, &xq);
    } else {
        quantize_rows(kind, x, 0, M, K, &xq);
    }
#if defined(__AVX512BW__)
    /* pairs of blocks (16 rows); an odd last block takes the 8-row loop below */
    #pragma omp for schedule(static) nowait
    for (long p = 0; p < blocks / 2; p++) {
        const long b = 2 * p;
        const uint8_t* codes = (const uint8_t*)W->w + b * G * 128;
        const uint16_t* sm = W->sm + b * G * 16;
        __m512 bias = W->bias ? _mm512_loadu_ps(W->bias + 8 * b) : _mm512_setzero_ps();
        for (long m0 = 0; m0 < M; m0 += INT4_ROWS_512) {
            long mt = M - m0 < INT4_ROWS_512 ? M - m0 : INT4_ROWS_512;
            __m512 r[INT4_ROWS_512];
            int4_pair_rows(codes, codes + G * 128, sm, sm + G * 16, &xq, K, m0, mt, r);
            for (long i = 0; i < mt; i++) {
                float* out = y + (m0 + i) * ldy + 8 * b;
                __m512 v = _mm512_add_ps(r[i], bias);
                _mm512_storeu_ps(out, accumulate ? _mm512_add_ps(_mm512_loadu_ps(out), v) : v);
            }
        }
    }
    const long first = blocks & ~1L;
#else
    const long first = 0;
#endif
    #pragma omp for schedule(static)
    for (long b = first; b < blocks; b++) {
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
