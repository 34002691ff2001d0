/* Weight-only linear kernels, decode to prefill sizes: y[M,N] (+)= x[M,K] @ W^T (+ bias).
 *
 * The storages (ember_weight.kind) are listed once, in weight.h's EMBER_WEIGHT_KINDS; this
 * file turns that list into a table of per-kind entry points (EMBER_WEIGHT_TRAITS), in the
 * manner of llama.cpp's type traits. linear_omp looks its kind up once per call; inside, each
 * kind runs its own instance of its family's kernels with the kind a constant, so row loads
 * carry no per-element branch.
 * f32, bf16 and int8 sums are fp32 on fp32 activations; the weight is widened in registers
 * (bf16: a shift), never written out as a whole float matrix. Up to 4 rows (decode at batch
 * 1-4, memory-bound) the weight row is read once per tile of rows straight into the FMAs.
 * From 5 rows four weight rows are decoded into an fp32 buffer in L1 and reused by every pair
 * of activation rows; from PANEL_MIN_ROWS (batched decode and prefill, arithmetic-bound) 16
 * rows are transposed into a panel for a 6 x 16 register tile (linear_panels.h; under AVX-512
 * a tile of up to 16 rows of 16 lanes, linear_panel16.h). int4 and
 * int8_panels have their own blocked layouts and kernels (linear_int4.h, linear_int8_panels.h),
 * as have the lookup-table kinds tmac2/tmac4 and planes1..4 (linear_tmac.h, linear_planes.h).
 * `linear_omp` splits output rows with an orphaned `omp for`: called inside a parallel region
 * it shares that team (the fused decoder); alone it runs on one thread.
 * Plain-torch references: ember/kernels/linear/{dense,int8,int4}.py, tmac_ref.py.
 */
#ifndef EMBER_LINEAR_H
#define EMBER_LINEAR_H

#include <stdlib.h>
#include <string.h>

#include "simd.h"
#include "weight.h"

/* always_inline: every helper below takes the storage kind as a constant from its caller,
 * which is one kind's instance of linear_rowmajor_omp. */
#define EMBER_HOT static inline __attribute__((always_inline))

/* Row n of a bf16 or int8 W, decoded to fp32 (int8: unscaled codes; the scale is applied to the sums). */
EMBER_HOT void decode_row(const ember_weight* W, long n, float* out, int kind) {
    const void* row = weight_row(W, n, kind);
    for (long k = 0; k < W->k; k += 8) _mm256_storeu_ps(out + k, load_w8(kind, row, k));
}

/* Rows m0..m0+mt-1 (mt <= 4) times f32, bf16 or int8 row n: two accumulators per row.
 * Out of line, unlike its neighbours: gcc still clones it per constant kind (IPA-CP), and
 * inlined into linear_rowmajor_omp's loop it ran int8 at 3 rows ~10% slower than this. */
static __attribute__((noinline)) void dot_rows_f32_int8(const ember_weight* W, long n, const float* x, long mt, float* r, int kind) {
    long K = W->k;
    const void* row = weight_row(W, n, kind);
    __m256 a[4], b[4];
    for (int i = 0; i < 4; i++) a[i] = b[i] = _mm256_setzero_ps();
    for (long k = 0; k < K; k += 16) {
        __m256 w0 = load_w8(kind, row, k), w1 = load_w8(kind, row, k + 8);
        for (int i = 0; i < 4; i++) {
            if (i < mt) {
                a[i] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + i * K + k), a[i]);
                b[i] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + i * K + k + 8), b[i]);
            }
        }
    }
    float s = weight_row_scale(W, n, kind);
    for (int i = 0; i < mt; i++) r[i] = hsum_ps(_mm256_add_ps(a[i], b[i])) * s;
}

/* One row of x times f32, bf16 or int8 row n: four accumulators (batch-1 decode is all latency). */
EMBER_HOT float dot_row1_f32_int8(const ember_weight* W, long n, const float* x, int kind) {
    long K = W->k;
    const void* row = weight_row(W, n, kind);
    const long esz = weight_elem_size(kind);
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (long k = 0; k < K; k += 32) {
        /* rows stream from DRAM: software prefetch 2 KB ahead, as in linear_int4.h */
        const char* ahead = (const char*)row + esz * k + 2048;
        _mm_prefetch(ahead, _MM_HINT_T0);
        if (esz > 1) _mm_prefetch(ahead + 64, _MM_HINT_T0);
        a0 = _mm256_fmadd_ps(load_w8(kind, row, k), _mm256_loadu_ps(x + k), a0);
        a1 = _mm256_fmadd_ps(load_w8(kind, row, k + 8), _mm256_loadu_ps(x + k + 8), a1);
        a2 = _mm256_fmadd_ps(load_w8(kind, row, k + 16), _mm256_loadu_ps(x + k + 16), a2);
        a3 = _mm256_fmadd_ps(load_w8(kind, row, k + 24), _mm256_loadu_ps(x + k + 24), a3);
    }
    return hsum_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3))) * weight_row_scale(W, n, kind);
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

