// AVX2 twins of the reference RTN kernels (quantize_kernels.cpp), 8 floats at a time
// in the reference's lane order, so that every result has the same bits. Compiled with
// target attributes and used only when the CPU reports AVX2 and FMA.
#include "quantize_kernels.h"

#if LORAQUANT_HAVE_AVX2_KERNELS

#include <immintrin.h>

#include <cmath>

namespace loraquant {

namespace {

#define LQ_AVX2 __attribute__((target("avx2")))
#define LQ_AVX2FMA __attribute__((target("avx2,fma")))

// The reference's level(): NaN and negatives to 0 (max returns its second operand when
// the first is NaN), at most qmax, then round half up by truncation.
LQ_AVX2 inline __m256 level8(__m256 x, __m256 zmin, __m256 inv, __m256 qmax) {
  __m256 v = _mm256_mul_ps(_mm256_sub_ps(x, zmin), inv);
  v = _mm256_max_ps(v, _mm256_setzero_ps());
  v = _mm256_min_ps(v, qmax);
  return _mm256_cvtepi32_ps(_mm256_cvttps_epi32(_mm256_add_ps(v, _mm256_set1_ps(0.5f))));
}

LQ_AVX2 void minmax_avx2(const float* x, size_t len, float* lo, float* hi) {
  float l = x[0], h = x[0];
  size_t j = 0;
  if (len >= 8) {
    __m256 vl = _mm256_loadu_ps(x), vh = vl;
    for (j = 8; j + 8 <= len; j += 8) {
      const __m256 v = _mm256_loadu_ps(x + j);
      vl = _mm256_min_ps(vl, v);
      vh = _mm256_max_ps(vh, v);
    }
    alignas(32) float bl[8], bh[8];
    _mm256_store_ps(bl, vl);
    _mm256_store_ps(bh, vh);
    l = bl[0];
    h = bh[0];
    for (int k = 1; k < 8; ++k) {
      l = bl[k] < l ? bl[k] : l;
      h = bh[k] > h ? bh[k] : h;
    }
  }
  for (; j < len; ++j) {
    l = x[j] < l ? x[j] : l;
    h = x[j] > h ? x[j] : h;
  }
  *lo = l;
  *hi = h;
}

// Partial sums are checked against `stop` every kCheck entries (only long groups exit
// early: a candidate that loses usually loses by less than half).
constexpr size_t kCheck = 256;

// tail + lanes 0..15 (acc[0] holds 0..7, acc[1] 8..15), in the reference's order.
LQ_AVX2 inline float add_lanes16(float tail, const __m256* acc) {
  alignas(32) float lanes[16];
  _mm256_store_ps(lanes, acc[0]);
  _mm256_store_ps(lanes + 8, acc[1]);
  for (int k = 0; k < 16; ++k) tail += lanes[k];
  return tail;
}

LQ_AVX2FMA float rtn_error_avx2(const float* x, size_t len, float delta, float zmin, float qmax,
                                float stop) {
  const float inv = delta > 0 ? 1.0f / delta : 0.0f;
  const __m256 vz = _mm256_set1_ps(zmin), vi = _mm256_set1_ps(inv), vq = _mm256_set1_ps(qmax),
               vd = _mm256_set1_ps(delta), zero = _mm256_setzero_ps(), half = _mm256_set1_ps(0.5f);
  __m256 acc[2] = {zero, zero};  // lanes 0..7 and 8..15
  const size_t body = len & ~(size_t)15;
  for (size_t j = 0; j < body;) {
    const size_t end = body - j > kCheck ? j + kCheck : body;
    for (; j < end; j += 16)
      for (int h = 0; h < 2; ++h) {
        const __m256 t = _mm256_sub_ps(_mm256_loadu_ps(x + j + 8 * h), vz);
        __m256 v = _mm256_max_ps(_mm256_mul_ps(t, vi), zero);  // NaN -> 0, as rtn_level
        v = _mm256_min_ps(v, vq);
        const __m256 lvl = _mm256_cvtepi32_ps(_mm256_cvttps_epi32(_mm256_add_ps(v, half)));
        const __m256 e = _mm256_fnmadd_ps(lvl, vd, t);
        acc[h] = _mm256_fmadd_ps(e, e, acc[h]);
      }
    if (j < body) {  // a partial sum at least `stop`: the full sum is too
      const float p = add_lanes16(0.0f, acc);
      if (p >= stop) return p;
    }
  }
  float err = 0;
  for (size_t j = body; j < len; ++j) {
    const float e = rtn_residual(x[j], zmin, inv, qmax, delta);
    err = std::fma(e, e, err);
  }
  return add_lanes16(err, acc);
}

// Sums of 8 double lanes held in two registers (lanes 0..3, 4..7), added to a tail
// sum in the reference's order.
LQ_AVX2 inline double combine_pd(double tail, __m256d lo, __m256d hi) {
  alignas(32) double l[8];
  _mm256_store_pd(l, lo);
  _mm256_store_pd(l + 4, hi);
  for (int k = 0; k < 8; ++k) tail += l[k];
  return tail;
}

LQ_AVX2 void rtn_dot_avx2(const float* x, const double* xe, size_t len, float delta, float zmin,
                          float qmax, double* dot, double* norm2) {
  const float inv = delta > 0 ? 1.0f / delta : 0.0f;
  const __m256 vz = _mm256_set1_ps(zmin), vi = _mm256_set1_ps(inv), vq = _mm256_set1_ps(qmax),
               vd = _mm256_set1_ps(delta);
  __m256d d0 = _mm256_setzero_pd(), d1 = d0, q0 = d0, q1 = d0;  // lanes 0..3 and 4..7
  const size_t body = len & ~(size_t)7;
  for (size_t j = 0; j < body; j += 8) {
    const __m256 y = _mm256_add_ps(vz, _mm256_mul_ps(level8(_mm256_loadu_ps(x + j), vz, vi, vq), vd));
    const __m256d y0 = _mm256_cvtps_pd(_mm256_castps256_ps128(y));
    const __m256d y1 = _mm256_cvtps_pd(_mm256_extractf128_ps(y, 1));
    d0 = _mm256_add_pd(d0, _mm256_mul_pd(_mm256_loadu_pd(xe + j), y0));
    d1 = _mm256_add_pd(d1, _mm256_mul_pd(_mm256_loadu_pd(xe + j + 4), y1));
    q0 = _mm256_add_pd(q0, _mm256_mul_pd(y0, y0));
    q1 = _mm256_add_pd(q1, _mm256_mul_pd(y1, y1));
  }
  double ds = 0, qs = 0;
  for (size_t j = body; j < len; ++j) {
    const double y = (double)(zmin + rtn_level(x[j], zmin, inv, qmax) * delta);
    ds += xe[j] * y;
    qs += y * y;
  }
  *dot += combine_pd(ds, d0, d1);
  *norm2 += combine_pd(qs, q0, q1);
}

LQ_AVX2 double abs_sum_avx2(const float* x, size_t len) {
  const __m256d mask = _mm256_castsi256_pd(_mm256_set1_epi64x(0x7FFFFFFFFFFFFFFFLL));
  __m256d a0 = _mm256_setzero_pd(), a1 = a0;
  const size_t body = len & ~(size_t)7;
  for (size_t j = 0; j < body; j += 8) {
    const __m256 v = _mm256_loadu_ps(x + j);
    a0 = _mm256_add_pd(a0, _mm256_and_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)), mask));
    a1 = _mm256_add_pd(a1, _mm256_and_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)), mask));
  }
  double s = 0;
  for (size_t j = body; j < len; ++j) s += std::fabs((double)x[j]);
  return combine_pd(s, a0, a1);
}

