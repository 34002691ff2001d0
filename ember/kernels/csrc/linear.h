/* Weight-only linear kernels for decode-sized batches: y[M,N] (+)= x[M,K] @ W^T (+ bias).
 *
 * Sums are fp32; the weight is widened in registers, never written out as a whole float
 * matrix. Three storages (ember_weight.kind):
 *   F32   w: float [N,K]
 *   INT8  w: int8 [N,K], scale: float [N]           w[n,k] = q * scale[n]
 *   INT4  w: uint8 [N,K/2], sz: bf16 pairs [N,K/32,2] w = q * s + (z - 8 s), q in 0..15: one
 *         fma, rounded once, so it equals (q - 8) * s + z of the torch reference bit for bit.
 *         Group of 32 = 16 bytes: byte j < 8 holds codes j (low nibble) and j + 8 (high),
 *         byte 8 + j holds codes 16 + j and 24 + j, so one zero-extension gives 8 codes.
 * Up to 4 rows (decode at batch 1-4, memory-bound) the weight row is decoded once per tile of
 * rows straight into the FMAs, on fp32 activations, or with q8_activations on int8 ones and
 * integer dots (linear_q8.h). Above that (batched decode, arithmetic-bound) four weight rows
 * are decoded into an fp32 buffer in L1 and reused by every pair of fp32 activation rows.
 * `linear_omp` splits output rows with an orphaned `omp for`: called inside a parallel region
 * it shares that team (the fused decoder); alone it runs on one thread.
 * Plain-torch references: ember/kernels/linear/{dense,int8,int4}.py.
 */
#ifndef EMBER_LINEAR_H
#define EMBER_LINEAR_H

#include <stdlib.h>
#include <string.h>

#include "simd.h"

enum { EMBER_F32 = 0, EMBER_INT8 = 1, EMBER_INT4 = 2 };

typedef struct {
    int64_t kind, n, k;
    int64_t q8_activations; /* INT4 at batch 1-4: int8 activations, integer dots (linear_q8.h) */
    const void* w;
    const float* scale;   /* INT8: [N] */
    const uint16_t* sz;   /* INT4: bf16 (scale, zero) per group, [N, K/32, 2] */
    const float* bias;    /* [N] or NULL */
} ember_weight;

/* Row n of W, decoded to fp32 (INT8: unscaled codes; the scale is applied to the sums). */
static void decode_row(const ember_weight* W, long n, float* out) {
    long K = W->k;
    if (W->kind == EMBER_INT8) {
        const int8_t* q = (const int8_t*)W->w + n * K;
        for (long k = 0; k < K; k += 8)
            _mm256_storeu_ps(out + k, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(q + k)))));
    } else {
        const uint8_t* c = (const uint8_t*)W->w + n * (K / 2);
        const uint16_t* sz = W->sz + n * (K / 32) * 2;
        const __m256i low = _mm256_set1_epi32(15);
        for (long g = 0; g < K / 32; g++) {
            float s = bf16_to_f32(sz[2 * g]), z = bf16_to_f32(sz[2 * g + 1]);
            __m256 vs = _mm256_set1_ps(s), vb = _mm256_set1_ps(z - 8.0f * s);
            __m256i v0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)(c + 16 * g)));
            __m256i v1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)(c + 16 * g + 8)));
            float* o = out + 32 * g;
            _mm256_storeu_ps(o, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(v0, low)), vs, vb));
            _mm256_storeu_ps(o + 8, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(v0, 4)), vs, vb));
            _mm256_storeu_ps(o + 16, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(v1, low)), vs, vb));
            _mm256_storeu_ps(o + 24, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(v1, 4)), vs, vb));
        }
    }
}

static inline __m256 load_w8(const ember_weight* W, const void* row, long k) {
    if (W->kind == EMBER_F32) return _mm256_loadu_ps((const float*)row + k);
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)((const int8_t*)row + k))));
}

