// thin_svd: the split factors rebuild s * B @ A (checked against a naive product),
// components are orthogonal with |b_i|^2 = |a_i|^2 = sigma_i, sigma descends, signs
// follow the documented convention, and bad input is refused; the same for the split
// in a calibrated output metric (thin_svd_weighted).
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <vector>

#include "fixtures.h"
#include "harness.h"
#include "loraquant/svd.h"

namespace lq = loraquant;

namespace {

// Householder QR and Jacobi SVD are backward stable in double: the rebuilt product is
// off by a small multiple of (m + n + r) * 2^-53 of its norm; 1e-12 leaves room.
constexpr double kSvdRel = 1e-12;
// Orthogonality and norms of the split factors, relative to the largest sigma.
constexpr double kOrthoRel = 1e-10;

struct Shape {
  uint32_t m, n, r;
};
constexpr Shape kShapes[] = {{1, 1, 1},    {3, 5, 2},     {5, 3, 7},   {1, 1000, 3}, {1000, 1, 3},
                             {127, 129, 16}, {129, 127, 64}, {33, 31, 3}, {7, 1000, 16}};
constexpr double kScalings[] = {1.0, -0.5, 3.0};

// |s B A - sum_i b_i a_i^T|_F and |s B A|_F, both by plain loops.
void naive_error(const lqtest::Pair& p, double s, const lq::Factors& f, double& err, double& norm) {
  err = norm = 0;
  for (uint32_t j = 0; j < p.m; ++j)
    for (uint32_t k = 0; k < p.n; ++k) {
      double x = 0, y = 0;
      for (uint32_t i = 0; i < p.r; ++i) {
        x += p.B[(size_t)j * p.r + i] * p.A[(size_t)i * p.n + k];
        y += f.b[(size_t)i * p.m + j] * f.a[(size_t)i * p.n + k];
      }
      x *= s;
      err += (x - y) * (x - y);
      norm += x * x;
    }
  err = std::sqrt(err);
  norm = std::sqrt(norm);
}

double dot(const double* u, const double* v, uint32_t len) {
  double s = 0;
  for (uint32_t j = 0; j < len; ++j) s += u[j] * v[j];
  return s;
}

// check(pair, scaling, factors) for a random pair of every shape at every scaling.
template <class F>
void for_each_factored(uint64_t seed, F&& check) {
  for (const Shape& sh : kShapes)
    for (double s : kScalings) {
      const lqtest::Pair p = lqtest::random_pair(sh.m, sh.n, sh.r, ++seed);
      check(p, s, lq::thin_svd(p.A.data(), p.B.data(), p.m, p.n, p.r, s));
    }
}

}  // namespace

LQ_TEST(svd_rebuilds_the_product) {
  for_each_factored(100, [](const lqtest::Pair& p, double s, const lq::Factors& f) {
    CHECK(f.m == p.m && f.n == p.n && f.r == p.r);
    CHECK(f.sigma.size() == p.r && f.b.size() == (size_t)p.r * p.m && f.a.size() == (size_t)p.r * p.n);
    double err, norm;
    naive_error(p, s, f, err, norm);
    CHECK(norm > 0);
    CHECK(err <= kSvdRel * norm);
  });
}

LQ_TEST(svd_components_are_orthogonal_and_sorted) {
  for_each_factored(200, [](const lqtest::Pair& p, double, const lq::Factors& f) {
    const uint32_t rank = std::min({p.m, p.n, p.r});
    const double top = f.sigma[0];
    bool ok = true;
    for (uint32_t i = 0; i < p.r; ++i) {
      ok = ok && f.sigma[i] >= 0 && (i == 0 || f.sigma[i] <= f.sigma[i - 1]);
      if (i >= rank) ok = ok && f.sigma[i] <= kOrthoRel * top;  // past the rank: nothing
      const double* bi = f.b.data() + (size_t)i * p.m;
      const double* ai = f.a.data() + (size_t)i * p.n;
      // The singular value is split evenly between the two factors.
      ok = ok && std::fabs(dot(bi, bi, p.m) - f.sigma[i]) <= kOrthoRel * top;
      ok = ok && std::fabs(dot(ai, ai, p.n) - f.sigma[i]) <= kOrthoRel * top;
      for (uint32_t k = 0; k < i; ++k) {
        ok = ok && std::fabs(dot(bi, f.b.data() + (size_t)k * p.m, p.m)) <= kOrthoRel * top;
        ok = ok && std::fabs(dot(ai, f.a.data() + (size_t)k * p.n, p.n)) <= kOrthoRel * top;
      }
    }
    CHECK(ok);
  });
}

LQ_TEST(svd_sign_convention) {
  // The entry of largest magnitude of each u_i is positive; a negative scaling is
  // folded into b_i, so there that entry of b_i is negative.
  for_each_factored(300, [](const lqtest::Pair& p, double s, const lq::Factors& f) {
    bool ok = true;
    for (uint32_t i = 0; i < p.r; ++i) {
      if (!(f.sigma[i] > 0)) continue;
      const double* bi = f.b.data() + (size_t)i * p.m;
      uint32_t arg = 0;
      for (uint32_t j = 1; j < p.m; ++j)
        if (std::fabs(bi[j]) > std::fabs(bi[arg])) arg = j;
      ok = ok && (s > 0 ? bi[arg] > 0 : bi[arg] < 0);
    }
    CHECK(ok);
  });
}

