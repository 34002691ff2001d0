/* Paged KV storage as the KV codecs lay it out (ember/kv/codecs/), and attention over it.
 *
 * One layer's cache is the codec's tensors, each leading with the block dimension:
 *   F32, BF16     k, v: [blocks, block_size, kv_heads, head_dim] floats
 *   FP8_E4M3/E5M2 k, v: the same shape of fp8 codes (uint8); k_scale, v_scale: [blocks, kv_heads]
 *                 fp32 powers of two; value = table[code] * scale (table: ember/numerics' decode)
 *   INT8          k, v: int8 codes; k_scale, v_scale: [blocks, block_size, kv_heads] fp32;
 *                 value = code * scale
 *   KIVI4, KIVI2  k, v: [blocks, block_size, kv_heads, head_dim * bits / 8] packed unsigned codes
 *                 (channel c at bit bits * c of its row, low bits first); keys per channel over
 *                 the block: k_scale, k_min [blocks, kv_heads, head_dim]; values per token:
 *                 v_scale, v_min [blocks, block_size, kv_heads, head_dim / v_group] (per token and
 *                 group of v_group channels); fp32, or fp16 where stats_f16; value = code * scale + min.
 *                 k_res [pool slots, block_size, kv_heads, head_dim] (fp32, or bf16 where
 *                 res_bf16): the keys as written, of open blocks only, block b's at pool slot
 *                 scratch_slot[b] (int32, -1: none; ember/kv/scratch.py hands them out), or at
 *                 slot -2 - scratch_slot[b] of k_res_pass (shared by the layers) for a block the
 *                 current pass opens and fills;
 *                 k_full [blocks] uint8: 1 once the block's last slot was written and its keys
 *                 quantized (until then attention reads k_res).
 *   XQUANT4,      k: [blocks, block_size, 2 * kv_heads * head_dim * bits / 8] packed codes of the
 *   XQUANT2       entry's latent (W = 2 * kv_heads * head_dim channels, packed as KIVI's);
 *                 k_scale, k_min [blocks, block_size, W / xq_group] fp32 (fp16 where stats_f16);
 *                 pos [blocks, block_size] int32, the entry's RoPE position; v unused. Beside the
 *                 blocks, per layer: xq_to_latent, xq_from_latent [W, W], xq_bias [W] and the
 *                 RoPE tables xq_cos, xq_sin [max_position, head_dim], all fp32 (the codec's
 *                 bind_layer): latent = ([unrope(K), V] - bias) @ to_latent, and back
 *                 [K_pre, V] = latent @ from_latent + bias, K = RoPE(K_pre, pos) (xquant.py).
 *   BFP4, BFP8    k, v: [blocks, block_size, kv_heads, head_dim] int8 codes (bfp8), or head_dim / 2
 *                 bytes of two's-complement nibbles (bfp4, channel 2i low); k_scale, v_scale hold
 *                 int8 exponents [blocks, block_size, kv_heads, head_dim / bfp_group]; value =
 *                 code * 2^exponent (ember/kv/codecs/bfp.py).
 * Stores follow the codecs' `write` bit for bit (tests/kv/test_codecs.py holds them to it):
 * int8 rounds x / (max|x| / 127) to nearest even; fp8 keeps one power-of-two scale per block
 * and head, grown (and the block's rows re-encoded) when new rows need more range, and a
 * write that reaches a block's offset 0 starts the block afresh. KIVI quantizes values per token
 * as they come, keeps keys in k_res, and quantizes a block's keys when the write that reaches
 * its last slot lands (ember/kv/codecs/kivi.py). XQuant computes and quantizes each row's latent
 * as it is written (its codes may differ from the codec's in the rare element whose latent
 * float summation order moves across a rounding boundary), and computes K and V again from
 * the latents inside attention; no dequantized copy is kept.
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
#define EMBER_KV_KINDS(X) X(F32, f32) X(BF16, bf16) X(FP8_E4M3, fp8_e4m3) X(FP8_E5M2, fp8_e5m2) X(INT8, int8) \
    X(KIVI4, kivi4) X(KIVI2, kivi2) X(BFP4, bfp4) X(BFP8, bfp8) X(XQUANT4, xquant4) X(XQUANT2, xquant2)
#define EMBER_KV_ENUM(id, name) EMBER_KV_##id,
enum { EMBER_KV_KINDS(EMBER_KV_ENUM) EMBER_KV_NUM_KINDS };
#define EMBER_KV_NAME(id, name) #name ","
#define EMBER_KV_KIND_NAMES EMBER_KV_KINDS(EMBER_KV_NAME)

typedef struct {  /* how every layer's blocks are laid out */
    int64_t kind, block_size, num_kv_heads, head_dim;
    const float* fp8_table;   /* [256] code -> value, the fp8 kinds only */
    double fp8_max;           /* the format's largest finite value */
    int64_t fp8_man_bits, fp8_bias;
    int64_t res_bf16;         /* KIVI: k_res holds bf16 (else fp32) */
    int64_t stats_f16;        /* KIVI: k_scale, k_min, v_scale, v_min hold fp16 (else fp32) */
    int64_t v_group;          /* KIVI: channels per value scale and minimum (a multiple of 32) */
    int64_t xq_group;         /* XQUANT: latent channels per scale and minimum (a multiple of 8) */
    int64_t bfp_group;        /* bfp: channels per shared exponent, 32 or 64 */
} ember_kv_layout;

