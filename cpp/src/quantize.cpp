// Group quantizers and code packing. The layout is defined in format.h.
#include "loraquant/quantize.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "loraquant/format.h"
#include "loraquant/half.h"
#include "quantize_kernels.h"

namespace loraquant {

void pack_codes_ref(const uint8_t* codes, size_t len, uint32_t width, uint32_t* words) {
  size_t nwords = lq_code_words(len, width);
  std::memset(words, 0, nwords * 4);
  for (size_t j = 0; j < len; ++j)
    for (uint32_t b = 0; b < width; ++b)
      if ((codes[j] >> b) & 1u) {
        uint64_t bit = (uint64_t)j * width + b;
        words[bit >> 5] |= 1u << (bit & 31u);
      }
}

void pack_codes(const uint8_t* codes, size_t len, uint32_t width, uint32_t* words) {
  // Accumulate into a 64-bit register and flush whole words.
  uint64_t acc = 0;
  uint32_t nbits = 0;
  size_t k = 0;
  for (size_t j = 0; j < len; ++j) {
    acc |= (uint64_t)codes[j] << nbits;
    nbits += width;
    if (nbits >= 32) {
      words[k++] = (uint32_t)acc;
      acc >>= 32;
      nbits -= 32;
    }
  }
  if (nbits > 0) words[k++] = (uint32_t)acc;
}

void unpack_codes(const uint32_t* words, size_t len, uint32_t width, uint8_t* codes) {
  for (size_t j = 0; j < len; ++j) codes[j] = (uint8_t)lq_get_code(words, j, width);
}

float choose_unit(double max_abs) {
  if (!(max_abs > 0) || !std::isfinite(max_abs)) return 1.0f;
  // Largest scale is at most 2 * max_abs; keep it below 2^14 units (fp16 max 65504).
  int e = (int)std::ceil(std::log2(2.0 * max_abs)) - 14;
  e = std::max(-126, std::min(e, 127));
  return std::ldexp(1.0f, e);
}

namespace {

// fp16 round trip of a scale expressed in units.
inline float round_scale(float v, float unit, uint16_t* stored) {
  uint16_t h = lq_float_to_half(v / unit);
  if (stored) *stored = h;
  return lq_half_to_float(h) * unit;
}

inline float stored_scale(uint16_t h, float unit) { return lq_half_to_float(h) * unit; }

// Range search: the [lo, hi] range is shrunk about its middle by a factor p. A walk on
// a coarse geometric grid (long groups of Gaussian-like entries want p near 0.4 at 2
// bits, short ones near 0.8) from a starting point, downhill to a local minimum: one
// step towards smaller p while that lowers the error, else towards larger p. Then two
// points either side of the best. A move needs a strictly lower error; a candidate
// stops being summed as soon as its partial error reaches the best so far (it can no
// longer win). The error of a group against p has one minimum on this grid for the
// factors we see (on a 7B-shaped adapter the walk found the full grid's minimum in
// every group), and the walk evaluates 3 coarse points instead of 6. The full range
// (p = 1, plain min/max) is always among the candidates.
constexpr float kCoarse[] = {1.0f, 0.8f, 0.64f, 0.512f, 0.41f, 0.328f};
constexpr int kCoarseCount = 6;
constexpr float kFine[] = {0.9f, 1.1f};

// Where the walk starts for the first group of a vector: the grid point that wins most
// often for this width and group length (later groups start at their predecessor's).
int coarse_start(uint32_t width, uint64_t group) {
  const int longer = group <= 256 ? 0 : group <= 1024 ? 1 : 2;
  static const int start[3][3] = {{2, 3, 4}, {1, 2, 2}, {0, 1, 1}};  // width 2, 3, >= 4
  return start[width >= 4 ? 2 : width - 2][longer];
}

// `walk`: in, the coarse index to start from; out, the coarse index that won.
void rtn_group_scales(const Kernels& K, const float* x, size_t len, uint32_t width,
                      float unit, bool search, int* walk, uint16_t* stored) {
  float lo, hi;
  K.minmax(x, len, &lo, &hi);
  const float qmax = (float)((1u << width) - 1u);
  const float mid = 0.5f * (lo + hi), half = 0.5f * (hi - lo);
  auto params = [&](float p, uint16_t* st, float* delta, float* zmin) {
    const float clo = mid - half * p, chi = mid + half * p;
    *delta = round_scale((chi - clo) / qmax, unit, st ? &st[0] : nullptr);
    *zmin = round_scale(clo, unit, st ? &st[1] : nullptr);
  };
  float best_p = 1.0f;
  if (search) {
    float best = INFINITY, delta, zmin;
    auto consider = [&](float p) {
      params(p, nullptr, &delta, &zmin);
      const float e = K.rtn_error(x, len, delta, zmin, qmax, best);
      if (e < best) {
        best = e;
        best_p = p;
        return true;
      }
      return false;
    };
    int at = *walk;
    consider(kCoarse[at]);
    if (at + 1 < kCoarseCount && consider(kCoarse[at + 1]))
      for (++at; at + 1 < kCoarseCount && consider(kCoarse[at + 1]);) ++at;
    else
      while (at > 0 && consider(kCoarse[at - 1])) --at;
    *walk = at;
    const float centre = best_p;
    for (float f : kFine)
      if (centre * f <= 1.0f) consider(centre * f);
    if (at > 0) consider(1.0f);  // never worse than min/max, whatever the walk found
  }
  float delta, zmin;
  params(best_p, stored, &delta, &zmin);
}

// Sign groups: the mean |x| minimises the error.
void sign_group_scale(const Kernels& K, const float* x, size_t len, float unit, uint16_t* stored) {
  round_scale((float)(K.abs_sum(x, len) / (double)len), unit, stored);
}

}  // namespace

void choose_scales(const float* x, size_t len, uint32_t width, uint64_t group, float unit,
                   bool range_search, uint16_t* scales) {
  const Kernels& K = active_kernels();
  const size_t groups = (len + group - 1) / group;
  int walk = width >= 2 ? coarse_start(width, std::min<uint64_t>(group, len)) : 0;
  for (size_t gi = 0; gi < groups; ++gi) {
    const size_t beg = gi * group, cnt = (size_t)std::min<uint64_t>(group, len - beg);
    if (width == 1)
      sign_group_scale(K, x + beg, cnt, unit, &scales[gi]);
    else
      rtn_group_scales(K, x + beg, cnt, width, unit, range_search, &walk, &scales[2 * gi]);
  }
}

void write_block(const float* x, size_t len, uint32_t width, uint64_t group, float unit,
                 const uint16_t* scales, uint8_t* dst, float* deq) {
  const size_t groups = (len + group - 1) / group;
  const uint64_t sbytes = lq_scale_bytes(len, width, group);
  std::memset(dst, 0, lq_vector_bytes(len, width, group));
  std::memcpy(dst, scales, sbytes);
  std::vector<uint8_t> codes(len);
  const float qmax = (float)((1u << width) - 1u);
  for (size_t gi = 0; gi < groups; ++gi) {
    const size_t beg = gi * group, end = beg + (size_t)std::min<uint64_t>(group, len - beg);
    if (width == 1) {
      const float a = stored_scale(scales[gi], unit);
      for (size_t j = beg; j < end; ++j) {
        codes[j] = x[j] >= 0.0f ? 1u : 0u;
        if (deq) deq[j] = codes[j] ? a : -a;  // decode_vector's own expressions
      }
    } else {
      const float delta = stored_scale(scales[2 * gi], unit);
      const float zmin = stored_scale(scales[2 * gi + 1], unit);
      const float inv = delta > 0 ? 1.0f / delta : 0.0f;
      for (size_t j = beg; j < end; ++j) {
        codes[j] = (uint8_t)rtn_level(x[j], zmin, inv, qmax);
        if (deq) deq[j] = zmin + (float)codes[j] * delta;
      }
    }
  }
  pack_codes(codes.data(), len, width, reinterpret_cast<uint32_t*>(dst + lq_pad4(sbytes)));
}

void decoded_dot(const float* x, const double* xe, size_t len, uint32_t width, uint64_t group,
                 float unit, const uint16_t* scales, double* dot, double* norm2) {
  const Kernels& K = active_kernels();
  const size_t groups = (len + group - 1) / group;
  const float qmax = (float)((1u << width) - 1u);
  double d = 0, q = 0;
  for (size_t gi = 0; gi < groups; ++gi) {
    const size_t beg = gi * group, cnt = (size_t)std::min<uint64_t>(group, len - beg);
    if (width == 1) {
      const double a = stored_scale(scales[gi], unit);
      d += a * K.sign_dot(x + beg, xe + beg, cnt);
      q += (double)cnt * a * a;
    } else {
      const float delta = stored_scale(scales[2 * gi], unit);
      const float zmin = stored_scale(scales[2 * gi + 1], unit);
      K.rtn_dot(x + beg, xe + beg, cnt, delta, zmin, qmax, &d, &q);
    }
  }
  *dot = d;
  *norm2 = q;
}

void encode_vector(const float* x, size_t len, uint32_t width, uint64_t group, float unit,
                   bool range_search, uint8_t* dst, float* deq) {
  std::vector<uint16_t> scales(lq_scale_bytes(len, width, group) / 2);
  choose_scales(x, len, width, group, unit, range_search, scales.data());
  write_block(x, len, width, group, unit, scales.data(), dst, deq);
}

void decode_vector(const uint8_t* block, size_t len, uint32_t width, uint64_t group,
                   float unit, float* out) {
  const uint64_t sbytes = lq_scale_bytes(len, width, group);
  const uint16_t* scales = reinterpret_cast<const uint16_t*>(block);
  const uint32_t* words = reinterpret_cast<const uint32_t*>(block + lq_pad4(sbytes));
  for (size_t j = 0; j < len; ++j) {
    size_t gi = j / group;
    uint32_t c = lq_get_code(words, j, width);
    if (width == 1) {
      const float a = stored_scale(scales[gi], unit);
      out[j] = c ? a : -a;
    } else {
      const float delta = stored_scale(scales[2 * gi], unit);
      const float zmin = stored_scale(scales[2 * gi + 1], unit);
      out[j] = zmin + (float)c * delta;
    }
  }
}

}  // namespace loraquant