LQ_AVX2 double sign_dot_avx2(const float* x, const double* xe, size_t len) {
  const __m256d sign = _mm256_set1_pd(-0.0);
  __m256d a0 = _mm256_setzero_pd(), a1 = a0;
  const size_t body = len & ~(size_t)7;
  for (size_t j = 0; j < body; j += 8) {
    // negative entries (x < 0; -0 counts as >= 0) flip the sign of xe
    const __m256 neg = _mm256_cmp_ps(_mm256_loadu_ps(x + j), _mm256_setzero_ps(), _CMP_LT_OQ);
    const __m256d n0 = _mm256_and_pd(_mm256_castsi256_pd(_mm256_cvtepi32_epi64(
                                         _mm_castps_si128(_mm256_castps256_ps128(neg)))), sign);
    const __m256d n1 = _mm256_and_pd(_mm256_castsi256_pd(_mm256_cvtepi32_epi64(
                                         _mm_castps_si128(_mm256_extractf128_ps(neg, 1)))), sign);
    a0 = _mm256_add_pd(a0, _mm256_xor_pd(_mm256_loadu_pd(xe + j), n0));
    a1 = _mm256_add_pd(a1, _mm256_xor_pd(_mm256_loadu_pd(xe + j + 4), n1));
  }
  double s = 0;
  for (size_t j = body; j < len; ++j) s += x[j] >= 0.0f ? xe[j] : -xe[j];
  return combine_pd(s, a0, a1);
}

constexpr Kernels kAvx2 = {"avx2",       minmax_avx2,  rtn_error_avx2, rtn_dot_avx2,
                           abs_sum_avx2, sign_dot_avx2};

}  // namespace

const Kernels* avx2_kernels() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? &kAvx2 : nullptr;
}

}  // namespace loraquant

#endif
