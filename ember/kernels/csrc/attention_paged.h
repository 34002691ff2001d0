/* Paged KV storage as the KV codecs lay it out (ember/kv/codecs/), and attention over it.
 *
 * One layer's cache is the codec's tensors, each leading with the block dimension:
 *   F32, BF16     k, v: [blocks, block_size, kv_heads, head_dim] floats
 *   FP8_E4M3/E5M2 k, v: the same shape of fp8 codes (uint8); k_scale, v_scale: [blocks, kv_heads]
 *                 fp32 powers of two; value = table[code] * scale (table: ember/numerics' decode)
 *   INT8          k, v: int8 codes; k_scale, v_scale: [blocks, block_size, kv_heads] fp32;
 *                 value = code * scale
 * Stores follow the codecs' `write` bit for bit (tests/kv/test_codecs.py holds them to it):
 * int8 rounds x / (max|x| / 127) to nearest even; fp8 keeps one power-of-two scale per block
 * and head, grown (and the block's rows re-encoded) when new rows need more range, and a
 * write that reaches a block's offset 0 starts the block afresh.
 * Reads widen 8 values to fp32 in registers; a quantized row's scale multiplies its score
 * (K) or its probability (V), not each element.
 * References: the codecs' `write` and `read` (PyTorch), and the `torch` attention backend.
 */
#ifndef EMBER_ATTENTION_PAGED_H
#define EMBER_ATTENTION_PAGED_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "simd.h"

/* The kinds in order; their names are what the codecs' `native_kind` says (checked at load). */
#define EMBER_KV_KINDS(X) X(F32, f32) X(BF16, bf16) X(FP8_E4M3, fp8_e4m3) X(FP8_E5M2, fp8_e5m2) X(INT8, int8)
#define EMBER_KV_ENUM(id, name) EMBER_KV_##id,
enum { EMBER_KV_KINDS(EMBER_KV_ENUM) EMBER_KV_NUM_KINDS };
#define EMBER_KV_NAME(id, name) #name ","
#define EMBER_KV_KIND_NAMES EMBER_KV_KINDS(EMBER_KV_NAME)

typedef struct {  /* how every layer's blocks are laid out */
    int64_t kind, block_size, num_kv_heads, head_dim;
    const float* fp8_table;   /* [256] code -> value, the fp8 kinds only */
    double fp8_max;           /* the format's largest finite value */
    int64_t fp8_man_bits, fp8_bias;
} ember_kv_layout;

typedef struct {  /* one layer's tensors */
    void* k;
    void* v;
    float* k_scale;  /* NULL for the float kinds */
    float* v_scale;
} ember_kv_layer;

static inline int kv_quantized(int64_t kind) { return kind >= EMBER_KV_FP8_E4M3; }

/* --- stores ------------------------------------------------------------------------------- */
/* Round to nearest even onto the fp8 grid (man mantissa bits, exponent bias), |x| <= max:
 * ember/numerics/minifloat.py's encode without its overflow cases (the scale rules them out). */
static inline uint8_t fp8_encode(float x, int man, int bias) {
    union { float f; uint32_t u; } v = { x };
    uint8_t sign = (uint8_t)((v.u >> 31) << 7);
    float a = fabsf(x);
    if (a == 0.0f) return sign;
    int e = (int)((v.u >> 23) & 0xFF) - 127, emin = 1 - bias;  /* floor(log2 a) for normal a */
    if (e < emin) e = emin;
    union { uint32_t u; float f; } p = { (uint32_t)(man - e + 127) << 23 };  /* 2^(man - e), exact */
    int n = (int)nearbyintf(a * p.f);
    return (uint8_t)(sign | (((e - emin) << man) + n));
}

/* The smallest power of two s with amax / s <= max (0 for amax 0): the codec's pow2_scale. */
static inline float fp8_scale(float amax, float max) {
    if (!(amax > 0.0f)) return 0.0f;
    int e;
    float m = frexpf(amax / max, &e);
    if (m == 0.5f) e -= 1;
    return ldexpf(1.0f, (int)e);
}

