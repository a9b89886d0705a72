// The scalar reference of the tall-matrix products (tall_kernels.h) and the dispatch.
#include "tall_kernels.h"

#include <cmath>

#include "quantize_kernels.h"

namespace loraquant {

namespace {

double dot_ref(const double* x, const double* y, size_t m) {
  double lane[4] = {0, 0, 0, 0};
  const size_t body = m & ~(size_t)3;
  for (size_t t = 0; t < body; t += 4)
    for (size_t l = 0; l < 4; ++l) lane[l] = std::fma(x[t + l], y[t + l], lane[l]);
  double s = (lane[0] + lane[1]) + (lane[2] + lane[3]);
  for (size_t t = body; t < m; ++t) s = std::fma(x[t], y[t], s);
  return s;
}

void tn_ref(const double* X, size_t ldx, const double* Y, size_t ldy, size_t m, size_t p,
            size_t q, double* C, bool sym) {
  for (size_t j = 0; j < q; ++j)
    for (size_t i = sym ? j : 0; i < p; ++i) {
      C[i + j * p] = dot_ref(X + i * ldx, Y + j * ldy, m);
      if (sym) C[j + i * p] = C[i + j * p];
    }
}

void nn_ref(const double* X, size_t ldx, size_t m, size_t p, const double* T, size_t ldt,
            size_t q, double* Out, size_t ldo) {
  for (size_t j = 0; j < q; ++j)
    for (size_t t = 0; t < m; ++t) {
      double s = 0;
      for (size_t i = 0; i < p; ++i) s = std::fma(X[t + i * ldx], T[i + j * ldt], s);
      Out[t + j * ldo] = s;
    }
}

void trsm_upper_ref(double* X, size_t ldx, size_t m, size_t p, const double* R, size_t ldr) {
  for (size_t t = 0; t < m; ++t)
    for (size_t j = 0; j < p; ++j) {
      double s = X[t + j * ldx];
      for (size_t i = 0; i < j; ++i) s = std::fma(-X[t + i * ldx], R[i + j * ldr], s);
      X[t + j * ldx] = s / R[j + j * ldr];
    }
}

constexpr TallKernels kReference = {tn_ref, nn_ref, trsm_upper_ref};

}  // namespace

#if LORAQUANT_HAVE_AVX2_KERNELS
const TallKernels* avx2_tall_kernels();  // tall_avx2.cpp: null without AVX2 and FMA
#endif

const TallKernels& reference_tall_kernels() { return kReference; }

const TallKernels& active_tall_kernels() {
#if LORAQUANT_HAVE_AVX2_KERNELS
  static const TallKernels* fast = avx2_tall_kernels();
  if (fast && &active_kernels() != &reference_kernels()) return *fast;
#endif
  return kReference;
}

}  // namespace loraquant
