// The tall-matrix products (tall_kernels.h): the SIMD set gives the reference's bits on
// awkward shapes, and the reference agrees with plain long-double sums.
#include <cmath>
#include <cstring>
#include <vector>

#include "harness.h"
#include "loraquant/quantize.h"
#include "tall_kernels.h"

namespace lq = loraquant;

namespace {

constexpr size_t kRows[] = {1, 3, 4, 5, 7, 8, 9, 13, 64, 129, 1031};
constexpr size_t kCols[] = {1, 2, 3, 4, 5, 7, 8, 16, 17};

std::vector<double> random_matrix(size_t rows, size_t cols, lqtest::Rng& rng) {
  std::vector<double> x(rows * cols);
  for (double& v : x) v = std::ldexp(rng.symmetric(), (int)rng.below(6) - 3);
  return x;
}

bool same(const std::vector<double>& a, const std::vector<double>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * 8) == 0;
}

// The fast set (AVX2 + FMA where present; else the reference again) against the reference.
const lq::TallKernels& fast() {
  lq::use_reference_kernels(false);
  return lq::active_tall_kernels();
}

}  // namespace

LQ_TEST(tall_reference_is_forced_by_the_switch) {
  lq::use_reference_kernels(true);
  CHECK(&lq::active_tall_kernels() == &lq::reference_tall_kernels());
  lq::use_reference_kernels(false);
}

LQ_TEST(tall_products_match_the_reference_bits) {
  lqtest::Rng rng(11);
  const lq::TallKernels &R = lq::reference_tall_kernels(), &F = fast();
  bool ok = true;
  for (size_t m : kRows)
    for (size_t p : kCols)
      for (size_t q : {(size_t)1, (size_t)4, (size_t)6, p}) {
        const size_t ld = m + 3;  // a leading dimension larger than the rows
        std::vector<double> X = random_matrix(ld, p, rng), Y = random_matrix(ld, q, rng);
        std::vector<double> c0(p * q, 7), c1(p * q, 7);
        R.tn(X.data(), ld, Y.data(), ld, m, p, q, c0.data(), false);
        F.tn(X.data(), ld, Y.data(), ld, m, p, q, c1.data(), false);
        ok = ok && same(c0, c1);
        std::vector<double> g0(p * p, 7), g1(p * p, 7);
        R.tn(X.data(), ld, X.data(), ld, m, p, p, g0.data(), true);
        F.tn(X.data(), ld, X.data(), ld, m, p, p, g1.data(), true);
        ok = ok && same(g0, g1);
        std::vector<double> T = random_matrix(p, q, rng), o0(ld * q, 7), o1(ld * q, 7);
        R.nn(X.data(), ld, m, p, T.data(), p, q, o0.data(), ld);
        F.nn(X.data(), ld, m, p, T.data(), p, q, o1.data(), ld);
        ok = ok && same(o0, o1);
        std::vector<double> U = random_matrix(p, p, rng);
        for (size_t j = 0; j < p; ++j) U[j + j * p] = 1.5 + std::fabs(U[j + j * p]);
        std::vector<double> s0(X), s1(X);
        R.trsm_upper(s0.data(), ld, m, p, U.data(), p);
        F.trsm_upper(s1.data(), ld, m, p, U.data(), p);
        ok = ok && same(s0, s1);
      }
  CHECK(ok);
}

LQ_TEST(tall_reference_computes_the_products) {
  lqtest::Rng rng(12);
  const lq::TallKernels& R = lq::reference_tall_kernels();
  const size_t m = 77, p = 5, q = 3;
  std::vector<double> X = random_matrix(m, p, rng), Y = random_matrix(m, q, rng),
                      T = random_matrix(p, q, rng), C(p * q), O(m * q);
  R.tn(X.data(), m, Y.data(), m, m, p, q, C.data(), false);
  R.nn(X.data(), m, m, p, T.data(), p, q, O.data(), m);
  double worst = 0;
  for (size_t i = 0; i < p; ++i)
    for (size_t j = 0; j < q; ++j) {
      long double s = 0;
      for (size_t t = 0; t < m; ++t) s += (long double)X[t + i * m] * Y[t + j * m];
      worst = std::max(worst, (double)std::fabs(s - C[i + j * p]));
    }
  for (size_t t = 0; t < m; ++t)
    for (size_t j = 0; j < q; ++j) {
      long double s = 0;
      for (size_t i = 0; i < p; ++i) s += (long double)X[t + i * m] * T[i + j * p];
      worst = std::max(worst, (double)std::fabs(s - O[t + j * m]));
    }
  CHECK(worst < 1e-12);
  // X R^-1 times R gives X back.
  std::vector<double> U = random_matrix(p, p, rng), S(X);
  for (size_t j = 0; j < p; ++j) {
    U[j + j * p] = 2.0 + std::fabs(U[j + j * p]);
    for (size_t i = j + 1; i < p; ++i) U[i + j * p] = 0;  // upper triangular
  }
  R.trsm_upper(S.data(), m, m, p, U.data(), p);
  std::vector<double> back(m * p);
  R.nn(S.data(), m, m, p, U.data(), p, p, back.data(), m);
  double diff = 0;
  for (size_t k = 0; k < m * p; ++k) diff = std::max(diff, std::fabs(back[k] - X[k]));
  CHECK(diff < 1e-12);
}
