/* AVX-512 (avx512, avx512vnni variants): activation rows times one panel of 16 output rows laid
 * out [K, 16], weights of input k consecutive: int8 codes (int8_panels' storage) or fp32 (the
 * row-major kinds' panels, widened and transposed by linear_panels.h's fill_panel).
 *
 * The panel's 16 weights at input k load (int8: widen) into one 16-float vector, and up to
 * PANEL_ROWS_512 activation rows (one register each, 32 registers under AVX-512) share it, so a
 * load serves up to 16 FMAs of 16 lanes and nothing is summed horizontally. From 4 rows each
 * output sums k ascending in one chain, as the AVX2 tiles do (the same fp32 result as theirs);
 * below 4 rows in 4 chains (k mod 4), since one row's single chain of FMAs would set the pace.
 */
#ifndef EMBER_LINEAR_PANEL16_H
#define EMBER_LINEAR_PANEL16_H

#if defined(__AVX512F__)
#include <immintrin.h>
#include <stdint.h>

#define PANEL_ROWS_512 16

/* The panel's 16 weights at input k: esz 1 (int8 codes, unscaled) or 4 (fp32). */
static inline __attribute__((always_inline)) __m512 panel16_load(const void* panel, long k, int esz) {
    if (esz == 1) return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)((const int8_t*)panel + 16 * k))));
    return _mm512_loadu_ps((const float*)panel + 16 * k);
}

/* Prefetch 2 KB ahead (as in linear_int4.h: int8 panels stream from DRAM at small batches; an
 * fp32 panel comes from L2), once per 64-byte line. */
static inline __attribute__((always_inline)) void panel16_prefetch(const void* panel, long k, int esz) {
    if ((16 * esz * k) % 64 == 0) _mm_prefetch((const char*)panel + 16 * esz * k + 2048, _MM_HINT_T0);
}

/* Rows 0..MT-1 of x (row stride K) times one panel: r[i] (int8: unscaled). MT, esz: constants
 * per instance. K: a multiple of 4. */
static inline __attribute__((always_inline)) void panel16_tile(const void* panel, int esz, long K, const float* x,
                                                               const int MT, __m512 r[PANEL_ROWS_512]) {
    if (MT < 4) {
        __m512 acc[3][4];
        for (int i = 0; i < MT; i++)
            for (int c = 0; c < 4; c++) acc[i][c] = _mm512_setzero_ps();
        for (long k = 0; k < K; k += 4) {
            for (int c = 0; c < 4; c++) {
                panel16_prefetch(panel, k + c, esz);
                __m512 w = panel16_load(panel, k + c, esz);
                for (int i = 0; i < MT; i++) acc[i][c] = _mm512_fmadd_ps(w, _mm512_set1_ps(x[i * K + k + c]), acc[i][c]);
            }
        }
        for (int i = 0; i < MT; i++) r[i] = _mm512_add_ps(_mm512_add_ps(acc[i][0], acc[i][1]), _mm512_add_ps(acc[i][2], acc[i][3]));
        return;
    }
    __m512 acc[PANEL_ROWS_512];
    for (int i = 0; i < MT; i++) acc[i] = _mm512_setzero_ps();
    for (long k = 0; k < K; k++) {
        panel16_prefetch(panel, k, esz);
        __m512 w = panel16_load(panel, k, esz);
        for (int i = 0; i < MT; i++) acc[i] = _mm512_fmadd_ps(w, _mm512_set1_ps(x[i * K + k]), acc[i]);
    }
    for (int i = 0; i < MT; i++) r[i] = acc[i];
}

/* panel16_tile for any mt in 1..PANEL_ROWS_512: one constant-MT instance each. */
static inline __attribute__((always_inline)) void panel16_rows(const void* panel, int esz, long K, const float* x,
                                                               long mt, __m512 r[PANEL_ROWS_512]) {
    switch (mt) {
#define PANEL16_CASE(n) case n: panel16_tile(panel, esz, K, x, n, r); break;
        PANEL16_CASE(1) PANEL16_CASE(2) PANEL16_CASE(3) PANEL16_CASE(4) PANEL16_CASE(5) PANEL16_CASE(6)
        PANEL16_CASE(7) PANEL16_CASE(8) PANEL16_CASE(9) PANEL16_CASE(10) PANEL16_CASE(11) PANEL16_CASE(12)
        PANEL16_CASE(13) PANEL16_CASE(14) PANEL16_CASE(15) PANEL16_CASE(16)
#undef PANEL16_CASE
    }
}

/* out[0..valid-1] = (or +=, with accumulate) r * s + b: the tile's sums scaled and biased. */
static inline __attribute__((always_inline)) void panel16_put(float* out, __m512 r, __m512 s, __m512 b, long valid,
                                                              int accumulate) {
    const __mmask16 m = (__mmask16)((1u << valid) - 1);
    __m512 v = _mm512_fmadd_ps(r, s, b);
    _mm512_mask_storeu_ps(out, m, accumulate ? _mm512_add_ps(_mm512_maskz_loadu_ps(m, out), v) : v);
}

/* Rows split evenly into tiles of at most PANEL_ROWS_512 (32 rows: 16 + 16; 17: 8 + 9). */
static inline long panel16_tiles(long rows) { return (rows + PANEL_ROWS_512 - 1) / PANEL_ROWS_512; }

#endif
#endif
