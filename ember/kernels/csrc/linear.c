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
