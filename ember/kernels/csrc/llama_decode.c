/* One forward step of a Llama-family decoder in a single call: M new tokens of S sequences
 * (one each in a decode step; whole prefill chunks too, mixed with decodes).
 *
 * Why: the PyTorch path runs ~40 small ops per layer from Python, which at batch 1 costs more
 * than reading the weights. Here the whole stack (embedding, 30 x [RMSNorm, QKV, RoPE, KV write,
 * paged attention, O + residual, RMSNorm, gate/up, SiLU * up, down + residual], final norm) runs
 * inside one OpenMP parallel region: each step's work is split over the team with `omp for`,
 * whose implicit barriers order the phases, so threads are forked once per token.
 * Projections use the kernels of linear.h on each layer's own storage (weight.h's kinds).
 * Attention reads the paged cache (each codec's layout, attention_paged.h; XQuant's K and V are
 * computed again from its latents there) through each sequence's block table; softmax in fp32
 * with exp256_ps. Activations and sums are fp32 whatever the model's dtype: a bf16 model's weights, embedding and KV cache are
 * read as bf16 and widened in registers (exact), and only K/V are rounded, when written. Every token's K and V are written
 * before any attention runs, so a prefill chunk's token at position p simply attends to its
 * sequence's positions 0..p: causal attention within the chunk, with no mask.
 * Reference: the model's own forward (ember/models/llama.py) with the `torch` attention backend;
 * tests/models/test_native_decode.py holds this file to it. Built by kernels/native.py.
 */
#include <omp.h>
#include <stdio.h>

#include "attention_paged.h"
#include "linear.h"

typedef struct {
    ember_weight qkv, o, gate_up, down;
    const float* input_norm;
    const float* post_norm;
    ember_kv_layer kv;  /* this layer's cache tensors, laid out as model.kv says */
} ember_layer;

typedef struct {
    int64_t num_layers, hidden, num_heads, num_kv_heads, head_dim, intermediate;
    double eps, scale;
    const void* embed;       /* [vocab, hidden], float or bf16 where embed_bf16 */
    const float* final_norm; /* [hidden] */
    const float* cos;        /* [max_position, head_dim] */
    const float* sin;
    const ember_layer* layers;
    double* phase_seconds;   /* NULL, or [3] += seconds in projections, attention, the rest */
    int64_t embed_bf16;
    ember_kv_layout kv;
} ember_model;

/* What Python checks when it loads this library: struct sizes and the kinds' names in order. */
const char* ember_llama_decode_abi(void) {
    static char buf[512];
    snprintf(buf, sizeof buf, "ember_model=%zu ember_layer=%zu ember_weight=%zu ember_kv_layout=%zu "
             "ember_kv_layer=%zu kv_kinds=%s weight_kinds=%s", sizeof(ember_model), sizeof(ember_layer),
             sizeof(ember_weight), sizeof(ember_kv_layout), sizeof(ember_kv_layer), EMBER_KV_KIND_NAMES,
             EMBER_WEIGHT_KIND_NAMES);
    return buf;
}

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

static void silu_mul(const float* gu, long I, float* out) {
    const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
    for (long i = 0; i < I; i += 8) {
        __m256 g = _mm256_loadu_ps(gu + i), u = _mm256_loadu_ps(gu + I + i);
        __m256 sig = _mm256_div_ps(g, _mm256_add_ps(one, exp256_ps(_mm256_sub_ps(zero, g))));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(sig, u));
    }
}

/* out: final hidden states [M, hidden]. Token m belongs to sequence seq[m] (non-decreasing: a
 * sequence's tokens are adjacent and in order), whose block table row seq[m] holds
 * ctx_lens[seq[m]] cache entries once this step's are written; its RoPE position is pos[m],
 * which may exceed its entry's index when earlier entries were dropped from the cache: a token
 * attends to its sequence's entries up to and including its own.
 * work: M * (2 * hidden + qkv + q + 3 * intermediate) floats. */