/* Rows m0..m0+mt-1 (mt <= 4) times F32 or INT8 row n: two accumulators per row. */
static void dot_rows_f32_int8(const ember_weight* W, long n, const float* x, long mt, float* r) {
    long K = W->k;
    const void* row = W->kind == EMBER_F32 ? (const void*)((const float*)W->w + n * K)
                                           : (const void*)((const int8_t*)W->w + n * K);
    __m256 a[4], b[4];
    for (int i = 0; i < 4; i++) a[i] = b[i] = _mm256_setzero_ps();
    for (long k = 0; k < K; k += 16) {
        __m256 w0 = load_w8(W, row, k), w1 = load_w8(W, row, k + 8);
        for (int i = 0; i < 4; i++) {
            if (i < mt) {
                a[i] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + i * K + k), a[i]);
                b[i] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + i * K + k + 8), b[i]);
            }
        }
    }
    float s = W->kind == EMBER_INT8 ? W->scale[n] : 1.0f;
    for (int i = 0; i < mt; i++) r[i] = hsum_ps(_mm256_add_ps(a[i], b[i])) * s;
}

/* Group sums of x rows (M <= 4): the zero-point half of an INT4 product, sum_g b_g * X_g. */
static void group_sums(const float* x, long M, long K, float* X) {
    for (long m = 0; m < M; m++)
        for (long g = 0; g < K / 32; g++) {
            const float* p = x + m * K + 32 * g;
            __m256 v = _mm256_add_ps(_mm256_add_ps(_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)),
                                     _mm256_add_ps(_mm256_loadu_ps(p + 16), _mm256_loadu_ps(p + 24)));
            X[m * (K / 32) + g] = hsum_ps(v);
        }
}

/* sum_g (z_g - 8 s_g) * X[g] over a row's bf16 (s, z) pairs, 8 groups per vector. With d,
 * the same pass also writes sd[g] = s_g * d[g] (the INT4 x Q8 kernel's per-group factors). */
static inline float zero_point_sum(const uint16_t* sz, const float* X, long G, const float* d, float* sd) {
    const __m256i high = _mm256_set1_epi32((int)0xFFFF0000u);
    __m256 acc = _mm256_setzero_ps();
    long g = 0;
    for (; g + 8 <= G; g += 8) {
        __m256i pairs = _mm256_loadu_si256((const __m256i*)(sz + 2 * g));  /* lane: s | z << 16 */
        __m256 sv = _mm256_castsi256_ps(_mm256_slli_epi32(pairs, 16));
        __m256 zv = _mm256_castsi256_ps(_mm256_and_si256(pairs, high));
        if (d) _mm256_storeu_ps(sd + g, _mm256_mul_ps(sv, _mm256_loadu_ps(d + g)));
        acc = _mm256_fmadd_ps(_mm256_fnmadd_ps(_mm256_set1_ps(8.0f), sv, zv), _mm256_loadu_ps(X + g), acc);
    }
    float sum = hsum_ps(acc);
    for (; g < G; g++) {
        float sg = bf16_to_f32(sz[2 * g]);
        if (d) sd[g] = sg * d[g];
        sum += (bf16_to_f32(sz[2 * g + 1]) - 8.0f * sg) * X[g];
    }
    return sum;
}

/* q_g . x_g for one group of 32 codes (as floats) and one row of x. */
static inline __m256 group_dot(__m256 q0, __m256 q1, __m256 q2, __m256 q3, const float* xg) {
    __m256 t = _mm256_mul_ps(q0, _mm256_loadu_ps(xg));
    t = _mm256_fmadd_ps(q1, _mm256_loadu_ps(xg + 8), t);
    t = _mm256_fmadd_ps(q2, _mm256_loadu_ps(xg + 16), t);
    return _mm256_fmadd_ps(q3, _mm256_loadu_ps(xg + 24), t);
}

/* Rows m0..m0+mt-1 (mt <= 2) times INT4 row n, as sum_g s_g (q_g . x_g) + sum_g b_g X_g with
 * b = z - 8 s: four conversions and four multiply-adds per group and row, no dequantized copy. */
