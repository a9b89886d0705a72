// Module: the packed apply against the dequantize-then-matmul reference, honest byte
// counts, probe_norm against a direct computation, and the payload checks.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "fixtures.h"
#include "harness.h"
#include "loraquant/format.h"
#include "loraquant/module.h"

namespace lq = loraquant;

namespace {

// Float32 unit roundoff. apply sums n products for each t_i and r products for each
// y_j in float; the standard bound for such sums is (n + r + 2) * u * sum |terms|.
constexpr double kUnitRoundoff = 0x1p-24;
// probe_norm and the test's own computation both run in double, in other orders.
constexpr double kProbeRel = 1e-12;

struct Shape {
  uint32_t m, n, r;
};
constexpr Shape kShapes[] = {{1, 1, 1},     {3, 127, 3},  {129, 3, 16},  {127, 129, 16},
                             {1000, 1, 3},  {1, 1000, 1}, {129, 1000, 16}, {64, 64, 64}};
constexpr size_t kBatches[] = {1, 3, 17};

std::vector<float> random_x(size_t count, uint64_t seed) {
  lqtest::Rng rng(seed);
  std::vector<float> x(count);
  for (auto& v : x) v = (float)rng.symmetric();
  return x;
}

// sum_i |B_ji| sum_k |A_ik x_k|: the magnitude that bounds the rounding error of y_j.
std::vector<double> abs_products(const lq::Module& mod, const std::vector<float>& x, size_t batch) {
  const uint32_t m = mod.m(), n = mod.n(), r = mod.r();
  std::vector<float> A((size_t)r * n), B((size_t)m * r);
  mod.dequantize(A.data(), B.data());
  std::vector<double> out(batch * m, 0.0), t(r);
  for (size_t row = 0; row < batch; ++row) {
    for (uint32_t i = 0; i < r; ++i) {
      t[i] = 0;
      for (uint32_t k = 0; k < n; ++k) t[i] += std::fabs((double)A[(size_t)i * n + k] * x[row * n + k]);
    }
    for (uint32_t j = 0; j < m; ++j)
      for (uint32_t i = 0; i < r; ++i) out[row * m + j] += std::fabs((double)B[(size_t)j * r + i]) * t[i];
  }
  return out;
}

}  // namespace

LQ_TEST(module_apply_matches_reference) {
  uint64_t seed = 1000;
  for (const Shape& sh : kShapes)
    for (double bits : {1.5, 2.0, 4.0}) {
      const lq::Compressed c = lqtest::compress_pair(lqtest::random_pair(sh.m, sh.n, sh.r, ++seed), 0.7, bits, 32);
      const lq::Module& mod = c.module;
      for (size_t batch : kBatches) {
        const std::vector<float> x = random_x(batch * sh.n, ++seed);
        std::vector<float> y(batch * sh.m, NAN), ref(batch * sh.m, NAN);
        mod.apply(x.data(), batch, y.data());
        mod.apply_ref(x.data(), batch, ref.data());
        const std::vector<double> mag = abs_products(mod, x, batch);
        const double tol = (sh.n + sh.r + 2) * kUnitRoundoff;
        bool ok = true;
        for (size_t k = 0; k < y.size(); ++k)
          ok = ok && std::fabs((double)y[k] - ref[k]) <= tol * mag[k] + kUnitRoundoff * std::fabs(ref[k]);
        CHECK(ok);
        // Each row alone gives the same bits as within the batch (threads split rows).
        std::vector<float> one(sh.m);
        bool same = true;
        for (size_t row = 0; row < batch; ++row) {
          mod.apply(x.data() + row * sh.n, 1, one.data());
          same = same && std::memcmp(one.data(), y.data() + row * sh.m, sh.m * 4) == 0;
        }
        CHECK(same);
      }
    }
}

LQ_TEST(module_bytes_are_honest) {
  uint64_t seed = 2000;
  for (const Shape& sh : kShapes) {
    const lq::Compressed c = lqtest::compress_pair(lqtest::random_pair(sh.m, sh.n, sh.r, ++seed), 1.0, 2.0, 128);
    const lq::Module& mod = c.module;
    const lq::Layout L = lq::make_layout(mod.m(), mod.n(), mod.r(), mod.group_size(), mod.payload().data());
    CHECK_EQ(mod.nbytes(), (size_t)L.payload_bytes);
    CHECK_EQ(mod.to_bytes().size(), sizeof(lq_blob_header) + mod.nbytes());
    CHECK_EQ(mod.avg_bits(), 8.0 * (double)mod.nbytes() / ((double)sh.r * (sh.m + sh.n)));
  }
}