typedef struct {  /* one layer's tensors */
    void* k;
    void* v;
    float* k_scale;  /* NULL for the float kinds */
    float* v_scale;
    float* k_min;    /* KIVI only (else NULL) */
    float* v_min;
    void* k_res;     /* KIVI: the layer's residual pool, [slots, block_size, kv_heads, head_dim] */
    uint8_t* k_full;
    const int32_t* scratch_slot;  /* KIVI: [blocks] s >= 0: slot s of k_res; s <= -2: slot -2 - s of
                                     k_res_pass; -1: none */
    void* k_res_pass;  /* KIVI: the pass pool, shared by the layers (ember/kv/scratch.py) */
    int32_t* pos;      /* XQUANT: [blocks, block_size] each entry's RoPE position */
    const float* xq_to_latent;    /* XQUANT: the layer's maps and bias, and the RoPE tables (see above) */
    const float* xq_from_latent;
    const float* xq_bias;
    const float* xq_cos;
    const float* xq_sin;
} ember_kv_layer;

/* KIVI: where block `block`'s residual starts (elements of the residual's dtype; k_res_pass's
 * when the block holds a pass slot), or -1 when it holds none. */
static inline int64_t kivi_res_at(const ember_kv_layer* C, int64_t block, long per_block, const void** base) {
    const int32_t s = C->scratch_slot[block];
    *base = s >= 0 ? C->k_res : C->k_res_pass;
    return s >= 0 ? (int64_t)s * per_block : s <= -2 ? (int64_t)(-2 - s) * per_block : -1;
}

static inline int kv_quantized(int64_t kind) { return kind >= EMBER_KV_FP8_E4M3; }
static inline int kv_kivi(int64_t kind) { return kind == EMBER_KV_KIVI4 || kind == EMBER_KV_KIVI2; }
static inline int kv_bfp(int64_t kind) { return kind == EMBER_KV_BFP4 || kind == EMBER_KV_BFP8; }
static inline int kv_xquant(int64_t kind) { return kind == EMBER_KV_XQUANT4 || kind == EMBER_KV_XQUANT2; }
/* Kinds whose rows are stored one token at a time, independently (any order, any thread). */
static inline int kv_per_token_store(int64_t kind) {
    return kind <= EMBER_KV_BF16 || kind == EMBER_KV_INT8 || kv_bfp(kind) || kv_xquant(kind);
}
#define XQ_MAX_WIDTH 4096  /* XQUANT: latent channels (2 * kv_heads * head_dim) at most (checked at load) */

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

/* Block floating point (ember/numerics/bfp.py's shared_exponent_quantize, for one group of n
 * floats): s = floor(log2 amax) - (m - 2), plus 1 if amax / 2^s rounds above qmax, clamped to
 * [-128, 127]; q = round(x / 2^s) ties to even, clamped to +-qmax. Scaling by 2^-s is exact
 * (ldexp in double, as the reference computes in float64). */
static void bfp_quantize_group(const float* x, long n, int m, int8_t* q, int8_t* exponent) {
    const double qmax = (double)((1 << (m - 1)) - 1);
    float amax = 0.0f;
    for (long i = 0; i < n; i++) amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
    int e = -1000000;  /* zero: below every exponent, clamped to -128 */
    if (amax > 0.0f) {
        frexpf(amax, &e);
        e -= 1;
    }
    long s = (long)e - (m - 2);
    s = s < -128 ? -128 : s > 127 ? 127 : s;
    if (nearbyint(ldexp((double)amax, (int)-s)) > qmax) s = s + 1 > 127 ? 127 : s + 1;
    for (long i = 0; i < n; i++) {
        double r = nearbyint(ldexp((double)x[i], (int)-s));
        q[i] = (int8_t)(r > qmax ? qmax : r < -qmax ? -qmax : r);
    }
    *exponent = (int8_t)s;
}

/* One token's row of one tensor (k or v) at `slot`, for the per-token kinds (float, int8, bfp). */
static void kv_store_token(const ember_kv_layout* L, void* data, float* scales, int64_t slot, const float* row) {
    const long Hkv = L->num_kv_heads, Dh = L->head_dim, KV = Hkv * Dh;
    if (L->kind == EMBER_KV_F32 || L->kind == EMBER_KV_BF16) {
        store_row_plain(data, slot * KV, row, KV, L->kind == EMBER_KV_BF16);
        return;
    }
    if (kv_bfp(L->kind)) {  /* groups of G = 32 or 64 channels; bfp4 codes as nibbles, channel 2i low */
        const int m = L->kind == EMBER_KV_BFP4 ? 4 : 8;
        const long G = L->bfp_group;
        int8_t q[64];
        int8_t* exps = (int8_t*)scales + slot * (KV / G);
        for (long g = 0; g < KV / G; g++) {
            bfp_quantize_group(row + g * G, G, m, q, exps + g);
            if (m == 8) {
                memcpy((int8_t*)data + slot * KV + g * G, q, G);
            } else {
                uint8_t* out = (uint8_t*)data + (slot * KV + g * G) / 2;
                for (long i = 0; i < G / 2; i++) out[i] = (uint8_t)((q[2 * i] & 15) | ((q[2 * i + 1] & 15) << 4));
            }
        }
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

/* KIVI's scales and minimums: element i of an fp32 or (f16) fp16 array. */
static inline float kivi_stat(const void* p, int64_t i, int f16) {
    return f16 ? _cvtsh_ss(((const uint16_t*)p)[i]) : ((const float*)p)[i];
}
static inline void kivi_put_stat(void* p, int64_t i, float x, int f16) {
    if (f16) ((uint16_t*)p)[i] = _cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT);
    else ((float*)p)[i] = x;
}
static inline __m256 kivi_stat8(const void* p, int64_t i, int f16) {
    return f16 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)((const uint16_t*)p + i)))
               : _mm256_loadu_ps((const float*)p + i);
}

