/* Row-major F32, BF16 and INT8 weights at larger batches: a 6 x 16 register tile.
 *
 * 16 weight rows at a time are widened to fp32 and transposed (8 x 8 blocks in registers) into
 * a per-thread panel [K, 16] that stays in L2; then every tile of 6 activation rows runs over
 * it with 2 panel loads, 6 broadcasts and 12 FMAs per input, 12 accumulators in registers and
 * no horizontal sums. The weight is read in its own layout (torch's matrix, as stored), so the
 * PyTorch path and this one share one copy. The row-pair kernel of linear.h instead re-reads
 * the activations for every 4 weight rows and sums 8 lanes per output: ~60-80 GFLOP/s on 2
 * Zen 3 cores where this tile is bounded by the FMAs.
 * Under AVX-512 (avx512, avx512vnni variants) the same panels run linear_panel16.h's 16-wide
 * tile instead: one panel load serves up to 16 activation rows (16 FMAs of 16 lanes, 16
 * accumulators of the 32 registers), where the AVX2 tile's 2 loads serve 6 rows of 8 lanes.
 * Its sums run k ascending in one chain per output from 4 rows on, as the AVX2 tile's do.
 * Reference: the methods' torch paths (F.linear on the widened or dequantized weight).
 */
#ifndef EMBER_LINEAR_PANELS_H
#define EMBER_LINEAR_PANELS_H

#include <stdlib.h>

#include "linear_panel16.h"
#include "simd.h"
#include "weight.h"

#define TILE_ROWS 6

/* Transpose 8 vectors (rows) of 8 floats in place: v[j] becomes column j. */
static inline void transpose8(__m256 v[8]) {
    __m256 t[8], u[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(v[i], v[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(v[i], v[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        u[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int i = 0; i < 4; i++) {
        v[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
        v[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
    }
}

/* Weight rows n0..n0+15 (clamped to N - 1 at a ragged end) widened into panel[k * 16 + r];
 * always_inline with a constant kind, like every row-major kernel (linear.h). */
static inline __attribute__((always_inline)) void fill_panel(const ember_weight* W, long n0, float* panel, int kind) {
    const long K = W->k;
    for (int half = 0; half < 2; half++) {
        const void* rows[8];
        for (int r = 0; r < 8; r++) {
            long n = n0 + 8 * half + r;
            rows[r] = weight_row(W, n < W->n ? n : W->n - 1, kind);
        }
        for (long k = 0; k < K; k += 8) {
            __m256 v[8];
            for (int r = 0; r < 8; r++) v[r] = load_w8(kind, rows[r], k);
            transpose8(v);
            for (int j = 0; j < 8; j++) _mm256_storeu_ps(panel + (k + j) * 16 + 8 * half, v[j]);
        }
    }
}

/* Rows 0..mt-1 (mt <= TILE_ROWS) of x (row stride K) times the panel: r[i][0..1] = 16 sums.
 * always_inline: called with a constant mt, a full tile's loop carries no row tests. */
static inline __attribute__((always_inline)) void panel_tile(const float* panel, long K, const float* x, long mt, __m256 r[TILE_ROWS][2]) {
    __m256 acc[TILE_ROWS][2];
    for (int i = 0; i < TILE_ROWS; i++) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    for (long k = 0; k < K; k++, panel += 16) {
        __m256 w0 = _mm256_loadu_ps(panel), w1 = _mm256_loadu_ps(panel + 8);
        for (int i = 0; i < TILE_ROWS; i++) {
            if (i < mt) {
                __m256 xv = _mm256_broadcast_ss(x + i * K + k);
                acc[i][0] = _mm256_fmadd_ps(w0, xv, acc[i][0]);
                acc[i][1] = _mm256_fmadd_ps(w1, xv, acc[i][1]);
            }
        }
    }
    for (int i = 0; i < TILE_ROWS; i++) r[i][0] = acc[i][0], r[i][1] = acc[i][1];
}

/* The panel's 16 row scales (1 but for INT8) and biases, the ragged end's repeating the last row. */
static inline __attribute__((always_inline)) void panel_scale_bias(const ember_weight* W, long n0, long valid, int kind,
                                                                   float s[16], float b[16]) {
    for (long j = 0; j < 16; j++) {
        long n = n0 + (j < valid ? j : valid - 1);
        s[j] = weight_row_scale(W, n, kind);
        b[j] = W->bias ? W->bias[n] : 0.0f;
    }
}

/* y[m * ldy + n] = (or +=) x[m] . W[n] (* scale[n] for INT8) + bias[n], for M rows, threads
 * splitting panels; activation rows go by in chunks whose ~192 KB stay in L2. */
static inline __attribute__((always_inline)) void linear_panels_omp(const ember_weight* W, const float* x, long M, float* y,
                                                                     long ldy, int accumulate, int kind) {
    const long K = W->k, N = W->n, panels = (N + 15) / 16;
    float* panel = (float*)malloc(sizeof(float) * 16 * K);
#if defined(__AVX512F__)
    /* ~512 KB of activations in L2 while the panels (in L1 at K = 576) are filled and used, as
     * int8_panels' AVX-512 loop */
    long chunk = (131072 / K) / PANEL_ROWS_512 * PANEL_ROWS_512;
    if (chunk < 4 * PANEL_ROWS_512) chunk = 4 * PANEL_ROWS_512;
#else
    long chunk = 49152 / K < TILE_ROWS ? TILE_ROWS : 49152 / K / TILE_ROWS * TILE_ROWS;
#endif
    for (long m0 = 0; m0 < M; m0 += chunk) {
        long mc = M - m0 < chunk ? M - m0 : chunk;
        /* nowait: each chunk writes its own rows of y; the barrier below closes them all */
        #pragma omp for schedule(static) nowait
        for (long p = 0; p < panels; p++) {
            const long n0 = 16 * p, valid = N - n0 < 16 ? N - n0 : 16;
            fill_panel(W, n0, panel, kind);
            float s[16], b[16];
            panel_scale_bias(W, n0, valid, kind, s, b);
#if defined(__AVX512F__)
            const __m512 s16 = _mm512_loadu_ps(s), b16 = _mm512_loadu_ps(b);
            for (long t = 0, tiles = panel16_tiles(mc), r0 = m0; t < tiles; t++) {
                long mt = (m0 + mc - r0) / (tiles - t);
                __m512 r[PANEL_ROWS_512];
                panel16_rows(panel, 4, K, x + r0 * K, mt, r);
                for (long i = 0; i < mt; i++) panel16_put(y + (r0 + i) * ldy + n0, r[i], s16, b16, valid, accumulate);
                r0 += mt;
            }
#else
            for (long t = 0; t < mc; t += TILE_ROWS) {
                long mt = mc - t < TILE_ROWS ? mc - t : TILE_ROWS;
                __m256 r[TILE_ROWS][2];
                if (mt == TILE_ROWS) panel_tile(panel, K, x + (m0 + t) * K, TILE_ROWS, r);  /* branch-free */
                else panel_tile(panel, K, x + (m0 + t) * K, mt, r);
                for (long i = 0; i < mt; i++) {
                    float v[16];
                    for (int h = 0; h < 2; h++)
                        _mm256_storeu_ps(v + 8 * h, _mm256_fmadd_ps(r[i][h], _mm256_loadu_ps(s + 8 * h), _mm256_loadu_ps(b + 8 * h)));
                    float* out = y + (m0 + t + i) * ldy + n0;
                    for (long j = 0; j < valid; j++) out[j] = accumulate ? out[j] + v[j] : v[j];
                }
            }
#endif
        }
    }
    #pragma omp barrier
    free(panel);
}

#endif