static void store_row_plain(void* cache, int64_t at, const float* row, long n, int bf16) {
    if (!bf16) {
        memcpy((float*)cache + at, row, sizeof(float) * n);
        return;
    }
    uint16_t* out = (uint16_t*)cache + at;
    for (long i = 0; i < n; i++) out[i] = f32_to_bf16(row[i]);
}

/* One token's row of one tensor (k or v) at `slot`, for the per-token kinds (float, int8). */
static void kv_store_token(const ember_kv_layout* L, void* data, float* scales, int64_t slot, const float* row) {
    const long Hkv = L->num_kv_heads, Dh = L->head_dim, KV = Hkv * Dh;
    if (L->kind == EMBER_KV_F32 || L->kind == EMBER_KV_BF16) {
        store_row_plain(data, slot * KV, row, KV, L->kind == EMBER_KV_BF16);
        return;
    }
    for (long h = 0; h < Hkv; h++) {  /* INT8 */
        const float* x = row + h * Dh;
        float amax = 0.0f;
        for (long i = 0; i < Dh; i++) amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
        float s = amax / 127.0f, safe = s > 0.0f ? s : 1.0f;
        int8_t* q = (int8_t*)data + slot * KV + h * Dh;
        for (long i = 0; i < Dh; i++) {
            float r = nearbyintf(x[i] / safe);
            q[i] = (int8_t)(r > 127.0f ? 127.0f : r < -127.0f ? -127.0f : r);
        }
        scales[slot * Hkv + h] = s;
    }
}

/* Rows rows[0..n-1] (stride ld floats) of one tensor at consecutive slots within ONE block. */
static void kv_store_fp8_run(const ember_kv_layout* L, uint8_t* data, float* scales, const int64_t* slots,
                             const float* rows, long ld, long n) {
    const long Hkv = L->num_kv_heads, Dh = L->head_dim, KV = Hkv * Dh, bs = L->block_size;
    const int man = (int)L->fp8_man_bits, bias = (int)L->fp8_bias;
    const int64_t block = slots[0] / bs;
    const int fresh = slots[0] % bs == 0;
    for (long h = 0; h < Hkv; h++) {
        float amax = 0.0f;
        for (long t = 0; t < n; t++)
            for (long i = 0; i < Dh; i++) amax = fabsf(rows[t * ld + h * Dh + i]) > amax ? fabsf(rows[t * ld + h * Dh + i]) : amax;
        float old = fresh ? 0.0f : scales[block * Hkv + h], need = fp8_scale(amax, (float)L->fp8_max);
        float s = need > old ? need : old;
        if (s > old && old > 0.0f) {  /* re-encode the block's rows at the larger scale */
            float ratio = old / s;
            for (long r = 0; r < bs; r++) {
                uint8_t* q = data + (block * bs + r) * KV + h * Dh;
                for (long i = 0; i < Dh; i++) q[i] = fp8_encode(L->fp8_table[q[i]] * ratio, man, bias);
            }
        }
        scales[block * Hkv + h] = s;
        float safe = s > 0.0f ? s : 1.0f;
        for (long t = 0; t < n; t++) {
            uint8_t* q = data + slots[t] * KV + h * Dh;
            for (long i = 0; i < Dh; i++) q[i] = fp8_encode(rows[t * ld + h * Dh + i] / safe, man, bias);
        }
    }
}

