/* One forward step of a Llama-family decoder in a single call: M new tokens of S sequences
 * (one each in a decode step; whole prefill chunks too, mixed with decodes).
 *
 * Why: the PyTorch path runs ~40 small ops per layer from Python, which at batch 1 costs more
 * than reading the weights. Here the whole stack (embedding, 30 x [RMSNorm, QKV, RoPE, KV write,
 * paged attention, O + residual, RMSNorm, gate/up, SiLU * up, down + residual], final norm) runs
 * inside one OpenMP parallel region: each step's work is split over the team with `omp for`,
 * whose implicit barriers order the phases, so threads are forked once per token.
 * Projections use the kernels of linear.h on each layer's own storage (fp32, bf16, int8, int4).
 * Attention reads the paged cache [blocks, block_size, kv_heads, head_dim] (fp32 or bf16)
 * through each sequence's block table; softmax in fp32 with exp256_ps. Activations and sums
 * are fp32 whatever the model's dtype: a bf16 model's weights, embedding and KV cache are
 * read as bf16 and widened in registers (exact), and only K/V are rounded, when written. Every token's K and V are written
 * before any attention runs, so a prefill chunk's token at position p simply attends to its
 * sequence's positions 0..p: causal attention within the chunk, with no mask.
 * Reference: the model's own forward (ember/models/llama.py) with the `torch` attention backend;
 * tests/models/test_native_decode.py holds this file to it. Built by kernels/native.py.
 */
#include <omp.h>

#include "linear.h"

typedef struct {
    ember_weight qkv, o, gate_up, down;
    const float* input_norm;
    const float* post_norm;
    void* k_cache;  /* float, or bf16 where kv_bf16 */
    void* v_cache;
} ember_layer;

typedef struct {
    int64_t num_layers, hidden, num_heads, num_kv_heads, head_dim, intermediate, block_size;
    double eps, scale;
    const void* embed;       /* [vocab, hidden], float or bf16 where embed_bf16 */
    const float* final_norm; /* [hidden] */
    const float* cos;        /* [max_position, head_dim] */
    const float* sin;
    const ember_layer* layers;
    double* phase_seconds;   /* NULL, or [3] += seconds in projections, attention, the rest */
    int64_t embed_bf16, kv_bf16;
} ember_model;

/* Phase timers for benchmarks/offline_throughput.py's step breakdown: the master thread reads
 * the clock after each phase's closing barrier, so a phase's share includes its wait. */
#define PHASE(i) if (md->phase_seconds) { _Pragma("omp master") { double now = omp_get_wtime(); \
        md->phase_seconds[i] += now - last; last = now; } }
enum { LINEAR = 0, ATTENTION = 1, OTHER = 2 };

static void rms_norm(const float* x, const float* w, long D, double eps, float* out) {
    __m256 acc = _mm256_setzero_ps();
    for (long i = 0; i < D; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        acc = _mm256_fmadd_ps(v, v, acc);
    }
    float inv = 1.0f / sqrtf(hsum_ps(acc) / (float)D + (float)eps);
    for (long i = 0; i < D; i++) out[i] = w[i] * (x[i] * inv);
}

static void rope(float* x, long heads, long Dh, const float* c, const float* s) {
    long half = Dh / 2;
    for (long h = 0; h < heads; h++, x += Dh) {
        for (long i = 0; i < half; i++) {
            float a = x[i], b = x[i + half];
            x[i] = a * c[i] - b * s[i];
            x[i + half] = b * c[i + half] + a * s[i + half];
        }
    }
}

#define HEADS_PER_PASS 3  /* query heads read against each K/V row at once (registers allow 3) */

/* nh (<= HEADS_PER_PASS) query heads that share one KV head (GQA), over L cached tokens; token
 * t's K (V) row is at kc (vc) + off[t], where off already holds the block-table lookup for the
 * whole step. Each K and V row is read once for all nh heads: for a prefill chunk, whose
 * tokens' contexts stream from L2, that traffic, not the FMAs, is what bounds attention.
 * q, out: nh rows of Dh, contiguous. scores: nh rows of `ld` >= L + 1 floats. Dh: a multiple of 32. */