/* KIVI: asymmetric codes[0..n-1] of the n values x[0], x[st], ... as kivi.py's `quantize`:
 * scale = (max - min) / (2^bits - 1), code = round((x - min) / scale) ties to even, clamped;
 * with fp16 statistics (f16) the scale and minimum are rounded to fp16 (nearest even) first
 * and the codes computed from the rounded ones. Stored at element i of scale_out, min_out. */
static void kivi_quantize(const float* x, long st, long n, int bits, uint8_t* codes, void* scale_out,
                          void* min_out, int64_t i_out, int f16) {
    const float qmax = (float)((1 << bits) - 1);
    float mn = x[0], mx = x[0];
    for (long j = 1; j < n; j++) {
        float a = x[j * st];
        mn = a < mn ? a : mn;
        mx = a > mx ? a : mx;
    }
    float s = (mx - mn) / qmax;
    if (f16) {
        s = _cvtsh_ss(_cvtss_sh(s, _MM_FROUND_TO_NEAREST_INT));
        mn = _cvtsh_ss(_cvtss_sh(mn, _MM_FROUND_TO_NEAREST_INT));
    }
    const float safe = s > 0.0f ? s : 1.0f;
    for (long j = 0; j < n; j++) {
        float r = nearbyintf((x[j * st] - mn) / safe);
        codes[j] = (uint8_t)(r > qmax ? qmax : r < 0.0f ? 0.0f : r);
    }
    kivi_put_stat(scale_out, i_out, s, f16);
    kivi_put_stat(min_out, i_out, mn, f16);
}

/* KIVI: rows rows[0..n-1] (stride ld floats) at consecutive slots within ONE block. Values are
 * quantized per token now; keys go to k_res; a run that reaches the block's last slot then
 * quantizes the block's keys per channel from k_res. Any run leaves the block a residual one
 * unless it ends on the last slot (as the codec's write). */
static void kv_store_kivi_run(const ember_kv_layout* L, const ember_kv_layer* C, const int64_t* slots,
                              const float* k_rows, const float* v_rows, long ld, long n) {
    const long Hkv = L->num_kv_heads, Dh = L->head_dim, KV = Hkv * Dh, bs = L->block_size;
    const int bits = L->kind == EMBER_KV_KIVI4 ? 4 : 2, per = 8 / bits;
    const long rowb = Dh / per;
    const int64_t block = slots[0] / bs;
    const void* res_base;
    const int64_t res_at = kivi_res_at(C, block, bs * KV, &res_base);
    const int64_t res0 = res_at - block * bs * KV;  /* + slot * KV: a row */
    void* res = (void*)res_base;
    if (res_at < 0) return;  /* no residual slot: the caller did not open the block (PagedKVCache.open); store nothing */
    uint8_t codes[1024];  /* head_dim or block_size codes (both checked <= 1024 at load) */
    const long G = L->v_group, groups = Dh / G;
    for (long t = 0; t < n; t++) {
        for (long h = 0; h < Hkv; h++) {
            for (long g = 0; g < groups; g++)
                kivi_quantize(v_rows + t * ld + h * Dh + g * G, 1, G, bits, codes + g * G, C->v_scale, C->v_min,
                              (slots[t] * Hkv + h) * groups + g, (int)L->stats_f16);
            uint8_t* row = (uint8_t*)C->v + (slots[t] * Hkv + h) * rowb;
            for (long b = 0; b < rowb; b++) {
                uint8_t byte = 0;
                for (int i = 0; i < per; i++) byte |= (uint8_t)(codes[b * per + i] << (i * bits));
                row[b] = byte;
            }
        }
        if (L->res_bf16) {
            uint16_t* r = (uint16_t*)res + res0 + slots[t] * KV;
            for (long i = 0; i < KV; i++) r[i] = f32_to_bf16(k_rows[t * ld + i]);
        } else {
            memcpy((float*)res + res0 + slots[t] * KV, k_rows + t * ld, sizeof(float) * KV);
        }
    }
    C->k_full[block] = 0;
    if (slots[n - 1] % bs != bs - 1) return;
    /* the block is full: its keys per (head, channel) over its bs tokens */
    float* keys = (float*)malloc(sizeof(float) * bs * KV);
    for (long i = 0; i < bs * KV; i++)
        keys[i] = L->res_bf16 ? bf16_to_f32(((const uint16_t*)res)[res0 + block * bs * KV + i])
                              : ((const float*)res)[res0 + block * bs * KV + i];
    uint8_t* kcodes = (uint8_t*)C->k + block * bs * Hkv * rowb;
    memset(kcodes, 0, bs * Hkv * rowb);
    for (long h = 0; h < Hkv; h++)
        for (long c = 0; c < Dh; c++) {
            kivi_quantize(keys + h * Dh + c, KV, bs, bits, codes, C->k_scale, C->k_min, block * KV + h * Dh + c,
                          (int)L->stats_f16);
            for (long t = 0; t < bs; t++)
                kcodes[(t * Hkv + h) * rowb + c / per] |= (uint8_t)(codes[t] << (c % per * bits));
        }
    free(keys);
    C->k_full[block] = 1;
}