static void dot_rows_int4(const ember_weight* W, long n, const float* x, const float* X, long mt, float* r) {
    long K = W->k, G = K / 32;
    const uint8_t* c = (const uint8_t*)W->w + n * (K / 2);
    const uint16_t* sz = W->sz + n * G * 2;
    const __m256i low = _mm256_set1_epi32(15);
    __m256 a0 = _mm256_setzero_ps(), a1 = a0;  /* row 0, row 1 */
    for (long g = 0; g < G; g++) {
        __m256 vs = _mm256_set1_ps(bf16_to_f32(sz[2 * g]));
        __m256i v0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)(c + 16 * g)));
        __m256i v1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)(c + 16 * g + 8)));
        __m256 q0 = _mm256_cvtepi32_ps(_mm256_and_si256(v0, low)), q1 = _mm256_cvtepi32_ps(_mm256_srli_epi32(v0, 4));
        __m256 q2 = _mm256_cvtepi32_ps(_mm256_and_si256(v1, low)), q3 = _mm256_cvtepi32_ps(_mm256_srli_epi32(v1, 4));
        a0 = _mm256_fmadd_ps(group_dot(q0, q1, q2, q3, x + 32 * g), vs, a0);
        if (mt > 1) a1 = _mm256_fmadd_ps(group_dot(q0, q1, q2, q3, x + K + 32 * g), vs, a1);
    }
    r[0] = hsum_ps(a0) + zero_point_sum(sz, X, G, NULL, NULL);
    if (mt > 1) r[1] = hsum_ps(a1) + zero_point_sum(sz, X + G, G, NULL, NULL);
}

/* One row of x times F32 or INT8 row n: four accumulators (batch-1 decode is all latency). */
static float dot_row1_f32_int8(const ember_weight* W, long n, const float* x) {
    long K = W->k;
    const void* row = W->kind == EMBER_F32 ? (const void*)((const float*)W->w + n * K)
                                           : (const void*)((const int8_t*)W->w + n * K);
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (long k = 0; k < K; k += 32) {
        a0 = _mm256_fmadd_ps(load_w8(W, row, k), _mm256_loadu_ps(x + k), a0);
        a1 = _mm256_fmadd_ps(load_w8(W, row, k + 8), _mm256_loadu_ps(x + k + 8), a1);
        a2 = _mm256_fmadd_ps(load_w8(W, row, k + 16), _mm256_loadu_ps(x + k + 16), a2);
        a3 = _mm256_fmadd_ps(load_w8(W, row, k + 24), _mm256_loadu_ps(x + k + 24), a3);
    }
    float s = W->kind == EMBER_INT8 ? W->scale[n] : 1.0f;
    return hsum_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3))) * s;
}

static inline void put(float* y, float v, const float* bias, long n, int accumulate) {
    if (bias) v += bias[n];
    *y = accumulate ? *y + v : v;
}

/* Four decoded weight rows (fp32, in L1) against rows 0..M-1 of x, two x rows at a time:
 * 8 accumulators, 4 weight loads from L1 and 2 x loads from L2 per 8 FMAs, so the FMAs and
 * not L2 bandwidth set the pace. r: [4][M]. */
static void dot_quad_buffered(const float* const w[4], long K, const float* x, long M, float* r) {
    for (long m0 = 0; m0 < M; m0 += 2) {
        long two = M - m0 > 1;
        const float* x0 = x + m0 * K;
        const float* x1 = two ? x0 + K : x0;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
        for (long k = 0; k < K; k += 8) {
            __m256 u = _mm256_loadu_ps(x0 + k), v = _mm256_loadu_ps(x1 + k);
            __m256 w0 = _mm256_loadu_ps(w[0] + k), w1 = _mm256_loadu_ps(w[1] + k);
            a0 = _mm256_fmadd_ps(w0, u, a0);
            b0 = _mm256_fmadd_ps(w0, v, b0);
            a1 = _mm256_fmadd_ps(w1, u, a1);
            b1 = _mm256_fmadd_ps(w1, v, b1);
            __m256 w2 = _mm256_loadu_ps(w[2] + k), w3 = _mm256_loadu_ps(w[3] + k);
            a2 = _mm256_fmadd_ps(w2, u, a2);
            b2 = _mm256_fmadd_ps(w2, v, b2);
            a3 = _mm256_fmadd_ps(w3, u, a3);
            b3 = _mm256_fmadd_ps(w3, v, b3);
        }
        r[m0] = hsum_ps(a0), r[M + m0] = hsum_ps(a1), r[2 * M + m0] = hsum_ps(a2), r[3 * M + m0] = hsum_ps(a3);
        if (two) r[m0 + 1] = hsum_ps(b0), r[M + m0 + 1] = hsum_ps(b1), r[2 * M + m0 + 1] = hsum_ps(b2), r[3 * M + m0 + 1] = hsum_ps(b3);
    }
}

