// fp16 conversion: every half round-trips, and float -> half rounds to nearest even,
// checked against a brute-force search over all finite halves.
#include <algorithm>
#include <cmath>
#include <vector>

#include "harness.h"
#include "loraquant/half.h"

namespace {

bool is_nan_half(uint16_t h) { return (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu) != 0; }

// The non-negative halves in increasing order, 0x0000 .. 0x7c00 (+inf, standing for
// 65536: the value the rounding of the largest half's neighbourhood goes to).
struct HalfTable {
  std::vector<double> value;
  HalfTable() {
    for (uint32_t h = 0; h <= 0x7c00u; ++h)
      value.push_back(h == 0x7c00u ? 65536.0 : (double)lq_half_to_float((uint16_t)h));
  }
  // Reference rounding of |f| >= 0: nearest value, ties to the even code.
  uint16_t nearest(double a) const {
    if (a >= 65536.0) return 0x7c00u;
    auto it = std::lower_bound(value.begin(), value.end(), a);
    size_t hi = (size_t)(it - value.begin());
    if (value[hi] == a) return (uint16_t)hi;
    size_t lo = hi - 1;
    double dlo = a - value[lo], dhi = value[hi] - a;
    if (dlo < dhi) return (uint16_t)lo;
    if (dhi < dlo) return (uint16_t)hi;
    return (uint16_t)((lo & 1u) ? hi : lo);
  }
};

}  // namespace

LQ_TEST(half_every_half_round_trips) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = lq_half_to_float((uint16_t)h);
    const uint16_t back = lq_float_to_half(f);
    if (is_nan_half((uint16_t)h)) {
      // A NaN stays a NaN of the same sign (its payload is not kept).
      CHECK(std::isnan(f));
      CHECK(is_nan_half(back) && (back & 0x8000u) == (h & 0x8000u));
    } else {
      CHECK_EQ(back, (uint16_t)h);
    }
  }
}

LQ_TEST(half_decodes_known_values) {
  CHECK_EQ(lq_half_to_float(0x3c00u), 1.0f);
  CHECK_EQ(lq_half_to_float(0xc000u), -2.0f);
  CHECK_EQ(lq_half_to_float(0x7bffu), 65504.0f);
  CHECK_EQ(lq_half_to_float(0x0001u), 0x1p-24f);  // smallest subnormal
  CHECK_EQ(lq_half_to_float(0x0400u), 0x1p-14f);  // smallest normal
  CHECK(std::isinf(lq_half_to_float(0x7c00u)) && lq_half_to_float(0x7c00u) > 0);
  CHECK(std::signbit(lq_half_to_float(0x8000u)) && lq_half_to_float(0x8000u) == 0.0f);
}

LQ_TEST(half_rounds_like_the_reference) {
  const HalfTable table;
  size_t checked = 0;
  auto check_float = [&](float f) {
    const uint16_t want = table.nearest(std::fabs((double)f)) | (std::signbit(f) ? 0x8000u : 0u);
    const uint16_t got = lq_float_to_half(f);
    CHECK_EQ(got, want);
    ++checked;
  };
  // Every midpoint between neighbouring halves (exact in float), and one float ulp
  // either side of it: the cases where rounding decides.
  for (size_t k = 0; k + 1 < table.value.size(); ++k) {
    const float mid = (float)((table.value[k] + table.value[k + 1]) / 2);
    for (float f : {mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1e30f)}) {
      check_float(f);
      check_float(-f);
    }
  }
  // A stride through all finite floats, so every exponent range is visited.
  const uint32_t kStride = 2477;
  for (uint32_t bits = 0; bits < 0x7f800000u; bits += kStride) check_float(lq_bits_f32(bits));
  CHECK_EQ(checked, 6 * (table.value.size() - 1) + (0x7f800000u + kStride - 1) / kStride);
}

LQ_TEST(half_edge_cases) {
  CHECK_EQ(lq_float_to_half(65504.0f), 0x7bffu);
  CHECK_EQ(lq_float_to_half(65519.99f), 0x7bffu);      // below the midpoint to 65536
  CHECK_EQ(lq_float_to_half(65520.0f), 0x7c00u);       // the tie goes to even: infinity
  CHECK_EQ(lq_float_to_half(1e10f), 0x7c00u);
  CHECK_EQ(lq_float_to_half(-1e10f), 0xfc00u);
  CHECK_EQ(lq_float_to_half(0x1p-25f), 0x0000u);        // tie between 0 and 2^-24: even
  CHECK_EQ(lq_float_to_half(0x1.000002p-25f), 0x0001u); // just above the tie
  CHECK_EQ(lq_float_to_half(0x1p-30f), 0x0000u);        // underflow
  CHECK_EQ(lq_float_to_half(-0.0f), 0x8000u);
  CHECK(is_nan_half(lq_float_to_half(NAN)));
  CHECK_EQ(lq_float_to_half(INFINITY), 0x7c00u);
}
