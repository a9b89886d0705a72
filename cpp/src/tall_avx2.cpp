// AVX2 + FMA twins of the tall-matrix products (tall_kernels.h): 4 rows per register,
// each entry computed in the reference's order, so the bits are the reference's (rows
// left over after the last 4 go to the reference itself).
// Compiled with a target attribute and used only when the CPU reports AVX2 and FMA.
#include "quantize_kernels.h"  // LORAQUANT_HAVE_AVX2_KERNELS
#include "tall_kernels.h"

#if LORAQUANT_HAVE_AVX2_KERNELS

#include <immintrin.h>

#include <algorithm>
#include <cmath>

namespace loraquant {

namespace {

#define LQ_AVX2FMA __attribute__((target("avx2,fma")))

// A x B entries of X^T Y at once: columns i..i+A-1 of X against j..j+B-1 of Y.
template <int A, int B>
LQ_AVX2FMA inline void tn_block(const double* X, size_t ldx, const double* Y, size_t ldy,
                                size_t m, size_t i, size_t j, double* C, size_t ldc) {
  __m256d acc[A][B];
  for (int a = 0; a < A; ++a)
    for (int b = 0; b < B; ++b) acc[a][b] = _mm256_setzero_pd();
  const size_t body = m & ~(size_t)3;
  for (size_t t = 0; t < body; t += 4) {
    __m256d x[A], y[B];
    for (int a = 0; a < A; ++a) x[a] = _mm256_loadu_pd(X + (i + a) * ldx + t);
    for (int b = 0; b < B; ++b) y[b] = _mm256_loadu_pd(Y + (j + b) * ldy + t);
    for (int a = 0; a < A; ++a)
      for (int b = 0; b < B; ++b) acc[a][b] = _mm256_fmadd_pd(x[a], y[b], acc[a][b]);
  }
  for (int a = 0; a < A; ++a)
    for (int b = 0; b < B; ++b) {
      alignas(32) double l[4];
      _mm256_store_pd(l, acc[a][b]);
      double s = (l[0] + l[1]) + (l[2] + l[3]);
      const double* x = X + (i + a) * ldx;
      const double* y = Y + (j + b) * ldy;
      for (size_t t = body; t < m; ++t) s = std::fma(x[t], y[t], s);
      C[(i + a) + (j + b) * ldc] = s;
    }
}

LQ_AVX2FMA void tn_avx2(const double* X, size_t ldx, const double* Y, size_t ldy, size_t m,
                        size_t p, size_t q, double* C, bool sym) {
  size_t j = 0;
  for (; j + 4 <= q; j += 4) {
    const size_t iend = sym ? std::min(p, j + 4) : p;  // the upper triangle and a bit
    size_t i = 0;
    for (; i + 2 <= iend; i += 2) tn_block<2, 4>(X, ldx, Y, ldy, m, i, j, C, p);
    for (; i < iend; ++i) tn_block<1, 4>(X, ldx, Y, ldy, m, i, j, C, p);
  }
  for (; j < q; ++j) {
    const size_t iend = sym ? j + 1 : p;
    size_t i = 0;
    for (; i + 4 <= iend; i += 4) tn_block<4, 1>(X, ldx, Y, ldy, m, i, j, C, p);
    for (; i < iend; ++i) tn_block<1, 1>(X, ldx, Y, ldy, m, i, j, C, p);
  }
  if (sym)  // fma is symmetric in its factors: the mirror has the same bits
    for (size_t jj = 0; jj < q; ++jj)
      for (size_t ii = jj + 1; ii < p; ++ii) C[ii + jj * p] = C[jj + ii * p];
}

// R x 4 rows (R registers) by B columns of X T.
template <int R, int B>
LQ_AVX2FMA inline void nn_block(const double* X, size_t ldx, size_t p, const double* T,
                                size_t ldt, size_t t, size_t j, double* Out, size_t ldo) {
  __m256d acc[R][B];
  for (int a = 0; a < R; ++a)
    for (int b = 0; b < B; ++b) acc[a][b] = _mm256_setzero_pd();
  for (size_t i = 0; i < p; ++i) {
    __m256d x[R];
    for (int a = 0; a < R; ++a) x[a] = _mm256_loadu_pd(X + i * ldx + t + 4 * a);
    for (int b = 0; b < B; ++b) {
      const __m256d tb = _mm256_broadcast_sd(T + i + (j + b) * ldt);
      for (int a = 0; a < R; ++a) acc[a][b] = _mm256_fmadd_pd(x[a], tb, acc[a][b]);
    }
  }
  for (int a = 0; a < R; ++a)
    for (int b = 0; b < B; ++b) _mm256_storeu_pd(Out + t + 4 * a + (j + b) * ldo, acc[a][b]);
}

template <int R>
LQ_AVX2FMA inline void nn_rows(const double* X, size_t ldx, size_t p, const double* T,
                               size_t ldt, size_t q, size_t t, double* Out, size_t ldo) {
  size_t j = 0;
  for (; j + 4 <= q; j += 4) nn_block<R, 4>(X, ldx, p, T, ldt, t, j, Out, ldo);
  for (; j < q; ++j) nn_block<R, 1>(X, ldx, p, T, ldt, t, j, Out, ldo);
}

LQ_AVX2FMA void nn_avx2(const double* X, size_t ldx, size_t m, size_t p, const double* T,
                        size_t ldt, size_t q, double* Out, size_t ldo) {
  size_t t = 0;
  for (; t + 8 <= m; t += 8) nn_rows<2>(X, ldx, p, T, ldt, q, t, Out, ldo);
  for (; t + 4 <= m; t += 4) nn_rows<1>(X, ldx, p, T, ldt, q, t, Out, ldo);
  if (t < m) reference_tall_kernels().nn(X + t, ldx, m - t, p, T, ldt, q, Out + t, ldo);
}

template <int R>
LQ_AVX2FMA inline void trsm_rows(double* X, size_t ldx, size_t p, const double* R_, size_t ldr,
                                 size_t t) {
  for (size_t j = 0; j < p; ++j) {
    __m256d s[R];
    for (int a = 0; a < R; ++a) s[a] = _mm256_loadu_pd(X + j * ldx + t + 4 * a);
    for (size_t i = 0; i < j; ++i) {
      const __m256d r = _mm256_broadcast_sd(R_ + i + j * ldr);
      for (int a = 0; a < R; ++a)
        s[a] = _mm256_fnmadd_pd(_mm256_loadu_pd(X + i * ldx + t + 4 * a), r, s[a]);
    }
    const __m256d d = _mm256_broadcast_sd(R_ + j + j * ldr);
    for (int a = 0; a < R; ++a) _mm256_storeu_pd(X + j * ldx + t + 4 * a, _mm256_div_pd(s[a], d));
  }
}

LQ_AVX2FMA void trsm_upper_avx2(double* X, size_t ldx, size_t m, size_t p, const double* R,
                                size_t ldr) {
  size_t t = 0;
  for (; t + 8 <= m; t += 8) trsm_rows<2>(X, ldx, p, R, ldr, t);
  for (; t + 4 <= m; t += 4) trsm_rows<1>(X, ldx, p, R, ldr, t);
  if (t < m) reference_tall_kernels().trsm_upper(X + t, ldx, m - t, p, R, ldr);
}

constexpr TallKernels kAvx2 = {tn_avx2, nn_avx2, trsm_upper_avx2};

}  // namespace

const TallKernels* avx2_tall_kernels() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? &kAvx2 : nullptr;
}

}  // namespace loraquant

#endif