/* XQuant: one token's K (rotated) and V rows at `slot`, RoPE position p, as XQuantCodec.write:
 * undo RoPE on K, subtract the bias, latent = [K_pre, V] @ to_latent (summed over the input
 * channels in order, 8 outputs a vector: torch's GEMM may sum in another order, so a latent can
 * differ in its last bits and, rarely, a code by one step), then per group of xq_group channels
 * kivi_quantize (asymmetric, ties to even, fp16 statistics rounded first) and KIVI's packing. */
static void kv_store_xquant(const ember_kv_layout* L, const ember_kv_layer* C, int64_t slot, int64_t p,
                            const float* k_row, const float* v_row) {
    const long Dh = L->head_dim, KV = L->num_kv_heads * Dh, W = 2 * KV, half = Dh / 2, G = L->xq_group;
    const int bits = L->kind == EMBER_KV_XQUANT4 ? 4 : 2, per = 8 / bits;
    float kv[XQ_MAX_WIDTH], lat[XQ_MAX_WIDTH];
    uint8_t codes[XQ_MAX_WIDTH];
    const float *c = C->xq_cos + p * Dh, *s = C->xq_sin + p * Dh, *bias = C->xq_bias;
    for (long h = 0; h < KV; h += Dh)  /* RoPE undone: x * cos + rotate_half(x) * -sin, as xquant.rotate */
        for (long i = 0; i < half; i++) {
            const float a = k_row[h + i], b = k_row[h + i + half];
            kv[h + i] = a * c[i] + b * s[i];
            kv[h + i + half] = b * c[i + half] - a * s[i + half];
        }
    for (long i = 0; i < KV; i++) {
        kv[i] -= bias[i];
        kv[KV + i] = v_row[i] - bias[KV + i];
    }
    for (long o = 0; o < W; o += 8) {
        __m256 acc = _mm256_setzero_ps();
        for (long j = 0; j < W; j++)
            acc = _mm256_fmadd_ps(_mm256_set1_ps(kv[j]), _mm256_loadu_ps(C->xq_to_latent + j * W + o), acc);
        _mm256_storeu_ps(lat + o, acc);
    }
    const long groups = W / G, rowb = W / per;
    for (long g = 0; g < groups; g++)
        kivi_quantize(lat + g * G, 1, G, bits, codes + g * G, C->k_scale, C->k_min, slot * groups + g,
                      (int)L->stats_f16);
    uint8_t* row = (uint8_t*)C->k + slot * rowb;
    for (long b = 0; b < rowb; b++) {
        uint8_t byte = 0;
        for (int i = 0; i < per; i++) byte |= (uint8_t)(codes[b * per + i] << (i * bits));
        row[b] = byte;
    }
    C->pos[slot] = (int32_t)p;
}

/* n tokens of one sequence (consecutive slots, in order): their K and V rows, stride ld; pos:
 * their RoPE positions (read by XQuant only, which stores nothing without them). */
static void kv_store_seq(const ember_kv_layout* L, const ember_kv_layer* C, const int64_t* slots, long n,
                         const float* k_rows, const float* v_rows, long ld, const int64_t* pos) {
    if (kv_xquant(L->kind)) {
        for (long t = 0; pos && t < n; t++) kv_store_xquant(L, C, slots[t], pos[t], k_rows + t * ld, v_rows + t * ld);
        return;
    }
    if (kv_per_token_store(L->kind)) {
        for (long t = 0; t < n; t++) {
            kv_store_token(L, C->k, C->k_scale, slots[t], k_rows + t * ld);
            kv_store_token(L, C->v, C->v_scale, slots[t], v_rows + t * ld);
        }
        return;
    }
    for (long t = 0; t < n;) {  /* runs of tokens in one block: one scale decision per run */
        long e = t + 1;
        while (e < n && slots[e] / L->block_size == slots[t] / L->block_size) e++;
        if (kv_kivi(L->kind)) {
            kv_store_kivi_run(L, C, slots + t, k_rows + t * ld, v_rows + t * ld, ld, e - t);
        } else {
            kv_store_fp8_run(L, (uint8_t*)C->k, C->k_scale, slots + t, k_rows + t * ld, ld, e - t);
            kv_store_fp8_run(L, (uint8_t*)C->v, C->v_scale, slots + t, v_rows + t * ld, ld, e - t);
        }
        t = e;
    }
}

/* Where row t's scale sits in k_scale/v_scale (before adding the KV head), from its slot; KIVI
 * (bfp, XQuant) kinds take the slot itself (attend_heads_kivi finds its block, scales and codes from it). */