static inline __m256 load_kv8(const void* base, int64_t at, int bf16) {
    return bf16 ? widen_bf16x8((const uint16_t*)base + at) : _mm256_loadu_ps((const float*)base + at);
}

/* always_inline with a constant `bf16`: each call site gets its own loop without the branch. */
static inline __attribute__((always_inline)) void attend_heads(
        const float* q, long nh, const void* kc, const void* vc, const int64_t* off, long L, long Dh, float scale,
        float* scores, long ld, float* out, int bf16) {
    /* q . k for two tokens at a time: 2 x nh independent chains, reduced together */
    for (long t = 0; t < L; t += 2) {
        const int64_t k0 = off[t], k1 = off[t + 1 < L ? t + 1 : t];
        __m256 a[HEADS_PER_PASS][2];
        for (int h = 0; h < HEADS_PER_PASS; h++) a[h][0] = a[h][1] = _mm256_setzero_ps();
        for (long c = 0; c < Dh; c += 8) {
            __m256 x0 = load_kv8(kc, k0 + c, bf16), x1 = load_kv8(kc, k1 + c, bf16);
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
        for (int h = 0; h < nh; h++) {
            scores[h * ld + t] = v[2 * h];
            scores[h * ld + t + 1] = v[2 * h + 1];  /* past L when L is odd: within ld, unused */
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
            for (int h = 0; h < HEADS_PER_PASS; h++) {
                if (h < nh) {
                    __m256 p = _mm256_set1_ps(scores[h * ld + t]);
                    for (int i = 0; i < 4; i++) acc[h][i] = _mm256_fmadd_ps(p, load_kv8(vc, v + 8 * i, bf16), acc[h][i]);
                }
            }
        }
        for (int h = 0; h < nh; h++)
            for (int i = 0; i < 4; i++)
                _mm256_storeu_ps(out + h * Dh + c + 8 * i, _mm256_mul_ps(acc[h][i], _mm256_set1_ps(inv[h])));
    }
}

static void write_kv(void* cache, int64_t at, const float* row, long n, int bf16) {
    if (!bf16) {
        memcpy((float*)cache + at, row, sizeof(float) * n);
        return;
    }
    uint16_t* out = (uint16_t*)cache + at;
    for (long i = 0; i < n; i++) out[i] = f32_to_bf16(row[i]);
}

static void silu_mul(const float* gu, long I, float* out) {
    const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
    for (long i = 0; i < I; i += 8) {
        __m256 g = _mm256_loadu_ps(gu + i), u = _mm256_loadu_ps(gu + I + i);
        __m256 sig = _mm256_div_ps(g, _mm256_add_ps(one, exp256_ps(_mm256_sub_ps(zero, g))));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(sig, u));
    }
}

/* out: final hidden states [M, hidden]. Token m belongs to sequence seq[m] (block table row
 * seq[m], ctx_lens[seq[m]] tokens once this step's are written) and sits at position pos[m].
 * work: M * (2 * hidden + qkv + q + 3 * intermediate) floats. */