LQ_TEST(module_probe_norm_matches_direct_computation) {
  uint64_t seed = 3000;
  for (const Shape& sh : kShapes) {
    const lq::Compressed c = lqtest::compress_pair(lqtest::random_pair(sh.m, sh.n, sh.r, ++seed), 1.3, 3.0, 16);
    const lq::Module& mod = c.module;
    std::vector<float> A((size_t)sh.r * sh.n), B((size_t)sh.m * sh.r);
    mod.dequantize(A.data(), B.data());
    const std::vector<double> x = lqtest::probe_vector(sh.n);
    long double ss = 0;
    for (uint32_t j = 0; j < sh.m; ++j) {
      long double y = 0;
      for (uint32_t k = 0; k < sh.n; ++k) {
        long double w = 0;  // dW_hat[j][k]
        for (uint32_t i = 0; i < sh.r; ++i) w += (long double)B[(size_t)j * sh.r + i] * A[(size_t)i * sh.n + k];
        y += w * x[k];
      }
      ss += y * y;
    }
    const double want = std::sqrt((double)ss);
    // A tiny module's budget may not cover even one component; then it is all zeros.
    bool empty = true;
    for (uint32_t i = 0; i < sh.r; ++i) empty = empty && mod.b_width(i) == 0;
    CHECK(empty ? want == 0 : want > 0);
    CHECK_NEAR(mod.probe_norm(), want, kProbeRel * want);
  }
}

LQ_TEST(module_zero_adapter) {
  lqtest::Pair p = lqtest::random_pair(9, 11, 3, 4000);
  std::fill(p.B.begin(), p.B.end(), 0.0);
  const lq::Compressed c = lqtest::compress_pair(p, 1.0);
  CHECK_EQ(c.module.probe_norm(), 0.0);
  std::vector<float> x(11, 1.0f), y(9, NAN);
  c.module.apply(x.data(), 1, y.data());
  CHECK(std::all_of(y.begin(), y.end(), [](float v) { return v == 0.0f; }));
  CHECK_EQ(c.rel_error, 0.0);
}

LQ_TEST(module_constructor_checks_the_payload) {
  const lq::Compressed c = lqtest::compress_pair(lqtest::random_pair(6, 5, 3, 5000), 1.0, 4.0, 4);
  const lq::Module& mod = c.module;
  auto payload = [&] { return mod.payload(); };
  const uint32_t m = mod.m(), n = mod.n(), r = mod.r(), g = mod.group_size();

  std::vector<uint8_t> p = payload();
  p.push_back(0);
  CHECK_THROWS(lq::Module(m, n, r, g, p), lq::FormatError, "widths imply");
  p = payload();
  p[0] = 9;
  CHECK_THROWS(lq::Module(m, n, r, g, p), lq::FormatError, "has a width > 8 (9,");
  const size_t unit_at = lq_prefix_bytes(r) - 4;
  for (float bad : {0.0f, -1.0f, NAN, INFINITY}) {
    p = payload();
    std::memcpy(p.data() + unit_at, &bad, 4);
    CHECK_THROWS(lq::Module(m, n, r, g, p), lq::FormatError, "scale unit");
  }
  CHECK_THROWS(lq::Module(m, n, r, g, std::vector<uint8_t>(3)), lq::FormatError, "shorter than its");
  CHECK_THROWS(lq::Module(0, n, r, g, payload()), lq::FormatError, "out of range");
  CHECK_THROWS(lq::Module(m, n, LQ_MAX_RANK + 1, g, payload()), lq::FormatError, "rank");
  CHECK_THROWS(lq::Module(m, n, r, 0, payload()), lq::FormatError, "group size");
  CHECK_THROWS(lq::Module(m, LQ_MAX_DIM + 1, r, g, payload()), lq::FormatError, "out of range");
}