static inline int64_t kv_scale_base(const ember_kv_layout* L, int64_t slot) {
    if (kv_kivi(L->kind) || kv_bfp(L->kind) || kv_xquant(L->kind)) return slot;
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

/* 8 packed KIVI codes from channel c of a row, widened to fp32: one broadcast load, a shift
 * per lane, a mask. */
/* acc[h] += p(h, t) * scale * x for the nh query heads of a pass, over one 32-channel group of
 * a decoded value row (the quantized codecs' P.V loop). */
static inline __attribute__((always_inline)) void accumulate_value_row(__m256 acc[HEADS_PER_PASS][4], const __m256 x[4],
                                                                       const float* scores, long ld, long t, float scale,
                                                                       int nh) {
    for (int h = 0; h < HEADS_PER_PASS; h++) {
        if (h < nh) {
            __m256 p = _mm256_set1_ps(scores[h * ld + t] * scale);
            for (int i = 0; i < 4; i++) acc[h][i] = _mm256_fmadd_ps(p, x[i], acc[h][i]);
        }
    }
}

static inline __m256 kivi_codes8(const uint8_t* row, long c, int bits) {
    if (bits == 4) {
        uint32_t w;
        memcpy(&w, row + c / 2, 4);
        __m256i x = _mm256_srlv_epi32(_mm256_set1_epi32((int)w), _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28));
        return _mm256_cvtepi32_ps(_mm256_and_si256(x, _mm256_set1_epi32(15)));
    }
    uint16_t w;
    memcpy(&w, row + c / 4, 2);
    __m256i x = _mm256_srlv_epi32(_mm256_set1_epi32((int)w), _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14));
    return _mm256_cvtepi32_ps(_mm256_and_si256(x, _mm256_set1_epi32(3)));
}

/* attend_heads for the KIVI kinds: entry t is at slot soff[t]. A full block's keys are
 * dequantized in registers (code * scale + min per channel, one FMA) before the q.k FMAs; an
 * unfilled block's keys come from k_res, and so do those of a block that a prefill chunk
 * filled after this query's entry (entries from (L / bs) * bs on): each query sees the cache
 * as decoding would have left it (KiviCodec.views). Values, per 32 channels (a value group
 * or part of one): p * scale * code summed per channel, and the minimums' share (sum of p * min)
 * added once per head and 32 channels at the end. */
static inline __attribute__((always_inline)) void attend_heads_kivi(
        const ember_kv_layout* Lk, const ember_kv_layer* C, long kvh, const float* q, long nh, const int64_t* soff,
        long L, float scale, float* scores, long ld, float* out, int bits, int res_bf16, int f16) {
    const long Hkv = Lk->num_kv_heads, Dh = Lk->head_dim, KV = Hkv * Dh, bs = Lk->block_size;
    const long rowb = Dh * bits / 8;
    const uint8_t* kc = (const uint8_t*)C->k + kvh * rowb;
    const uint8_t* vc = (const uint8_t*)C->v + kvh * rowb;
    const long full_end = L / bs * bs;
    for (long t = 0; t < L; t++) {
        const int64_t slot = soff[t], block = slot / bs;
        __m256 a[HEADS_PER_PASS];
        for (int h = 0; h < HEADS_PER_PASS; h++) a[h] = _mm256_setzero_ps();
        const void* res;
        const int64_t res_at = kivi_res_at(C, block, bs * KV, &res);
        if (C->k_full[block] && (t < full_end || res_at < 0)) {  /* no slot: the pass that filled it ended */
            const uint8_t* row = kc + slot * Hkv * rowb;
            const int64_t ks = block * KV + kvh * Dh;  /* this head's key scales and minimums */
            for (long c = 0; c < Dh; c += 8) {
                __m256 x = _mm256_fmadd_ps(kivi_codes8(row, c, bits), kivi_stat8(C->k_scale, ks + c, f16),
                                           kivi_stat8(C->k_min, ks + c, f16));
                for (int h = 0; h < HEADS_PER_PASS; h++)
                    if (h < nh) a[h] = _mm256_fmadd_ps(_mm256_loadu_ps(q + h * Dh + c), x, a[h]);
            }
        } else {
            const int64_t at = res_at + (slot % bs) * KV + kvh * Dh;
            for (long c = 0; c < Dh; c += 8) {
                __m256 x = res_bf16 ? widen_bf16x8((const uint16_t*)res + at + c)
                                    : _mm256_loadu_ps((const float*)res + at + c);
                for (int h = 0; h < HEADS_PER_PASS; h++)
                    if (h < nh) a[h] = _mm256_fmadd_ps(_mm256_loadu_ps(q + h * Dh + c), x, a[h]);
            }
        }
        for (int h = 0; h < nh; h++) scores[h * ld + t] = hsum_ps(a[h]) * scale;
    }
    float inv[HEADS_PER_PASS];
    for (int h = 0; h < nh; h++) inv[h] = softmax_in_place(scores + h * ld, L);
    const long G = Lk->v_group, groups = Dh / G;  /* one value scale and minimum per G channels */
    for (long c = 0; c < Dh; c += 32) {  /* one pass per 32 channels */
        __m256 acc[HEADS_PER_PASS][4];
        float msum[HEADS_PER_PASS] = {0.0f, 0.0f, 0.0f};
        for (int h = 0; h < HEADS_PER_PASS; h++)
            for (int i = 0; i < 4; i++) acc[h][i] = _mm256_setzero_ps();
        for (long t = 0; t < L; t++) {
            const int64_t slot = soff[t], g = (slot * Hkv + kvh) * groups + c / G;
            const uint8_t* row = vc + slot * Hkv * rowb;
            const float sv = kivi_stat(C->v_scale, g, f16), mv = kivi_stat(C->v_min, g, f16);
            for (int h = 0; h < nh; h++) msum[h] += scores[h * ld + t] * mv;
            __m256 x[4];
            for (int i = 0; i < 4; i++) x[i] = kivi_codes8(row, c + 8 * i, bits);
            accumulate_value_row(acc, x, scores, ld, t, sv, nh);
        }
        for (int h = 0; h < nh; h++)
            for (int i = 0; i < 4; i++)
                _mm256_storeu_ps(out + h * Dh + c + 8 * i, _mm256_mul_ps(_mm256_add_ps(acc[h][i], _mm256_set1_ps(msum[h])),
                                                                         _mm256_set1_ps(inv[h])));
    }
}

