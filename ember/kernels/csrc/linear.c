/* One weight-only linear layer on its own: y[M,N] = x[M,K] @ W^T (+ bias), threads split the
 * output rows. The same libgomp as torch's (same soname), told torch's thread count, so the
 * two pools never oversubscribe. Kernels and storage: linear.h. Built by kernels/native.py. */
#include <stdio.h>

#include "linear.h"

/* What Python checks when it loads this library: ember_weight's size, and the storage kinds'
 * names in enum order (native.py numbers kinds from these, never by hand). */
const char* ember_linear_abi(void) {
    static char buf[256];
    snprintf(buf, sizeof buf, "ember_weight=%zu weight_kinds=%s", sizeof(ember_weight), EMBER_WEIGHT_KIND_NAMES);
    return buf;
}

void ember_linear(const ember_weight* W, const float* x, long M, float* y, int nthreads) {
    #pragma omp parallel num_threads(nthreads)
    linear_omp(W, x, M, y, W->n, 0);
}

/* GGUF Q4_0 / Q4_1 rows (blocks of 32 inputs: fp16 d, [fp16 m,] 16 bytes holding input t in the
 * low nibble and t + 16 in the high one) -> the int4 kernel's blocks of 8 rows (linear_int4.h):
 * codes [N/8][G][4][32], byte 4r + t of quad pair j = row r's input 32g + 8j + t (low nibble)
 * and 32g + 8j + 4 + t (high); halves [N/8][G][2][8] = (d, m) per row. For Q4_0 (has_min 0)
 * the m entries are left for the caller (m = -8 d). Codes and halves are moved, never
 * recomputed: what int4.py's pack_blocks(q4_codes()) does, in one pass at load. */
void ember_repack_q4(const uint8_t* src, long n, long k, int has_min, uint8_t* codes, uint16_t* halves,
                     int nthreads) {
    const long groups = k / 32, block_bytes = has_min ? 20 : 18;
    #pragma omp parallel for num_threads(nthreads) schedule(static)
    for (long b = 0; b < n / 8; b++) {
        for (long g = 0; g < groups; g++) {
            uint8_t* out = codes + (b * groups + g) * 128;
            uint16_t* h = halves + (b * groups + g) * 16;
            for (int r = 0; r < 8; r++) {
                const uint8_t* blk = src + ((b * 8 + r) * groups + g) * block_bytes;
                const uint8_t* qs = blk + (has_min ? 4 : 2);
                uint8_t q[32];
                for (int t = 0; t < 16; t++) {
                    q[t] = qs[t] & 15;
                    q[t + 16] = qs[t] >> 4;
                }
                for (int j = 0; j < 4; j++)
                    for (int t = 0; t < 4; t++)
                        out[j * 32 + 4 * r + t] = (uint8_t)(q[8 * j + t] | (q[8 * j + 4 + t] << 4));
                memcpy(&h[r], blk, 2);
                if (has_min) memcpy(&h[8 + r], blk + 2, 2);
            }
        }
    }
}