/* n tokens of one sequence (consecutive slots, in order): their K and V rows, stride ld. */
static void kv_store_seq(const ember_kv_layout* L, const ember_kv_layer* C, const int64_t* slots, long n,
                         const float* k_rows, const float* v_rows, long ld) {
    if (L->kind != EMBER_KV_FP8_E4M3 && L->kind != EMBER_KV_FP8_E5M2) {
        for (long t = 0; t < n; t++) {
            kv_store_token(L, C->k, C->k_scale, slots[t], k_rows + t * ld);
            kv_store_token(L, C->v, C->v_scale, slots[t], v_rows + t * ld);
        }
        return;
    }
    for (long t = 0; t < n;) {  /* runs of tokens in one block: one scale decision per run */
        long e = t + 1;
        while (e < n && slots[e] / L->block_size == slots[t] / L->block_size) e++;
        kv_store_fp8_run(L, (uint8_t*)C->k, C->k_scale, slots + t, k_rows + t * ld, ld, e - t);
        kv_store_fp8_run(L, (uint8_t*)C->v, C->v_scale, slots + t, v_rows + t * ld, ld, e - t);
        t = e;
    }
}

/* Where row t's scale sits in k_scale/v_scale (before adding the KV head), from its slot. */
static inline int64_t kv_scale_base(const ember_kv_layout* L, int64_t slot) {
    return L->kind == EMBER_KV_INT8 ? slot * L->num_kv_heads : slot / L->block_size * L->num_kv_heads;
}

/* --- attention ---------------------------------------------------------------------------- */
static inline __m256 load_kv8(const void* base, int64_t at, int kind, const float* table) {
    switch (kind) {
        case EMBER_KV_BF16: return widen_bf16x8((const uint16_t*)base + at);
        case EMBER_KV_INT8:
            return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)((const int8_t*)base + at))));
        case EMBER_KV_FP8_E4M3:
        case EMBER_KV_FP8_E5M2:
            return _mm256_i32gather_ps(table, _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)((const uint8_t*)base + at))), 4);
        default: return _mm256_loadu_ps((const float*)base + at);
    }
}

#define HEADS_PER_PASS 3  /* query heads read against each K/V row at once (registers allow 3) */

/* nh (<= HEADS_PER_PASS) query heads that share one KV head (GQA), over L cached entries;
 * entry t's K (V) row is at kc (vc) + off[t] elements, where off already holds the block-table
 * lookup for the whole step; for quantized kinds its scales are ks[soff[t]], vs[soff[t]] (ks,
 * vs already offset to this KV head). Each K and V row is read once for all nh heads: for a
 * prefill chunk, whose tokens' contexts stream from L2, that traffic, not the FMAs, is what
 * bounds attention. q, out: nh rows of Dh, contiguous. scores: nh rows of `ld` >= L + 1
 * floats. Dh: a multiple of 32. always_inline with a constant `kind`: each call site gets its
 * own loop without the branches. */