void ember_llama_decode(const ember_model* md, long M, const int64_t* ids, const int64_t* pos,
                        const int64_t* slots, const int64_t* seq, long S, const int64_t* tables, long table_width,
                        const int64_t* ctx_lens, float* out, float* work, int nthreads) {
    const long D = md->hidden, H = md->num_heads, Hkv = md->num_kv_heads, Dh = md->head_dim;
    const long I = md->intermediate, bs = md->kv.block_size, Q = H * Dh, KV = Hkv * Dh, QKV = Q + 2 * KV;
    float *x = work, *h = x + M * D, *qkv = h + M * D, *att = qkv + M * QKV, *gu = att + M * Q, *act = gu + 2 * M * I;
    long max_len = 1;
    for (long s = 0; s < S; s++) max_len = ctx_lens[s] > max_len ? ctx_lens[s] : max_len;
    const float scale = (float)md->scale;
    const ember_kv_layout* kv = &md->kv;
    const int quantized = kv_quantized(kv->kind), per_token_store = kv_per_token_store(kv->kind);
    /* Cache offset (and scale index) of every entry of every sequence, the same for all layers. */
    int64_t* offs = (int64_t*)malloc(sizeof(int64_t) * S * max_len * (quantized ? 2 : 1));
    int64_t* soffs = quantized ? offs + S * max_len : NULL;
    /* Each token's number of visible entries, and where each sequence's tokens start. */
    int64_t* att_len = (int64_t*)malloc(sizeof(int64_t) * (M + S + 1));
    int64_t* first = att_len + M;
    for (long m = M - 1; m >= 0; m--)
        att_len[m] = m == M - 1 || seq[m + 1] != seq[m] ? ctx_lens[seq[m]] : att_len[m + 1] - 1;
    for (long s = 0, m = 0; s <= S; s++) {
        while (m < M && seq[m] < s) m++;
        first[s] = m;
    }

    double last = omp_get_wtime();
    #pragma omp parallel num_threads(nthreads)
    {
        /* XQuant takes a KV head's whole group in one item: each entry's K is computed once for all */
        const long ld = max_len + 8, group = H / Hkv, per_item = kv_xquant(kv->kind) ? group : HEADS_PER_PASS;
        const long passes = (group + per_item - 1) / per_item;
        float* scores = (float*)malloc(sizeof(float) * (per_item > HEADS_PER_PASS ? per_item : HEADS_PER_PASS) * ld);
        #pragma omp for schedule(static)
        for (long s = 0; s < S; s++) {
            const int64_t* table = tables + s * table_width;
            for (long t = 0; t < ctx_lens[s]; t++) {
                int64_t slot = table[t / bs] * bs + t % bs;
                offs[s * max_len + t] = slot * KV;
                if (quantized) soffs[s * max_len + t] = kv_scale_base(kv, slot);
            }
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
                if (per_token_store) kv_store_seq(kv, &L->kv, slots + m, 1, row + Q, row + Q + KV, QKV, pos + m);
            }
            if (!per_token_store) {  /* fp8: a block's scale is decided over the run of its new rows; KIVI: a run
                                   * that fills a block quantizes its keys after its rows are in */
                #pragma omp for schedule(dynamic, 1)
                for (long s = 0; s < S; s++) {
                    const float* row = qkv + first[s] * QKV;
                    kv_store_seq(kv, &L->kv, slots + first[s], first[s + 1] - first[s], row + Q, row + Q + KV, QKV,
                                 pos + first[s]);
                }
            }
            PHASE(ATTENTION);
            /* dynamic: a prefill chunk's tokens have contexts of every length up to the chunk's end */
            /* KV head outermost: a long chunk's K/V rows of one KV head fit in L2, all heads' don't */
            #pragma omp for schedule(dynamic, 2)
            for (long item = 0; item < M * Hkv * passes; item++) {
                long kvh = item / (M * passes), m = item / passes % M, h0 = kvh * group + item % passes * per_item;
                long nh = kvh * group + group - h0 < per_item ? kvh * group + group - h0 : per_item;
                const float* q = qkv + m * QKV + h0 * Dh;
                float* o = att + m * Q + h0 * Dh;
                const int64_t* off = offs + seq[m] * max_len;
                const int64_t* soff = quantized ? soffs + seq[m] * max_len : NULL;
                attend_paged(kv, &L->kv, kvh, q, nh, off, soff, att_len[m], scale, scores, ld, o);
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
    free(att_len);
}

/* The fused step's KV store on its own, for one sequence's n new rows of one layer (k, v:
 * [n, kv_heads * head_dim] with row stride ld) at RoPE positions pos [n] (XQuant's need them;
 * ember_kv_store: none): tests hold it to the codecs' `write`. */
void ember_kv_store_at(const ember_kv_layout* kv, const ember_kv_layer* layer, const int64_t* slots,
                       const int64_t* pos, long n, const float* k, const float* v, long ld) {
    kv_store_seq(kv, layer, slots, n, k, v, ld, pos);
}

void ember_kv_store(const ember_kv_layout* kv, const ember_kv_layer* layer, const int64_t* slots, long n,
                    const float* k, const float* v, long ld) {
    kv_store_seq(kv, layer, slots, n, k, v, ld, NULL);
}

/* The fused step's paged attention on its own: H query heads q [H, head_dim] of one sequence
 * over its first n cache entries (block table `table`), all layouts; out [H, head_dim].
 * Tests hold it to softmax attention over the codecs' `read`. */
void ember_kv_attend(const ember_kv_layout* kv, const ember_kv_layer* layer, const float* q, long H,
                     const int64_t* table, long n, float scale, float* out) {
    const long Hkv = kv->num_kv_heads, Dh = kv->head_dim, bs = kv->block_size, group = H / Hkv, ld = n + 8;
    int64_t* off = (int64_t*)malloc(sizeof(int64_t) * 2 * n);
    int64_t* soff = off + n;
    for (long t = 0; t < n; t++) {
        int64_t slot = table[t / bs] * bs + t % bs;
        off[t] = slot * Hkv * Dh;
        soff[t] = kv_scale_base(kv, slot);
    }
    const long per_item = kv_xquant(kv->kind) ? group : HEADS_PER_PASS;  /* as the fused step */
    float* scores = (float*)malloc(sizeof(float) * (per_item > HEADS_PER_PASS ? per_item : HEADS_PER_PASS) * ld);
    for (long kvh = 0; kvh < Hkv; kvh++)
        for (long h0 = kvh * group; h0 < (kvh + 1) * group; h0 += per_item) {
            long nh = (kvh + 1) * group - h0 < per_item ? (kvh + 1) * group - h0 : per_item;
            attend_paged(kv, layer, kvh, q + h0 * Dh, nh, off, kv_quantized(kv->kind) ? soff : NULL, n, scale, scores,
                         ld, out + h0 * Dh);
        }
    free(scores);
    free(off);
}