/* 8 block-floating-point codes from channel c of a row, widened to fp32: bfp8 int8 codes, or
 * bfp4 two's-complement nibbles (channel 2i in the low nibble), sign-extended. */
static inline __m256 bfp_codes8(const void* row, long c, int bits) {
    if (bits == 8)
        return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)((const int8_t*)row + c))));
    uint32_t w;
    memcpy(&w, (const uint8_t*)row + c / 2, 4);
    __m256i x = _mm256_srlv_epi32(_mm256_set1_epi32((int)w), _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28));
    x = _mm256_sub_epi32(_mm256_xor_si256(_mm256_and_si256(x, _mm256_set1_epi32(15)), _mm256_set1_epi32(8)),
                         _mm256_set1_epi32(8));
    return _mm256_cvtepi32_ps(x);
}

/* attend_heads for the bfp kinds: entry t is at slot soff[t]; each G-channel group (G = 32 or
 * 64, a constant at each call site) of its K and V rows is codes * 2^exponent (k_scale/v_scale
 * hold the int8 exponents, one per token, KV head and group). Keys: the group's q.codes
 * partial sums scaled by 2^e before they join the total; values, 32 channels at a time (a
 * group or half of one): p * 2^e per group and token. */
static inline __attribute__((always_inline)) void attend_heads_bfp(
        const ember_kv_layout* Lk, const ember_kv_layer* C, long kvh, const float* q, long nh, const int64_t* soff,
        long L, float scale, float* scores, long ld, float* out, int bits, long G) {
    const long Hkv = Lk->num_kv_heads, Dh = Lk->head_dim, KV = Hkv * Dh, groups = Dh / G;
    const int8_t* ke = (const int8_t*)C->k_scale;
    const int8_t* ve = (const int8_t*)C->v_scale;
    for (long t = 0; t < L; t++) {
        const int64_t slot = soff[t], at = slot * KV + kvh * Dh, e0 = (slot * Hkv + kvh) * groups;
        const void* row = bits == 8 ? (const void*)((const int8_t*)C->k + at) : (const void*)((const uint8_t*)C->k + at / 2);
        __m256 a[HEADS_PER_PASS];
        for (int h = 0; h < HEADS_PER_PASS; h++) a[h] = _mm256_setzero_ps();
        for (long g = 0; g < groups; g++) {
            __m256 part[HEADS_PER_PASS];
            for (int h = 0; h < HEADS_PER_PASS; h++) part[h] = _mm256_setzero_ps();
            for (long c = g * G; c < g * G + G; c += 8) {
                __m256 x = bfp_codes8(row, c, bits);
                for (int h = 0; h < HEADS_PER_PASS; h++)
                    if (h < nh) part[h] = _mm256_fmadd_ps(_mm256_loadu_ps(q + h * Dh + c), x, part[h]);
            }
            __m256 sg = _mm256_set1_ps(ldexpf(1.0f, ke[e0 + g]));
            for (int h = 0; h < HEADS_PER_PASS; h++)
                if (h < nh) a[h] = _mm256_fmadd_ps(part[h], sg, a[h]);
        }
        for (int h = 0; h < nh; h++) scores[h * ld + t] = hsum_ps(a[h]) * scale;
    }
    float inv[HEADS_PER_PASS];
    for (int h = 0; h < nh; h++) inv[h] = softmax_in_place(scores + h * ld, L);
    for (long c = 0; c < Dh; c += 32) {
        __m256 acc[HEADS_PER_PASS][4];
        for (int h = 0; h < HEADS_PER_PASS; h++)
            for (int i = 0; i < 4; i++) acc[h][i] = _mm256_setzero_ps();
        for (long t = 0; t < L; t++) {
            const int64_t slot = soff[t], at = slot * KV + kvh * Dh;
            const void* row = bits == 8 ? (const void*)((const int8_t*)C->v + at) : (const void*)((const uint8_t*)C->v + at / 2);
            const float sv = ldexpf(1.0f, ve[(slot * Hkv + kvh) * groups + c / G]);
            __m256 x[4];
            for (int i = 0; i < 4; i++) x[i] = bfp_codes8(row, c + 8 * i, bits);
            accumulate_value_row(acc, x, scores, ld, t, sv, nh);
        }
        for (int h = 0; h < nh; h++)
            for (int i = 0; i < 4; i++)
                _mm256_storeu_ps(out + h * Dh + c + 8 * i, _mm256_mul_ps(acc[h][i], _mm256_set1_ps(inv[h])));
    }
}

/* XQuant: the latent of the entry at `slot` dequantized into lat[0..W-1] (code * scale + min). */
static inline __attribute__((always_inline)) void xq_dequantize(const ember_kv_layout* Lk, const ember_kv_layer* C,
                                                               int64_t slot, float* lat, int bits, int f16) {
    const long W = 2 * Lk->num_kv_heads * Lk->head_dim, G = Lk->xq_group, groups = W / G;
    const uint8_t* row = (const uint8_t*)C->k + slot * (W * bits / 8);
    for (long g = 0; g < groups; g++) {
        const __m256 sc = _mm256_set1_ps(kivi_stat(C->k_scale, slot * groups + g, f16));
        const __m256 mn = _mm256_set1_ps(kivi_stat(C->k_min, slot * groups + g, f16));
        for (long c = g * G; c < g * G + G; c += 8)
            _mm256_storeu_ps(lat + c, _mm256_fmadd_ps(kivi_codes8(row, c, bits), sc, mn));
    }
}

