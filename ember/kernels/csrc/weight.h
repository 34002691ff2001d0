/* ember_weight: one projection's storage, and the list of storage kinds everything else is
 * generated from (enum, names, row loaders here; linear.h's per-kind kernel table).
 *
 *   f32          w: float [N,K]
 *   int8         w: int8 [N,K], scale: float [N]           w[n,k] = q * scale[n]
 *   int4         w, sm: blocks of 8 rows with fp16 (scale, minimum) per group of 32 (linear_int4.h)
 *   int8_panels  w: int8 [N/16, K, 16] (linear_int8_panels.h), scale: float [N]
 *   bf16         w: bf16 [N,K] (torch's own bfloat16 matrix, as stored)
 *   tmac2, tmac4 w: 2 or 4 bit planes in blocks of 16 rows, sm: fp16 (scale, minimum) per
 *                group of 64, read through int8 lookup tables of the activations (linear_tmac.h)
 *   w4a4         int4's storage; activations on 4 bits per group of 32, the row's largest
 *                eighth of groups on 8 (COMET's outlier blocks; linear_int4.h)
 *   planes1..4   w: 1 to 4 bit planes in blocks of 32 rows, sm: an fp16 scale per plane and a
 *                minimum per group of 64 (BCQ, odd-width round-to-nearest; linear_planes.h)
 *   lmul7, lmul4 w: bf16 [N,K] on 7 or 4 mantissa bits; every product an L-Mul (linear_lmul.h)
 *
 * Python reads the names (ember_linear_abi) and numbers kinds by their position in this list,
 * so adding a kind here is the only place its number is written down.
 */
#ifndef EMBER_WEIGHT_H
#define EMBER_WEIGHT_H

#include <stdint.h>

#include "simd.h"

/* X(ID, name, bytes per weight of a row-major storage (0: its own blocked layout),
 *   a per-row scale multiplies the sums, how 8 weights of a row load, kernel family)
 * The family (linear.h) is what the kind's linear_omp runs; the loader matters only to the
 * row-major family. */
#define EMBER_WEIGHT_KINDS(X) \
    X(F32,         f32,         4, 0, load8_f32,     linear_rowmajor_omp) \
    X(INT8,        int8,        1, 1, load8_int8,    linear_rowmajor_omp) \
    X(INT4,        int4,        0, 0, load8_blocked, linear_int4_omp) \
    X(INT8_PANELS, int8_panels, 0, 1, load8_blocked, linear_int8_panels_omp) \
    X(BF16,        bf16,        2, 0, load8_bf16,    linear_rowmajor_omp) \
    X(TMAC2,       tmac2,       0, 0, load8_blocked, linear_tmac_omp) \
    X(TMAC4,       tmac4,       0, 0, load8_blocked, linear_tmac_omp) \
    X(PLANES1,     planes1,     0, 0, load8_blocked, linear_planes_omp) \
    X(PLANES2,     planes2,     0, 0, load8_blocked, linear_planes_omp) \
    X(PLANES3,     planes3,     0, 0, load8_blocked, linear_planes_omp) \
    X(PLANES4,     planes4,     0, 0, load8_blocked, linear_planes_omp) \
    X(W4A4,        w4a4,        0, 0, load8_blocked, linear_int4_omp) \
    X(LMUL7,       lmul7,       0, 0, load8_blocked, linear_lmul_omp) \
    X(LMUL4,       lmul4,       0, 0, load8_blocked, linear_lmul_omp)

#define EMBER_WEIGHT_ENUM(id, name, esz, scaled, load, family) EMBER_##id,
enum { EMBER_WEIGHT_KINDS(EMBER_WEIGHT_ENUM) EMBER_WEIGHT_NUM_KINDS };
#undef EMBER_WEIGHT_ENUM
#define EMBER_WEIGHT_NAME(id, name, esz, scaled, load, family) #name ","
#define EMBER_WEIGHT_KIND_NAMES EMBER_WEIGHT_KINDS(EMBER_WEIGHT_NAME)

typedef struct {
    int64_t kind, n, k;
    const void* w;
    const float* scale;   /* int8, int8_panels: [N] */
    const uint16_t* sm;   /* int4: fp16 scales then minimums, [N/8, K/32, 2, 8]; tmac: [N/16, K/64, 2, 16]; planes: [N/32, K/64, P+1, 32] */
    const float* bias;    /* [N] or NULL */
} ember_weight;

static inline __m256 load8_f32(const void* row, long k) { return _mm256_loadu_ps((const float*)row + k); }
static inline __m256 load8_bf16(const void* row, long k) { return widen_bf16x8((const uint16_t*)row + k); }
static inline __m256 load8_int8(const void* row, long k) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)((const int8_t*)row + k))));
}
/* Blocked kinds have no rows to load: their families never call this. */
static inline __m256 load8_blocked(const void* row, long k) { (void)row, (void)k; return _mm256_setzero_ps(); }

/* The per-kind facts below take `kind` as a compile-time constant in the hot loops (each
 * kind's kernel is its own always_inline instance, linear.h), so the switches fold away and
 * no per-element branch or call is left. */
#define EMBER_WEIGHT_CASE_ESZ(id, name, esz, scaled, load, family) case EMBER_##id: return esz;
static inline __attribute__((always_inline)) long weight_elem_size(int kind) {
    switch (kind) { EMBER_WEIGHT_KINDS(EMBER_WEIGHT_CASE_ESZ) }
    return 0;
}
#undef EMBER_WEIGHT_CASE_ESZ

#define EMBER_WEIGHT_CASE_SCALED(id, name, esz, scaled, load, family) case EMBER_##id: return scaled;
static inline __attribute__((always_inline)) int weight_scaled(int kind) {
    switch (kind) { EMBER_WEIGHT_KINDS(EMBER_WEIGHT_CASE_SCALED) }
    return 0;
}
#undef EMBER_WEIGHT_CASE_SCALED

/* 8 weights of a row-major row from input k, widened to fp32 (int8: unscaled codes). */
#define EMBER_WEIGHT_CASE_LOAD(id, name, esz, scaled, load, family) case EMBER_##id: return load(row, k);
static inline __attribute__((always_inline)) __m256 load_w8(int kind, const void* row, long k) {
    switch (kind) { EMBER_WEIGHT_KINDS(EMBER_WEIGHT_CASE_LOAD) }
    return _mm256_setzero_ps();
}
#undef EMBER_WEIGHT_CASE_LOAD

static inline __attribute__((always_inline)) const void* weight_row(const ember_weight* W, long n, int kind) {
    return (const char*)W->w + n * W->k * weight_elem_size(kind);
}

/* The multiplier of row n's sums: its scale for the scaled kinds, else 1. */
static inline __attribute__((always_inline)) float weight_row_scale(const ember_weight* W, long n, int kind) {
    return weight_scaled(kind) ? W->scale[n] : 1.0f;
}

#endif
