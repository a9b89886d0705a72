// The reference RTN kernels (plain loops, the definition of every result) and the
// choice of the kernel set at run time.
#include "quantize_kernels.h"

#include <atomic>
#include <cmath>

#include "loraquant/quantize.h"

namespace loraquant {

namespace {

void minmax_ref(const float* x, size_t len, float* lo, float* hi) {
  float l = x[0], h = x[0];
  for (size_t j = 1; j < len; ++j) {
    l = x[j] < l ? x[j] : l;
    h = x[j] > h ? x[j] : h;
  }
  *lo = l;
  *hi = h;
}

float rtn_error_ref(const float* x, size_t len, float delta, float zmin, float qmax, float) {
  const float inv = delta > 0 ? 1.0f / delta : 0.0f;
  float acc[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
  const size_t body = len & ~(size_t)15;
  for (size_t j = 0; j < body; j += 16)
    for (size_t k = 0; k < 16; ++k) {
      const float e = rtn_residual(x[j + k], zmin, inv, qmax, delta);
      acc[k] = std::fma(e, e, acc[k]);
    }
  float err = 0;
  for (size_t j = body; j < len; ++j) {
    const float e = rtn_residual(x[j], zmin, inv, qmax, delta);
    err = std::fma(e, e, err);
  }
  for (size_t k = 0; k < 16; ++k) err += acc[k];
  return err;
}

void rtn_dot_ref(const float* x, const double* xe, size_t len, float delta, float zmin,
                 float qmax, double* dot, double* norm2) {
  const float inv = delta > 0 ? 1.0f / delta : 0.0f;
  double d[8] = {0, 0, 0, 0, 0, 0, 0, 0}, q[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  const size_t body = len & ~(size_t)7;
  for (size_t j = 0; j < body; j += 8)
    for (size_t k = 0; k < 8; ++k) {
      const double y = (double)(zmin + rtn_level(x[j + k], zmin, inv, qmax) * delta);
      d[k] += xe[j + k] * y;
      q[k] += y * y;
    }
  double ds = 0, qs = 0;
  for (size_t j = body; j < len; ++j) {
    const double y = (double)(zmin + rtn_level(x[j], zmin, inv, qmax) * delta);
    ds += xe[j] * y;
    qs += y * y;
  }
  for (size_t k = 0; k < 8; ++k) {
    ds += d[k];
    qs += q[k];
  }
  *dot += ds;
  *norm2 += qs;
}

double abs_sum_ref(const float* x, size_t len) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  const size_t body = len & ~(size_t)7;
  for (size_t j = 0; j < body; j += 8)
    for (size_t k = 0; k < 8; ++k) acc[k] += std::fabs((double)x[j + k]);
  double s = 0;
  for (size_t j = body; j < len; ++j) s += std::fabs((double)x[j]);
  for (size_t k = 0; k < 8; ++k) s += acc[k];
  return s;
}

double sign_dot_ref(const float* x, const double* xe, size_t len) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  const size_t body = len & ~(size_t)7;
  for (size_t j = 0; j < body; j += 8)
    for (size_t k = 0; k < 8; ++k) acc[k] += x[j + k] >= 0.0f ? xe[j + k] : -xe[j + k];
  double s = 0;
  for (size_t j = body; j < len; ++j) s += x[j] >= 0.0f ? xe[j] : -xe[j];
  for (size_t k = 0; k < 8; ++k) s += acc[k];
  return s;
}

constexpr Kernels kReference = {"reference", minmax_ref, rtn_error_ref, rtn_dot_ref,
                                abs_sum_ref, sign_dot_ref};

std::atomic<bool> g_reference{false};

}  // namespace

#if LORAQUANT_HAVE_AVX2_KERNELS
const Kernels* avx2_kernels();  // quantize_avx2.cpp: null if the CPU lacks AVX2
#endif

const Kernels& reference_kernels() { return kReference; }

const Kernels& fast_kernels() {
#if LORAQUANT_HAVE_AVX2_KERNELS
  static const Kernels* fast = avx2_kernels();
  if (fast) return *fast;
#endif
  return kReference;
}

const Kernels& active_kernels() {
  return g_reference.load(std::memory_order_relaxed) ? kReference : fast_kernels();
}

void use_reference_kernels(bool on) { g_reference.store(on, std::memory_order_relaxed); }

const char* kernels_name() { return active_kernels().name; }

}  // namespace loraquant