/* out[i][0..Dh-1] = lat[i] @ F[:, col .. col + Dh) for n <= XQ_TILE latents of W channels (F: [W, W]
 * row-major), summed over the channels in order: a tile of XQ_TILE rows x 2 vectors of columns in
 * accumulators, so each load of F serves the whole tile (F's columns for one head are read from
 * L2 once per tile). This is most of XQuant's attention: W * Dh FMAs per entry and KV head. */
#if defined(__AVX512F__)  /* 16 zmm accumulators + 2 loads + a broadcast in AVX-512's 32 registers */
#define XQ_TILE 8
#define XQ_LANES 16
typedef __m512 xq_vec;
#define xq_zero _mm512_setzero_ps
#define xq_load _mm512_loadu_ps
#define xq_set1 _mm512_set1_ps
#define xq_fmadd _mm512_fmadd_ps
#define xq_store _mm512_storeu_ps
#else  /* 8 ymm accumulators: AVX2 has 16 registers */
#define XQ_TILE 4
#define XQ_LANES 8
typedef __m256 xq_vec;
#define xq_zero _mm256_setzero_ps
#define xq_load _mm256_loadu_ps
#define xq_set1 _mm256_set1_ps
#define xq_fmadd _mm256_fmadd_ps
#define xq_store _mm256_storeu_ps
#endif
static inline void xq_project(const float* lat, long n, long W, const float* F, long col, long Dh, float* out) {
    for (long d = 0; d < Dh; d += 2 * XQ_LANES) {
        xq_vec acc[XQ_TILE][2];
        for (int i = 0; i < XQ_TILE; i++) acc[i][0] = acc[i][1] = xq_zero();
        for (long c = 0; c < W; c++) {
            const float* f = F + c * W + col + d;
            const xq_vec f0 = xq_load(f), f1 = xq_load(f + XQ_LANES);
            for (int i = 0; i < XQ_TILE; i++) {
                if (i < n) {
                    const xq_vec x = xq_set1(lat[i * W + c]);
                    acc[i][0] = xq_fmadd(x, f0, acc[i][0]);
                    acc[i][1] = xq_fmadd(x, f1, acc[i][1]);
                }
            }
        }
        for (int i = 0; i < XQ_TILE && i < n; i++) {
            xq_store(out + i * Dh + d, acc[i][0]);
            xq_store(out + i * Dh + d + XQ_LANES, acc[i][1]);
        }
    }
}

/* attend_heads for the XQuant kinds: nh query heads (any number: the whole GQA group, so each
 * entry's K is computed once for all of them) of KV head kvh, entry t at slot soff[t]. Keys:
 * per tile of XQ_TILE entries, the latents dequantized, K_pre = latent @ from_latent[:, this
 * head's K columns] + bias, RoPE at the entry's stored position, then q . K. Values never
 * materialize: softmax weights sum to 1 after normalising, so sum_t p_t (latent_t @ F_v + b_v)
 * = (sum_t p_t latent_t) @ F_v + b_v; each head accumulates its weighted latent and projects it
 * once. scores: nh rows of ld floats. */
static inline __attribute__((always_inline)) void attend_heads_xquant(
        const ember_kv_layout* Lk, const ember_kv_layer* C, long kvh, const float* q, long nh, const int64_t* soff,
        long L, float scale, float* scores, long ld, float* out, int bits, int f16) {
    const long Dh = Lk->head_dim, KV = Lk->num_kv_heads * Dh, W = 2 * KV, half = Dh / 2;
    const float* F = C->xq_from_latent;
    const float *bk = C->xq_bias + kvh * Dh, *bv = C->xq_bias + KV + kvh * Dh;
    float* lat = (float*)malloc(sizeof(float) * (XQ_TILE * W + XQ_TILE * Dh + nh * W));
    float* k = lat + XQ_TILE * W;     /* [XQ_TILE, Dh] the tile's keys */
    float* acc = k + XQ_TILE * Dh;    /* [nh, W] each head's probability-weighted latent sum */
    for (long t0 = 0; t0 < L; t0 += XQ_TILE) {
        const long n = L - t0 < XQ_TILE ? L - t0 : XQ_TILE;
        for (long i = 0; i < n; i++) xq_dequantize(Lk, C, soff[t0 + i], lat + i * W, bits, f16);
        xq_project(lat, n, W, F, kvh * Dh, Dh, k);
        for (long i = 0; i < n; i++) {
            float* x = k + i * Dh;
            const int64_t p = C->pos[soff[t0 + i]];
            const float *c = C->xq_cos + p * Dh, *s = C->xq_sin + p * Dh;
            for (long j = 0; j < Dh; j++) x[j] += bk[j];
            for (long j = 0; j < half; j++) {  /* RoPE, as the model applies it */
                const float a = x[j], b = x[j + half];
                x[j] = a * c[j] - b * s[j];
                x[j + half] = b * c[j + half] + a * s[j + half];
            }
            for (long h = 0; h < nh; h++) {
                __m256 a = _mm256_setzero_ps();
                for (long j = 0; j < Dh; j += 8)
                    a = _mm256_fmadd_ps(_mm256_loadu_ps(q + h * Dh + j), _mm256_loadu_ps(x + j), a);
                scores[h * ld + t0 + i] = hsum_ps(a) * scale;
            }
        }
    }
    for (long h = 0; h < nh; h++) {
        const float inv = softmax_in_place(scores + h * ld, L);
        for (long j = 0; j < W; j++) acc[h * W + j] = 0.0f;
        scores[h * ld + L] = inv;  /* kept beside the row (ld >= L + 1) until the projection */
    }
    for (long t = 0; t < L; t++) {
        xq_dequantize(Lk, C, soff[t], lat, bits, f16);
        for (long h = 0; h < nh; h++) {
            const __m256 p = _mm256_set1_ps(scores[h * ld + t]);
            float* a = acc + h * W;
            for (long j = 0; j < W; j += 8)
                _mm256_storeu_ps(a + j, _mm256_fmadd_ps(p, _mm256_loadu_ps(lat + j), _mm256_loadu_ps(a + j)));
        }
    }
    for (long h0 = 0; h0 < nh; h0 += XQ_TILE) {  /* the heads' V = weighted latent @ F_v, a tile at a time */
        const long n = nh - h0 < XQ_TILE ? nh - h0 : XQ_TILE;
        xq_project(acc + h0 * W, n, W, F, KV + kvh * Dh, Dh, k);
        for (long i = 0; i < n; i++) {
            const float inv = scores[(h0 + i) * ld + L];
            for (long j = 0; j < Dh; j++) out[(h0 + i) * Dh + j] = k[i * Dh + j] * inv + bv[j];
        }
    }
    free(lat);
}

