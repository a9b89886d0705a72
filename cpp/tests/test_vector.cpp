// Vector blocks: encode_vector's decoded output is exactly what decode_vector reads
// back, every entry lies within half a quantization step (plus the fp16 rounding of
// the stored scales), and the range search never does worse than min/max.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "harness.h"
#include "loraquant/format.h"
#include "loraquant/half.h"
#include "loraquant/quantize.h"

namespace lq = loraquant;

namespace {

constexpr size_t kLengths[] = {1, 2, 3, 5, 7, 31, 33, 127, 129, 1000};
constexpr uint32_t kGroups[] = {1, 3, 32, 128, 2000};
// A stored scale is an fp16 number of units: off by at most half an ulp, which is
// 2^-11 relative for normal halves and 2^-25 units for subnormal ones.
constexpr double kFp16Rel = 0x1p-11;
constexpr double kFp16AbsUnits = 0x1p-25;
// Float arithmetic of (x - zmin) / delta and zmin + code * delta, relative to the
// group's magnitude: a few float ulps.
constexpr double kFloatRel = 8 * 0x1p-24;

struct Block {
  std::vector<uint8_t> bytes;
  std::vector<float> deq;
};

Block encode(const std::vector<float>& x, uint32_t w, uint32_t g, float unit, bool search) {
  Block b;
  b.bytes.assign(lq_vector_bytes(x.size(), w, g), 0xEE);
  b.deq.assign(x.size(), NAN);
  lq::encode_vector(x.data(), x.size(), w, g, unit, search, b.bytes.data(), b.deq.data());
  return b;
}

float scale_at(const Block& b, size_t k, float unit) {
  uint16_t h;
  std::memcpy(&h, b.bytes.data() + 2 * k, 2);
  return lq_half_to_float(h) * unit;
}

std::vector<float> random_vector(size_t len, lqtest::Rng& rng) {
  std::vector<float> x(len);
  const double scale = std::ldexp(1.0, (int)rng.below(20) - 10);  // magnitudes 2^-10 .. 2^9
  for (auto& v : x) v = (float)(scale * rng.symmetric());
  return x;
}

// The unit the encoder would be given for this vector alone.
float unit_for(const std::vector<float>& x) {
  double mx = 0;
  for (float v : x) mx = std::max(mx, (double)std::fabs(v));
  return lq::choose_unit(mx);
}

// check(width, group, x) for random vectors of every length and group size, widths lo..hi.
template <class F>
void for_each_vector(uint32_t lo, uint32_t hi, uint64_t seed, F&& check) {
  lqtest::Rng rng(seed);
  for (uint32_t w = lo; w <= hi; ++w)
    for (size_t len : kLengths)
      for (uint32_t g : kGroups) check(w, g, random_vector(len, rng));
}

}  // namespace

LQ_TEST(vector_decode_matches_encoder_output) {
  for_each_vector(1, LQ_MAX_WIDTH, 11, [](uint32_t w, uint32_t g, const std::vector<float>& x) {
    const size_t len = x.size();
    const float unit = unit_for(x);
    const Block b = encode(x, w, g, unit, true);
    std::vector<float> out(len, NAN);
    lq::decode_vector(b.bytes.data(), len, w, g, unit, out.data());
    CHECK(std::memcmp(out.data(), b.deq.data(), len * 4) == 0);
    // The pad between scales and codes is zero.
    const uint64_t sb = lq_scale_bytes(len, w, g);
    bool zero_pad = true;
    for (uint64_t k = sb; k < lq_pad4(sb); ++k) zero_pad = zero_pad && b.bytes[k] == 0;
    CHECK(zero_pad);
  });
}

LQ_TEST(vector_rtn_within_half_a_step) {
  for_each_vector(2, LQ_MAX_WIDTH, 12, [](uint32_t w, uint32_t g, const std::vector<float>& x) {
    const size_t len = x.size();
    const float unit = unit_for(x);
    const Block b = encode(x, w, g, unit, false);
    const double qmax = (double)((1u << w) - 1);
    bool ok = true;
    for (size_t beg = 0, gi = 0; beg < len; beg += g, ++gi) {
      const size_t end = std::min(len, beg + g);
      const double delta = scale_at(b, 2 * gi, unit), zmin = scale_at(b, 2 * gi + 1, unit);
      double gmax = 0;
      for (size_t j = beg; j < end; ++j) gmax = std::max(gmax, (double)std::fabs(x[j]));
      const double bound = 0.5 * delta + kFp16Rel * (std::fabs(zmin) + qmax * delta) +
                           (1 + qmax) * kFp16AbsUnits * unit + kFloatRel * gmax;
      for (size_t j = beg; j < end; ++j) ok = ok && std::fabs((double)x[j] - b.deq[j]) <= bound;
    }
    CHECK(ok);
  });
}

LQ_TEST(vector_range_search_never_worse) {
  for_each_vector(2, 4, 13, [](uint32_t w, uint32_t g, const std::vector<float>& x) {
    const size_t len = x.size();
    const float unit = lq::choose_unit(1024.0);
    const Block plain = encode(x, w, g, unit, false), searched = encode(x, w, g, unit, true);
    bool ok = true;
    for (size_t beg = 0; beg < len; beg += g) {
      double e0 = 0, e1 = 0;
      for (size_t j = beg; j < std::min(len, beg + (size_t)g); ++j) {
        e0 += std::pow((double)x[j] - plain.deq[j], 2);
        e1 += std::pow((double)x[j] - searched.deq[j], 2);
      }
      // Both errors are summed in float inside the encoder; allow that rounding.
      ok = ok && e1 <= e0 * (1 + 1e-5) + 1e-30;
    }
    CHECK(ok);
  });
}

LQ_TEST(vector_sign_quantizer) {
  for_each_vector(1, 1, 14, [](uint32_t w, uint32_t g, const std::vector<float>& x) {
    const size_t len = x.size();
    const float unit = lq::choose_unit(1024.0);
    const Block b = encode(x, w, g, unit, true);
    bool ok = true;
    for (size_t beg = 0, gi = 0; beg < len; beg += g, ++gi) {
      const size_t end = std::min(len, beg + g);
      double mean = 0;
      for (size_t j = beg; j < end; ++j) mean += std::fabs((double)x[j]);
      mean /= (double)(end - beg);
      const double alpha = scale_at(b, gi, unit);
      ok = ok && std::fabs(alpha - mean) <= (kFp16Rel + kFloatRel) * mean + kFp16AbsUnits * unit;
      for (size_t j = beg; j < end; ++j) ok = ok && b.deq[j] == (x[j] >= 0 ? alpha : -alpha);
    }
    CHECK(ok);
  });
}
