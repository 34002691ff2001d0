/* One weight-only linear layer on its own: y[M,N] = x[M,K] @ W^T (+ bias), threads split the
 * output rows. The same libgomp as torch's (same soname), told torch's thread count, so the
 * two pools never oversubscribe. Kernels and storage: linear.h. Built by kernels/native.py. */
#include "linear.h"

void ember_linear(const ember_weight* W, const float* x, long M, float* y, int nthreads) {
    #pragma omp parallel num_threads(nthreads)
    linear_omp(W, x, M, y, W->n, 0);
}