#include "linear_q8.h"

/* INT4 at batch 1-4 with int8 activations: each thread quantizes x for itself (M * K work, no
 * barrier needed). */
static void linear_q8_omp(const ember_weight* W, const float* x, long M, float* y, long ldy, int accumulate) {
    const long K = W->k, G = K / 32;
    q8_rows xq = {(int8_t*)malloc(M * K), (float*)malloc(sizeof(float) * (2 * M + 4) * G), NULL};
    xq.X = xq.d + M * G;
    float* sd = xq.X + M * G;  /* INT4's per-row scratch */
    quantize_q8(x, M, K, &xq);
    #pragma omp for schedule(static)
    for (long n = 0; n < W->n; n++) {
        float r[4];
        dot_rows_int4_q8(W, n, &xq, M, r, sd);
        for (long i = 0; i < M; i++) put(y + i * ldy + n, r[i], W->bias, n, accumulate);
    }
    free(xq.q);
    free(xq.d);
}

/* y[m * ldy + n] = (or +=, with accumulate) x[m] . W[n] + bias[n]. K: a multiple of 32. */
static void linear_omp(const ember_weight* W, const float* x, long M, float* y, long ldy, int accumulate) {
    long N = W->n, K = W->k;
    if (M <= 4 && W->q8_activations && W->kind == EMBER_INT4) {
        linear_q8_omp(W, x, M, y, ldy, accumulate);
        return;
    }
    if (M <= 4) {
        long tile = W->kind == EMBER_INT4 ? 2 : 4;
        float* X = NULL;
        if (W->kind == EMBER_INT4) {  /* every thread sums for itself: no barrier, M * K adds */
            X = (float*)malloc(sizeof(float) * M * (K / 32));
            group_sums(x, M, K, X);
        }
        #pragma omp for schedule(static)
        for (long n = 0; n < N; n++) {
            float r[4];
            if (M == 1 && W->kind != EMBER_INT4) {
                put(y + n, dot_row1_f32_int8(W, n, x), W->bias, n, accumulate);
                continue;
            }
            for (long m0 = 0; m0 < M; m0 += tile) {
                long mt = M - m0 < tile ? M - m0 : tile;
                if (W->kind == EMBER_INT4) dot_rows_int4(W, n, x + m0 * K, X + m0 * (K / 32), mt, r);
                else dot_rows_f32_int8(W, n, x + m0 * K, mt, r);
                for (long i = 0; i < mt; i++) put(y + (m0 + i) * ldy + n, r[i], W->bias, n, accumulate);
            }
        }
        free(X);
        return;
    }
    float* buf = W->kind == EMBER_F32 ? NULL : (float*)malloc(sizeof(float) * 4 * K);
    float* r = (float*)malloc(sizeof(float) * 4 * M);
    #pragma omp for schedule(static)
    for (long p = 0; p < (N + 3) / 4; p++) {
        long rows[4];
        const float* w[4];
        for (int j = 0; j < 4; j++) {
            rows[j] = 4 * p + j < N ? 4 * p + j : N - 1;  /* a ragged end repeats the last row */
            if (buf) {
                decode_row(W, rows[j], buf + j * K);
                w[j] = buf + j * K;
            } else {
                w[j] = (const float*)W->w + rows[j] * K;
            }
        }
        dot_quad_buffered(w, K, x, M, r);
        for (int j = 0; j < 4 && 4 * p + j < N; j++) {
            long n = rows[j];
            float s = W->kind == EMBER_INT8 ? W->scale[n] : 1.0f;
            for (long m = 0; m < M; m++) put(y + m * ldy + n, r[j * M + m] * s, W->bias, n, accumulate);
        }
    }
    free(buf);
    free(r);
}

#endif