static inline __attribute__((always_inline)) void attend_heads(
        const float* q, long nh, const void* kc, const void* vc, const int64_t* off, long L, long Dh, float scale,
        float* scores, long ld, float* out, int kind, const float* table, const float* ks, const float* vs,
        const int64_t* soff) {
    const int quantized = kv_quantized(kind);
    /* q . k for two tokens at a time: 2 x nh independent chains, reduced together */
    for (long t = 0; t < L; t += 2) {
        const long t1 = t + 1 < L ? t + 1 : t;
        const int64_t k0 = off[t], k1 = off[t1];
        __m256 a[HEADS_PER_PASS][2];
        for (int h = 0; h < HEADS_PER_PASS; h++) a[h][0] = a[h][1] = _mm256_setzero_ps();
        for (long c = 0; c < Dh; c += 8) {
            __m256 x0 = load_kv8(kc, k0 + c, kind, table), x1 = load_kv8(kc, k1 + c, kind, table);
            for (int h = 0; h < HEADS_PER_PASS; h++) {
                if (h < nh) {
                    __m256 qv = _mm256_loadu_ps(q + h * Dh + c);
                    a[h][0] = _mm256_fmadd_ps(qv, x0, a[h][0]);
                    a[h][1] = _mm256_fmadd_ps(qv, x1, a[h][1]);
                }
            }
        }
        /* per 128-bit half: (h0 t0, h0 t1, h1 t0, h1 t1) and (h2 t0, h2 t1, -, -) */
        __m256 r01 = _mm256_hadd_ps(_mm256_hadd_ps(a[0][0], a[0][1]), _mm256_hadd_ps(a[1][0], a[1][1]));
        __m256 r2 = _mm256_hadd_ps(_mm256_hadd_ps(a[2][0], a[2][1]), _mm256_setzero_ps());
        float v[8];
        _mm_storeu_ps(v, _mm_mul_ps(_mm_add_ps(_mm256_castps256_ps128(r01), _mm256_extractf128_ps(r01, 1)), _mm_set1_ps(scale)));
        _mm_storeu_ps(v + 4, _mm_mul_ps(_mm_add_ps(_mm256_castps256_ps128(r2), _mm256_extractf128_ps(r2, 1)), _mm_set1_ps(scale)));
        const float s0 = quantized ? ks[soff[t]] : 1.0f, s1 = quantized ? ks[soff[t1]] : 1.0f;
        for (int h = 0; h < nh; h++) {
            scores[h * ld + t] = quantized ? v[2 * h] * s0 : v[2 * h];
            scores[h * ld + t + 1] = quantized ? v[2 * h + 1] * s1 : v[2 * h + 1];  /* past L when L is odd: within ld, unused */
        }
    }
    float inv[HEADS_PER_PASS];
    for (int h = 0; h < nh; h++) inv[h] = softmax_in_place(scores + h * ld, L);
    /* p . V, 32 dims at a time in registers */
    for (long c = 0; c < Dh; c += 32) {
        __m256 acc[HEADS_PER_PASS][4];
        for (int h = 0; h < HEADS_PER_PASS; h++)
            for (int i = 0; i < 4; i++) acc[h][i] = _mm256_setzero_ps();
        for (long t = 0; t < L; t++) {
            const int64_t v = off[t] + c;
            const float sv = quantized ? vs[soff[t]] : 1.0f;
            __m256 x[4];
            for (int i = 0; i < 4; i++) x[i] = load_kv8(vc, v + 8 * i, kind, table);
            for (int h = 0; h < HEADS_PER_PASS; h++) {
                if (h < nh) {
                    __m256 p = _mm256_set1_ps(quantized ? scores[h * ld + t] * sv : scores[h * ld + t]);
                    for (int i = 0; i < 4; i++) acc[h][i] = _mm256_fmadd_ps(p, x[i], acc[h][i]);
                }
            }
        }
        for (int h = 0; h < nh; h++)
            for (int i = 0; i < 4; i++)
                _mm256_storeu_ps(out + h * Dh + c + 8 * i, _mm256_mul_ps(acc[h][i], _mm256_set1_ps(inv[h])));
    }
}

/* attend_heads on one layer's cache, dispatched once per call on the layout's kind. */
static void attend_paged(const ember_kv_layout* Lk, const ember_kv_layer* C, long kvh, const float* q, long nh,
                         const int64_t* off, const int64_t* soff, long L, float scale, float* scores, long ld,
                         float* out) {
    const long Dh = Lk->head_dim, at = kvh * Dh;
    const float* ks = C->k_scale ? C->k_scale + kvh : NULL;
    const float* vs = C->v_scale ? C->v_scale + kvh : NULL;
    switch (Lk->kind) {
#define EMBER_KV_ATTEND(id, name) \
        case EMBER_KV_##id: { \
            const int es = EMBER_KV_##id == EMBER_KV_F32 ? 4 : EMBER_KV_##id == EMBER_KV_BF16 ? 2 : 1; \
            attend_heads(q, nh, (const char*)C->k + at * es, (const char*)C->v + at * es, off, L, Dh, scale, \
                         scores, ld, out, EMBER_KV_##id, Lk->fp8_table, ks, vs, soff); \
            break; }
        EMBER_KV_KINDS(EMBER_KV_ATTEND)
#undef EMBER_KV_ATTEND
    }
}

#endif
