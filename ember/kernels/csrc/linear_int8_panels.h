/* INT8 weights (one scale per output row) in panels of 16 rows, fp32 activations and sums.
 *
 *   w [N/16, K, 16]: at input k, the codes of the panel's 16 rows are 16 consecutive bytes.
 *
 * One 16-byte load per input, widened to two fp32 vectors, is multiplied by up to 6 broadcast
 * activations (12 accumulators in registers): each widened weight serves 6 rows, the 6 rows'
 * activations stay in L1, and nothing is summed horizontally. The row-major INT8 kernel of
 * linear.h instead re-reads every activation row from L2 for each 4 weight rows, which bounded
 * the output head at batch 32 (~65 GOP/s). At batch 1 this streams the weights as fast.
 * Under AVX-512 (avx512, avx512vnni variants) linear_panel16.h's 16-wide tile: one widened
 * vector of 16 codes serves up to 16 activation rows.
 * Reference: the int8 method's `native_reference_apply` (dequantize, F.linear in fp32).
 */
#ifndef EMBER_LINEAR_INT8_PANELS_H
#define EMBER_LINEAR_INT8_PANELS_H

#include "linear_panel16.h"
#include "simd.h"
#include "weight.h"

#define PANEL_ROWS 6

static inline void widen16(const int8_t* codes, __m256* w0, __m256* w1) {
    __m128i q = _mm_loadu_si128((const __m128i*)codes);
    *w0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
    *w1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q, 8)));
}

/* Rows 0..mt-1 (4 <= mt <= PANEL_ROWS) of x (row stride K) times one panel: r[i][0..15] unscaled. */
static inline void int8_panel_tile(const int8_t* panel, long K, const float* x, long mt, __m256 r[PANEL_ROWS][2]) {
    __m256 acc[PANEL_ROWS][2];
    for (int i = 0; i < PANEL_ROWS; i++) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    for (long k = 0; k < K; k++, panel += 16) {
        /* 2 KB ahead, as in linear_int4.h: at small batches the panels stream from DRAM */
        if (!(k & 3)) _mm_prefetch((const char*)panel + 2048, _MM_HINT_T0);
        __m256 w0, w1;
        widen16(panel, &w0, &w1);
        for (int i = 0; i < PANEL_ROWS; i++) {
            if (i < mt) {
                __m256 xv = _mm256_set1_ps(x[i * K + k]);
                acc[i][0] = _mm256_fmadd_ps(w0, xv, acc[i][0]);
                acc[i][1] = _mm256_fmadd_ps(w1, xv, acc[i][1]);
            }
        }
    }
    for (int i = 0; i < PANEL_ROWS; i++) r[i][0] = acc[i][0], r[i][1] = acc[i][1];
}

/* The same for mt <= 3 rows, even and odd inputs in separate accumulators: with one row, two
 * chains of 4-cycle FMAs would otherwise set the pace instead of the weight stream. K: even. */
static inline void int8_panel_tile_small(const int8_t* panel, long K, const float* x, long mt, __m256 r[PANEL_ROWS][2]) {
    __m256 even[3][2], odd[3][2];
    for (int i = 0; i < 3; i++) even[i][0] = even[i][1] = odd[i][0] = odd[i][1] = _mm256_setzero_ps();
    for (long k = 0; k < K; k += 2, panel += 32) {
        if (!(k & 3)) _mm_prefetch((const char*)panel + 2048, _MM_HINT_T0);
        __m256 w0, w1;
        widen16(panel, &w0, &w1);
        for (int i = 0; i < 3; i++) {
            if (i < mt) {
                __m256 xv = _mm256_set1_ps(x[i * K + k]);
                even[i][0] = _mm256_fmadd_ps(w0, xv, even[i][0]);
                even[i][1] = _mm256_fmadd_ps(w1, xv, even[i][1]);
            }
        }
        widen16(panel + 16, &w0, &w1);
        for (int i = 0; i < 3; i++) {
            if (i < mt) {
                __m256 xv = _mm256_set1_ps(x[i * K + k + 1]);
                odd[i][0] = _mm256_fmadd_ps(w0, xv, odd[i][0]);
                odd[i][1] = _mm256_fmadd_ps(w1, xv, odd[i][1]);
            }
        }
    }
    for (int i = 0; i < 3; i++)
        for (int h = 0; h < 2; h++) r[i][h] = _mm256_add_ps(even[i][h], odd[i][h]);
}

/* y[m * ldy + n] = (or +=) x[m] . W[n] + bias[n], threads splitting panels.
 * kind: always int8_panels (the common signature of linear.h's per-kind table). */
static void linear_int8_panels_omp(const ember_weight* W, const float* x, long M, float* y, long ldy, int accumulate,
                                   int kind) {
    (void)kind;
    const long K = W->k, panels = W->n / 16;
#if defined(__AVX512F__)
    /* Prefill-sized batches in chunks of rows whose activations (~512 KB) stay in L2 while every
     * panel streams by; one chunk of all rows at once read the whole of x from L3 per panel. */
    long chunk = (131072 / K) / PANEL_ROWS_512 * PANEL_ROWS_512;
    if (chunk < 4 * PANEL_ROWS_512) chunk = 4 * PANEL_ROWS_512;
    for (long c0 = 0; c0 < M; c0 += chunk) {
        const long cm = M - c0 < chunk ? M - c0 : chunk;
        const long tiles = panel16_tiles(cm);
        #pragma omp for schedule(static) nowait
        for (long p = 0; p < panels; p++) {
            const int8_t* panel = (const int8_t*)W->w + p * K * 16;
            __m512 s = _mm512_loadu_ps(W->scale + 16 * p);
            __m512 b = W->bias ? _mm512_loadu_ps(W->bias + 16 * p) : _mm512_setzero_ps();
            for (long t = 0, m0 = c0; t < tiles; t++) {
                long mt = (c0 + cm - m0) / (tiles - t);
                __m512 r[PANEL_ROWS_512];
                panel16_rows(panel, 1, K, x + m0 * K, mt, r);
                for (long i = 0; i < mt; i++) panel16_put(y + (m0 + i) * ldy + 16 * p, r[i], s, b, 16, accumulate);
                m0 += mt;
            }
        }
    }
    #pragma omp barrier
    return;
#endif
    #pragma omp for schedule(static)
    for (long p = 0; p < panels; p++) {
        const int8_t* panel = (const int8_t*)W->w + p * K * 16;
        __m256 s[2], b[2];
        for (int h = 0; h < 2; h++) {
            s[h] = _mm256_loadu_ps(W->scale + 16 * p + 8 * h);
            b[h] = W->bias ? _mm256_loadu_ps(W->bias + 16 * p + 8 * h) : _mm256_setzero_ps();
        }
        for (long m0 = 0; m0 < M; m0 += PANEL_ROWS) {
            long mt = M - m0 < PANEL_ROWS ? M - m0 : PANEL_ROWS;
            __m256 r[PANEL_ROWS][2];
            if (mt <= 3) int8_panel_tile_small(panel, K, x + m0 * K, mt, r);
            else int8_panel_tile(panel, K, x + m0 * K, mt, r);
            for (long i = 0; i < mt; i++)
                for (int h = 0; h < 2; h++) {
                    float* out = y + (m0 + i) * ldy + 16 * p + 8 * h;
                    __m256 v = _mm256_fmadd_ps(r[i][h], s[h], b[h]);
                    _mm256_storeu_ps(out, accumulate ? _mm256_add_ps(_mm256_loadu_ps(out), v) : v);
                }
        }
    }
}

#endif
