// Internal: the inner loops of the RTN quantizer, a scalar reference and SIMD twins.
//
// Every kernel fixes its summation order so that the SIMD versions give the same bits
// as the reference: a group's leading multiple of 8 entries is summed in 8 lanes (lane
// k takes the entries j with j % 8 == k), the remaining tail entries are summed first
// in order, then lanes 0..7 are added to that in order; rtn_error does the same with 16
// lanes and a multiple of 16. The library is built with -ffp-contract=off: a fused
// multiply-add happens only where a kernel asks for one (rtn_error: std::fma in the
// reference, the FMA instructions in the SIMD code), so both give the same bits.
// tests (test_kernels.cpp, test_quantize.py) compare the two on awkward lengths.
#ifndef LORAQUANT_QUANTIZE_KERNELS_H
#define LORAQUANT_QUANTIZE_KERNELS_H

#include <cmath>
#include <cstddef>
#include <cstdint>

// AVX2 twins: x86 with GCC or Clang (target attributes, chosen at run time).
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define LORAQUANT_HAVE_AVX2_KERNELS 1
#else
#define LORAQUANT_HAVE_AVX2_KERNELS 0
#endif

namespace loraquant {

// Level of one entry: round half up of (x - zmin) * inv, clamped to [0, qmax]. NaN
// (0 * inf, when delta is so small that 1 / delta overflows) becomes 0: converting it
// to an integer would be undefined.
inline float rtn_level(float x, float zmin, float inv, float qmax) {
  float v = (x - zmin) * inv;
  v = v > 0.0f ? v : 0.0f;
  v = v > qmax ? qmax : v;
  return (float)(int32_t)(v + 0.5f);
}

// What rtn_error sums per entry: (x - zmin) - level * delta with one rounding (fused),
// squared and added by a fused multiply-add. (The decoded value, zmin + level * delta,
// rounds differently; the search only compares candidates by this error.)
inline float rtn_residual(float x, float zmin, float inv, float qmax, float delta) {
  return std::fma(-rtn_level(x, zmin, inv, qmax), delta, x - zmin);
}

struct Kernels {
  const char* name;  // "reference", "avx2"
  // Smallest and largest entry (len >= 1).
  void (*minmax)(const float* x, size_t len, float* lo, float* hi);
  // Squared error sum of one RTN group: rtn_residual squared and summed as above. Early exit: a fast kernel may stop once a partial sum
  // reaches `stop` and return a value >= stop (it cannot be below the full sum's
  // value: rounded sums of non-negative terms only grow); the reference never stops.
  // With stop = INFINITY every kernel returns the full sum, bit for bit the same.
  float (*rtn_error)(const float* x, size_t len, float delta, float zmin, float qmax,
                     float stop);
  // Adds sum xe_j * x_hat_j and sum x_hat_j^2 (double) of one RTN group to *dot and
  // *norm2, x_hat_j = zmin + level(x_j) * delta (float, as decode_vector computes it).
  void (*rtn_dot)(const float* x, const double* xe, size_t len, float delta, float zmin,
                  float qmax, double* dot, double* norm2);
  // sum |x_j| in double (the scale of a sign group is its mean).
  double (*abs_sum)(const float* x, size_t len);
  // sum (x_j >= 0 ? xe_j : -xe_j) in double: x_hat . xe of a sign group, over its scale.
  double (*sign_dot)(const float* x, const double* xe, size_t len);
};

// The plain loops: always built, the definition of every result.
const Kernels& reference_kernels();
// The fastest set this CPU runs (AVX2 when present), else the reference.
const Kernels& fast_kernels();
// What the quantizer uses now: fast_kernels() unless use_reference_kernels(true).
const Kernels& active_kernels();

}  // namespace loraquant

#endif