/* attend_heads on one layer's cache, dispatched once per call on the layout's kind. */
static void attend_paged(const ember_kv_layout* Lk, const ember_kv_layer* C, long kvh, const float* q, long nh,
                         const int64_t* off, const int64_t* soff, long L, float scale, float* scores, long ld,
                         float* out) {
    const long Dh = Lk->head_dim, at = kvh * Dh;
    const float* ks = C->k_scale ? C->k_scale + kvh : NULL;
    const float* vs = C->v_scale ? C->v_scale + kvh : NULL;
    if (kv_xquant(Lk->kind)) {  /* nh: the whole group (the caller's choice, see attend_heads_xquant) */
        const int bits = Lk->kind == EMBER_KV_XQUANT4 ? 4 : 2, f16 = Lk->stats_f16 != 0;
        if (bits == 4 && !f16) attend_heads_xquant(Lk, C, kvh, q, nh, soff, L, scale, scores, ld, out, 4, 0);
        else if (bits == 4) attend_heads_xquant(Lk, C, kvh, q, nh, soff, L, scale, scores, ld, out, 4, 1);
        else if (!f16) attend_heads_xquant(Lk, C, kvh, q, nh, soff, L, scale, scores, ld, out, 2, 0);
        else attend_heads_xquant(Lk, C, kvh, q, nh, soff, L, scale, scores, ld, out, 2, 1);
        return;
    }
    if (kv_kivi(Lk->kind)) {  /* one inlined copy per bit width, residual dtype and statistics dtype */
        switch ((Lk->kind == EMBER_KV_KIVI4) * 4 + (Lk->res_bf16 != 0) * 2 + (Lk->stats_f16 != 0)) {
#define EMBER_KIVI_CASE(i, bits, rb, f16) \
            case i: attend_heads_kivi(Lk, C, kvh, q, nh, soff, L, scale, scores, ld, out, bits, rb, f16); break;
            EMBER_KIVI_CASE(0, 2, 0, 0) EMBER_KIVI_CASE(1, 2, 0, 1) EMBER_KIVI_CASE(2, 2, 1, 0) EMBER_KIVI_CASE(3, 2, 1, 1)
            EMBER_KIVI_CASE(4, 4, 0, 0) EMBER_KIVI_CASE(5, 4, 0, 1) EMBER_KIVI_CASE(6, 4, 1, 0) EMBER_KIVI_CASE(7, 4, 1, 1)
#undef EMBER_KIVI_CASE
        }
        return;
    }
    if (kv_bfp(Lk->kind)) {  /* one inlined copy per mantissa width and group size */
        const int g64 = Lk->bfp_group == 64;
        if (Lk->kind == EMBER_KV_BFP4) {
            if (g64) attend_heads_bfp(Lk, C, kvh, q, nh, soff, L, scale, scores, ld, out, 4, 64);
            else attend_heads_bfp(Lk, C, kvh, q, nh, soff, L, scale, scores, ld, out, 4, 32);
        } else {
            if (g64) attend_heads_bfp(Lk, C, kvh, q, nh, soff, L, scale, scores, ld, out, 8, 64);
            else attend_heads_bfp(Lk, C, kvh, q, nh, soff, L, scale, scores, ld, out, 8, 32);
        }
        return;
    }
    switch (Lk->kind) {
#define EMBER_KV_ATTEND(id, name) \
        case EMBER_KV_##id: { \
            if (kv_kivi(EMBER_KV_##id) || kv_bfp(EMBER_KV_##id) || kv_xquant(EMBER_KV_##id)) break; \
            const int es = EMBER_KV_##id == EMBER_KV_F32 ? 4 : EMBER_KV_##id == EMBER_KV_BF16 ? 2 : 1; \
            attend_heads(q, nh, (const char*)C->k + at * es, (const char*)C->v + at * es, off, L, Dh, scale, \
                         scores, ld, out, EMBER_KV_##id, Lk->fp8_table, ks, vs, soff); \
            break; }
        EMBER_KV_KINDS(EMBER_KV_ATTEND)
#undef EMBER_KV_ATTEND
    }
}

#endif