LQ_TEST(svd_rank_deficient_and_zero) {
  lqtest::Pair p = lqtest::random_pair(20, 30, 4, 400);
  for (uint32_t j = 0; j < p.m; ++j) p.B[(size_t)j * p.r + 2] = 0;  // column 2 of B is zero
  const lq::Factors f = lq::thin_svd(p.A.data(), p.B.data(), p.m, p.n, p.r, 1.0);
  CHECK(f.sigma[2] > 0);
  CHECK(f.sigma[3] <= kOrthoRel * f.sigma[0]);
  double err, norm;
  naive_error(p, 1.0, f, err, norm);
  CHECK(err <= kSvdRel * norm);

  const lqtest::Pair z = lqtest::random_pair(5, 6, 3, 401);
  std::vector<double> zeros(z.B.size(), 0.0);
  const lq::Factors fz = lq::thin_svd(z.A.data(), zeros.data(), z.m, z.n, z.r, 1.0);
  CHECK(std::all_of(fz.sigma.begin(), fz.sigma.end(), [](double v) { return v == 0; }));
  CHECK(std::all_of(fz.b.begin(), fz.b.end(), [](double v) { return v == 0; }));
}

LQ_TEST(svd_refuses_non_finite_input) {
  lqtest::Pair p = lqtest::random_pair(4, 5, 2, 500);
  p.A[3] = NAN;
  CHECK_THROWS(lq::thin_svd(p.A.data(), p.B.data(), p.m, p.n, p.r, 1.0), std::invalid_argument,
               "A contains NaN");
  p.A[3] = 0;
  p.B[1] = -INFINITY;
  CHECK_THROWS(lq::thin_svd(p.A.data(), p.B.data(), p.m, p.n, p.r, 1.0), std::invalid_argument,
               "B contains NaN or Inf");
  p.B[1] = 0;
  CHECK_THROWS(lq::thin_svd(p.A.data(), p.B.data(), p.m, p.n, p.r, NAN), std::invalid_argument,
               "scaling must be finite");
}

// thin_svd_weighted: the factors still rebuild s * B @ A, and in the output metric
// (L^T a_i, L L^T = H + ridge) the components are orthogonal with |b_i|^2 =
// |L^T a_i|^2 = sigma_i; H of rank 1 (damping makes it definite) and bad H are covered.
LQ_TEST(svd_weighted_rebuilds_and_is_orthogonal_in_the_metric) {
  uint64_t seed = 600;
  for (const Shape& sh : {Shape{3, 5, 2}, Shape{33, 31, 3}, Shape{7, 40, 16}, Shape{40, 9, 4}}) {
    const lqtest::Pair p = lqtest::random_pair(sh.m, sh.n, sh.r, ++seed);
    const lqtest::Pair x = lqtest::random_pair(1, sh.n, 2 * sh.n, ++seed);  // x.A: 2n input rows
    for (int rank_one = 0; rank_one < 2; ++rank_one) {
      std::vector<double> H((size_t)sh.n * sh.n, 0.0);
      for (uint32_t t = 0; t < (rank_one ? 1u : 2 * sh.n); ++t)
        for (uint32_t j = 0; j < sh.n; ++j)
          for (uint32_t k = 0; k < sh.n; ++k)
            H[(size_t)j * sh.n + k] += x.A[(size_t)t * sh.n + j] * x.A[(size_t)t * sh.n + k] *
                                       (j == 0 && k == 0 ? 100.0 : 1.0);  // a loud channel
      const lq::Factors f =
          lq::thin_svd_weighted(p.A.data(), p.B.data(), H.data(), p.m, p.n, p.r, -0.7, 0.01);
      CHECK(f.weighted() && f.metric.size() == (size_t)sh.n * sh.n);
      double err, norm;
      naive_error(p, -0.7, f, err, norm);
      CHECK(err <= 1e-9 * norm);  // the metric's conditioning costs a few digits
      std::vector<double> w((size_t)sh.r * sh.n, 0.0);  // L^T a_i, L column-major
      for (uint32_t i = 0; i < sh.r; ++i)
        for (uint32_t k = 0; k < sh.n; ++k)
          for (uint32_t j = k; j < sh.n; ++j)
            w[(size_t)i * sh.n + k] += f.metric[(size_t)k * sh.n + j] * f.a[(size_t)i * sh.n + j];
      const double top = f.sigma[0];
      bool ok = top > 0;
      for (uint32_t i = 0; i < sh.r; ++i) {
        const double* bi = f.b.data() + (size_t)i * sh.m;
        const double* wi = w.data() + (size_t)i * sh.n;
        ok = ok && std::fabs(dot(bi, bi, sh.m) - f.sigma[i]) <= 1e-9 * top;
        ok = ok && std::fabs(dot(wi, wi, sh.n) - f.sigma[i]) <= 1e-9 * top;
        for (uint32_t k = 0; k < i; ++k)
          ok = ok && std::fabs(dot(wi, w.data() + (size_t)k * sh.n, sh.n)) <= 1e-9 * top;
      }
      CHECK(ok);
    }
  }
  lqtest::Pair p = lqtest::random_pair(4, 3, 2, 700);
  std::vector<double> H(9, 0.0);
  CHECK_THROWS(lq::thin_svd_weighted(p.A.data(), p.B.data(), H.data(), 4, 3, 2, 1.0, 0.01),
               std::invalid_argument, "is zero");
  H = {1, 0, 0, 0, 1, 0, 0, 0, NAN};
  CHECK_THROWS(lq::thin_svd_weighted(p.A.data(), p.B.data(), H.data(), 4, 3, 2, 1.0, 0.01),
               std::invalid_argument, "NaN or Inf");
  H = {1, 5, 0, 5, 1, 0, 0, 0, 1};  // eigenvalues 6, 1, -4: positive trace, indefinite
  CHECK_THROWS(lq::thin_svd_weighted(p.A.data(), p.B.data(), H.data(), 4, 3, 2, 1.0, 0.01),
               std::invalid_argument, "semi-definite");
}