#include "linear_int4.h"
#include "linear_int8_panels.h"
#include "linear_lmul.h"
#include "linear_panels.h"
#include "linear_planes.h"
#include "linear_tmac.h"

/* From this many rows the 6 x 16 tile of linear_panels.h beats the row pairs below; its
 * AVX-512 16-row tile from 8 (bf16 layer, 1 thread: even at 8 rows, 1.2x at 12). */
#if defined(__AVX512F__)
#define PANEL_MIN_ROWS 8
#else
#define PANEL_MIN_ROWS 16
#endif

/* The row-major family (f32, int8, bf16): y[m * ldy + n] = (or +=, with accumulate)
 * x[m] . W[n] + bias[n]. K: a multiple of 32. */
EMBER_HOT void linear_rowmajor_omp(const ember_weight* W, const float* x, long M, float* y, long ldy, int accumulate,
                                   int kind) {
    long N = W->n, K = W->k;
    if (M <= 4) {
        #pragma omp for schedule(static)
        for (long n = 0; n < N; n++) {
            float r[4];
            if (M == 1) {
                put(y + n, dot_row1_f32_int8(W, n, x, kind), W->bias, n, accumulate);
                continue;
            }
            dot_rows_f32_int8(W, n, x, M, r, kind);
            for (long i = 0; i < M; i++) put(y + i * ldy + n, r[i], W->bias, n, accumulate);
        }
        return;
    }
    if (M >= PANEL_MIN_ROWS) {
        linear_panels_omp(W, x, M, y, ldy, accumulate, kind);
        return;
    }
    /* f32 rows are read in place; the others are widened into an L1 buffer first */
    float* buf = kind == EMBER_F32 ? NULL : (float*)malloc(sizeof(float) * 4 * K);
    float* r = (float*)malloc(sizeof(float) * 4 * M);
    #pragma omp for schedule(static)
    for (long p = 0; p < (N + 3) / 4; p++) {
        long rows[4];
        const float* w[4];
        for (int j = 0; j < 4; j++) {
            rows[j] = 4 * p + j < N ? 4 * p + j : N - 1;  /* a ragged end repeats the last row */
            if (buf) {
                decode_row(W, rows[j], buf + j * K, kind);
                w[j] = buf + j * K;
            } else {
                w[j] = (const float*)W->w + rows[j] * K;
            }
        }
        dot_quad_buffered(w, K, x, M, r);
        for (int j = 0; j < 4 && 4 * p + j < N; j++) {
            long n = rows[j];
            float s = weight_row_scale(W, n, kind);
            for (long m = 0; m < M; m++) put(y + m * ldy + n, r[j * M + m] * s, W->bias, n, accumulate);
        }
    }
    free(buf);
    free(r);
}

typedef void (*ember_linear_fn)(const ember_weight* W, const float* x, long M, float* y, long ldy, int accumulate);

typedef struct {
    const char* name;
    long elem_size;          /* bytes per weight of a row-major storage; 0: blocked */
    int scaled;              /* a per-row scale multiplies the sums */
    ember_linear_fn linear;  /* the kind's own instance of its family's kernel */
} ember_weight_traits;

/* One entry point per kind: its family's kernel with the kind a constant, compiled apart. */
#define EMBER_WEIGHT_ENTRY(id, name, esz, scaled, load, family) \
    static void linear_omp_##name(const ember_weight* W, const float* x, long M, float* y, long ldy, int accumulate) { \
        family(W, x, M, y, ldy, accumulate, EMBER_##id); \
    }
EMBER_WEIGHT_KINDS(EMBER_WEIGHT_ENTRY)
#undef EMBER_WEIGHT_ENTRY

#define EMBER_WEIGHT_TRAIT(id, name, esz, scaled, load, family) [EMBER_##id] = {#name, esz, scaled, linear_omp_##name},
static const ember_weight_traits EMBER_WEIGHT_TRAITS[EMBER_WEIGHT_NUM_KINDS] = { EMBER_WEIGHT_KINDS(EMBER_WEIGHT_TRAIT) };
#undef EMBER_WEIGHT_TRAIT

/* y[m * ldy + n] = (or +=, with accumulate) x[m] . W[n] + bias[n]. K: a multiple of 32.
 * One table lookup per call; a kind outside the list (Python checks names at load) does nothing. */
static void linear_omp(const ember_weight* W, const float* x, long M, float* y, long ldy, int accumulate) {
    if ((uint64_t)W->kind < EMBER_WEIGHT_NUM_KINDS) EMBER_WEIGHT_TRAITS[W->kind].linear(W, x, M, y, ldy, accumulate);
}

#endif