void ember_llama_decode(const ember_model* md, long M, const int64_t* ids, const int64_t* pos,
                        const int64_t* slots, const int64_t* seq, long S, const int64_t* tables, long table_width,
                        const int64_t* ctx_lens, float* out, float* work, int nthreads) {
    const long D = md->hidden, H = md->num_heads, Hkv = md->num_kv_heads, Dh = md->head_dim;
    const long I = md->intermediate, bs = md->block_size, Q = H * Dh, KV = Hkv * Dh, QKV = Q + 2 * KV;
    float *x = work, *h = x + M * D, *qkv = h + M * D, *att = qkv + M * QKV, *gu = att + M * Q, *act = gu + 2 * M * I;
    long max_len = 1;
    for (long s = 0; s < S; s++) max_len = ctx_lens[s] > max_len ? ctx_lens[s] : max_len;
    const float scale = (float)md->scale;
    /* Cache offset of every context token of every sequence, the same for all layers. */
    int64_t* offs = (int64_t*)malloc(sizeof(int64_t) * S * max_len);

    double last = omp_get_wtime();
    #pragma omp parallel num_threads(nthreads)
    {
        const long ld = max_len + 8, group = H / Hkv, passes = (group + HEADS_PER_PASS - 1) / HEADS_PER_PASS;
        float* scores = (float*)malloc(sizeof(float) * HEADS_PER_PASS * ld);
        #pragma omp for schedule(static)
        for (long s = 0; s < S; s++) {
            const int64_t* table = tables + s * table_width;
            for (long t = 0; t < ctx_lens[s]; t++) offs[s * max_len + t] = (table[t / bs] * bs + t % bs) * KV;
        }
        #pragma omp for schedule(static)
        for (long m = 0; m < M; m++) {
            if (md->embed_bf16)
                for (long i = 0; i < D; i++) x[m * D + i] = bf16_to_f32(((const uint16_t*)md->embed)[ids[m] * D + i]);
            else
                memcpy(x + m * D, (const float*)md->embed + ids[m] * D, sizeof(float) * D);
        }
        PHASE(OTHER);
        for (long l = 0; l < md->num_layers; l++) {
            const ember_layer* L = md->layers + l;
            #pragma omp for schedule(static)
            for (long m = 0; m < M; m++) rms_norm(x + m * D, L->input_norm, D, md->eps, h + m * D);
            PHASE(OTHER);
            linear_omp(&L->qkv, h, M, qkv, QKV, 0);
            PHASE(LINEAR);
            #pragma omp for schedule(static)
            for (long m = 0; m < M; m++) {
                float* row = qkv + m * QKV;
                rope(row, H + Hkv, Dh, md->cos + pos[m] * Dh, md->sin + pos[m] * Dh);
                write_kv(L->k_cache, slots[m] * KV, row + Q, KV, md->kv_bf16);
                write_kv(L->v_cache, slots[m] * KV, row + Q + KV, KV, md->kv_bf16);
            }
            PHASE(ATTENTION);
            /* dynamic: a prefill chunk's tokens have contexts of every length up to the chunk's end */
            /* KV head outermost: a long chunk's K/V rows of one KV head fit in L2, all heads' don't */
            #pragma omp for schedule(dynamic, 2)
            for (long item = 0; item < M * Hkv * passes; item++) {
                long kvh = item / (M * passes), m = item / passes % M, h0 = kvh * group + item % passes * HEADS_PER_PASS;
                long nh = kvh * group + group - h0 < HEADS_PER_PASS ? kvh * group + group - h0 : HEADS_PER_PASS;
                const float* q = qkv + m * QKV + h0 * Dh;
                float* o = att + m * Q + h0 * Dh;
                const int64_t* off = offs + seq[m] * max_len;
                if (md->kv_bf16)
                    attend_heads(q, nh, (const uint16_t*)L->k_cache + kvh * Dh, (const uint16_t*)L->v_cache + kvh * Dh,
                                 off, pos[m] + 1, Dh, scale, scores, ld, o, 1);
                else
                    attend_heads(q, nh, (const float*)L->k_cache + kvh * Dh, (const float*)L->v_cache + kvh * Dh,
                                 off, pos[m] + 1, Dh, scale, scores, ld, o, 0);
            }
            PHASE(ATTENTION);
            linear_omp(&L->o, att, M, x, D, 1);
            PHASE(LINEAR);
            #pragma omp for schedule(static)
            for (long m = 0; m < M; m++) rms_norm(x + m * D, L->post_norm, D, md->eps, h + m * D);
            PHASE(OTHER);
            linear_omp(&L->gate_up, h, M, gu, 2 * I, 0);
            PHASE(LINEAR);
            #pragma omp for schedule(static)
            for (long m = 0; m < M; m++) silu_mul(gu + m * 2 * I, I, act + m * I);
            PHASE(OTHER);
            linear_omp(&L->down, act, M, x, D, 1);
            PHASE(LINEAR);
        }
        #pragma omp for schedule(static)
        for (long m = 0; m < M; m++) rms_norm(x + m * D, md->final_norm, D, md->eps, out + m * D);
        PHASE(OTHER);
        free(scores);
    }
    free(offs);
}
