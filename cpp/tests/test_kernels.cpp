// The quantizer's SIMD kernels against the scalar reference (quantize_kernels.h): the
// same bits on awkward lengths, edge values, and whole vectors encoded both ways. On a
// CPU without SIMD kernels both sides are the reference and the cases still run.
#include <cmath>
#include <cstring>
#include <vector>

#include "harness.h"
#include "loraquant/format.h"
#include "loraquant/quantize.h"
#include "quantize_kernels.h"

namespace lq = loraquant;

namespace {

constexpr size_t kLengths[] = {1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 63, 64, 65, 127, 128,
                               129, 191, 1000, 1023, 4099};

bool same_bits(float a, float b) { return std::memcmp(&a, &b, 4) == 0; }
bool same_bits(double a, double b) { return std::memcmp(&a, &b, 8) == 0; }

struct Case {
  std::vector<float> x;
  std::vector<double> xe;  // the exact values x was rounded from
};

// Gaussian-like entries at magnitudes 2^-10 .. 2^9; some with exact zeros, -0 and ties.
Case random_case(size_t len, lqtest::Rng& rng) {
  Case c;
  const double scale = std::ldexp(1.0, (int)rng.below(20) - 10);
  for (size_t j = 0; j < len; ++j) {
    double v = scale * (rng.symmetric() + rng.symmetric() + rng.symmetric());
    if (rng.below(16) == 0) v = rng.below(2) ? 0.0 : -0.0;
    c.xe.push_back(v * (1 + 1e-9 * rng.symmetric()));
    c.x.push_back((float)v);
  }
  return c;
}

template <class F>
void for_each_case(uint64_t seed, F&& check) {
  lqtest::Rng rng(seed);
  for (int rep = 0; rep < 3; ++rep)
    for (size_t len : kLengths) check(random_case(len, rng));
}

}  // namespace

LQ_TEST(kernels_report_their_names) {
  const lq::Kernels& ref = lq::reference_kernels();
  CHECK(std::strcmp(ref.name, "reference") == 0);
  const char* fast = lq::fast_kernels().name;
  CHECK(std::strcmp(fast, "reference") == 0 || std::strcmp(fast, "avx2") == 0);
}

LQ_TEST(kernels_minmax_and_sums_match_reference) {
  const lq::Kernels &R = lq::reference_kernels(), &F = lq::fast_kernels();
  for_each_case(21, [&](const Case& c) {
    float l0, h0, l1, h1;
    R.minmax(c.x.data(), c.x.size(), &l0, &h0);
    F.minmax(c.x.data(), c.x.size(), &l1, &h1);
    CHECK(l0 == l1 && h0 == h1);
    CHECK(same_bits(R.abs_sum(c.x.data(), c.x.size()), F.abs_sum(c.x.data(), c.x.size())));
    CHECK(same_bits(R.sign_dot(c.x.data(), c.xe.data(), c.x.size()),
                    F.sign_dot(c.x.data(), c.xe.data(), c.x.size())));
  });
}

LQ_TEST(kernels_rtn_match_reference) {
  const lq::Kernels &R = lq::reference_kernels(), &F = lq::fast_kernels();
  for_each_case(22, [&](const Case& c) {
    float lo, hi;
    R.minmax(c.x.data(), c.x.size(), &lo, &hi);
    bool ok = true;
    for (float qmax : {1.0f, 3.0f, 7.0f, 255.0f})
      for (float p : {1.0f, 0.7f, 0.3f, 0.0f}) {  // p = 0: delta 0, every level 0
        const float mid = 0.5f * (lo + hi), half = 0.5f * (hi - lo) * p;
        const float delta = 2 * half / qmax, zmin = mid - half;
        const size_t len = c.x.size();
        const float e0 = R.rtn_error(c.x.data(), len, delta, zmin, qmax, INFINITY);
        const float e1 = F.rtn_error(c.x.data(), len, delta, zmin, qmax, INFINITY);
        ok = ok && same_bits(e0, e1);
        // An early exit only ever reports "at least stop".
        for (float stop : {0.5f * e0, e0, 2.0f * e0}) {
          const float e2 = F.rtn_error(c.x.data(), len, delta, zmin, qmax, stop);
          ok = ok && (e2 >= stop ? e0 >= stop : same_bits(e2, e0));
        }
        double d0 = 1, q0 = 2, d1 = 1, q1 = 2;  // both add to what is there
        R.rtn_dot(c.x.data(), c.xe.data(), len, delta, zmin, qmax, &d0, &q0);
        F.rtn_dot(c.x.data(), c.xe.data(), len, delta, zmin, qmax, &d1, &q1);
        ok = ok && same_bits(d0, d1) && same_bits(q0, q1);
      }
    CHECK(ok);
  });
}

LQ_TEST(kernels_tiny_delta_and_huge_values) {
  // 1 / delta overflows to inf: (x - zmin) * inf is NaN at x == zmin, which both map to 0.
  const lq::Kernels &R = lq::reference_kernels(), &F = lq::fast_kernels();
  std::vector<float> x(37, 1.0f);
  x[3] = 3e38f;
  x[5] = -3e38f;
  for (float delta : {1e-45f, 0.0f, 1e30f}) {
    const float e0 = R.rtn_error(x.data(), x.size(), delta, 1.0f, 3.0f, INFINITY);
    const float e1 = F.rtn_error(x.data(), x.size(), delta, 1.0f, 3.0f, INFINITY);
    CHECK(same_bits(e0, e1));
  }
}

LQ_TEST(kernels_whole_vectors_encode_the_same) {
  // choose_scales, write_block and decoded_dot with each kernel set: equal bytes and bits.
  for_each_case(23, [](const Case& c) {
    const size_t len = c.x.size();
    bool ok = true;
    for (uint32_t w = 1; w <= LQ_MAX_WIDTH; ++w)
      for (uint64_t g : {(uint64_t)3, (uint64_t)128, (uint64_t)512, (uint64_t)1 << 20}) {
        std::vector<uint8_t> blk[2];
        double dot[2], nrm[2];
        for (int ref = 0; ref < 2; ++ref) {
          lq::use_reference_kernels(ref == 1);
          const float unit = lq::choose_unit(1024.0);
          std::vector<uint16_t> sc(lq_scale_bytes(len, w, g) / 2);
          lq::choose_scales(c.x.data(), len, w, g, unit, true, sc.data());
          blk[ref].assign(lq_vector_bytes(len, w, g), 0);
          lq::write_block(c.x.data(), len, w, g, unit, sc.data(), blk[ref].data(), nullptr);
          lq::decoded_dot(c.x.data(), c.xe.data(), len, w, g, unit, sc.data(), &dot[ref], &nrm[ref]);
        }
        lq::use_reference_kernels(false);
        ok = ok && blk[0] == blk[1] && same_bits(dot[0], dot[1]) && same_bits(nrm[0], nrm[1]);
      }
    CHECK(ok);
  });
}
