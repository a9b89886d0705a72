// Group quantizers and code packing. The layout is defined in format.h.
#include "loraquant/quantize.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "loraquant/format.h"
#include "loraquant/half.h"

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

// Code of one entry: round half up of (x - zmin) / delta, clamped to [0, qmax].
inline float rtn_level(float x, float zmin, float inv, float qmax) {
  float v = (x - zmin) * inv;
  v = v < 0.0f ? 0.0f : v;
  v = v > qmax ? qmax : v;
  return (float)(int32_t)(v + 0.5f);
}

// Squared error of an RTN group with stored delta/zmin. Eight partial sums let the
// compiler vectorise without reassociating one sum.
inline float rtn_error(const float* x, size_t len, float delta, float zmin, uint32_t qmax) {
  const float inv = delta > 0 ? 1.0f / delta : 0.0f, fq = (float)qmax;
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  size_t j = 0;
  for (; j + 8 <= len; j += 8)
    for (int k = 0; k < 8; ++k) {
      float e = x[j + k] - (zmin + rtn_level(x[j + k], zmin, inv, fq) * delta);
      acc[k] += e * e;
    }
  float err = 0;
  for (; j < len; ++j) {
    float e = x[j] - (zmin + rtn_level(x[j], zmin, inv, fq) * delta);
    err += e * e;
  }
  for (int k = 0; k < 8; ++k) err += acc[k];
  return err;
}

inline void rtn_codes(const float* x, size_t len, float delta, float zmin, uint32_t qmax,
                      uint8_t* codes) {
  const float inv = delta > 0 ? 1.0f / delta : 0.0f, fq = (float)qmax;
  for (size_t j = 0; j < len; ++j) codes[j] = (uint8_t)rtn_level(x[j], zmin, inv, fq);
}

// Range search: the [lo, hi] range is shrunk about its middle by a factor p. A coarse
// geometric grid (long groups of Gaussian-like entries want p near 0.4 at 2 bits,
// short ones near 0.8), then two points either side of the best.
constexpr float kCoarse[] = {1.0f, 0.8f, 0.64f, 0.512f, 0.41f, 0.328f};
constexpr float kFine[] = {0.9f, 1.1f};

void encode_rtn_group(const float* x, size_t len, uint32_t width, float unit, bool search,
                      uint16_t* stored, uint8_t* codes) {
  float lo = x[0], hi = x[0];
  for (size_t j = 1; j < len; ++j) {
    lo = std::min(lo, x[j]);
    hi = std::max(hi, x[j]);
  }
  const uint32_t qmax = (1u << width) - 1u;
  const float mid = 0.5f * (lo + hi), half = 0.5f * (hi - lo);
  auto params = [&](float p, uint16_t* st, float* delta, float* zmin) {
    const float clo = mid - half * p, chi = mid + half * p;
    *delta = round_scale((chi - clo) / (float)qmax, unit, st ? &st[0] : nullptr);
    *zmin = round_scale(clo, unit, st ? &st[1] : nullptr);
  };
  float best_p = 1.0f;
  if (search) {
    float best = INFINITY, delta, zmin;
    auto consider = [&](float p) {
      params(p, nullptr, &delta, &zmin);
      const float e = rtn_error(x, len, delta, zmin, qmax);
      if (e < best) {
        best = e;
        best_p = p;
      }
    };
    for (float p : kCoarse) consider(p);
    const float centre = best_p;
    for (float f : kFine)
      if (centre * f <= 1.0f) consider(centre * f);
  }
  float delta, zmin;
  params(best_p, stored, &delta, &zmin);
  rtn_codes(x, len, delta, zmin, qmax, codes);
}

void encode_sign_group(const float* x, size_t len, float unit, uint16_t* stored,
                       uint8_t* codes) {
  double s = 0;
  for (size_t j = 0; j < len; ++j) s += std::fabs((double)x[j]);
  round_scale((float)(s / (double)len), unit, stored);  // mean |x| minimises the error
  for (size_t j = 0; j < len; ++j) codes[j] = x[j] >= 0.0f ? 1u : 0u;
}

}  // namespace

void encode_vector(const float* x, size_t len, uint32_t width, uint64_t group, float unit,
                   bool range_search, uint8_t* dst, float* deq) {
  const size_t groups = (len + group - 1) / group;
  const uint64_t sbytes = lq_scale_bytes(len, width, group);
  std::memset(dst, 0, lq_vector_bytes(len, width, group));
  std::vector<uint16_t> scales(width == 1 ? groups : 2 * groups);
  std::vector<uint8_t> codes(len);
  for (size_t gi = 0; gi < groups; ++gi) {
    size_t beg = gi * group, cnt = (size_t)std::min<uint64_t>(group, len - beg);
    if (width == 1)
      encode_sign_group(x + beg, cnt, unit, &scales[gi], codes.data() + beg);
    else
      encode_rtn_group(x + beg, cnt, width, unit, range_search, &scales[2 * gi],
                       codes.data() + beg);
  }
  std::memcpy(dst, scales.data(), sbytes);
  uint32_t* words = reinterpret_cast<uint32_t*>(dst + lq_pad4(sbytes));
  pack_codes(codes.data(), len, width, words);
  if (!deq) return;
  // The decoded values straight from the codes, by decode_vector's own expressions.
  for (size_t gi = 0; gi < groups; ++gi) {
    const size_t beg = gi * group, end = beg + (size_t)std::min<uint64_t>(group, len - beg);
    if (width == 1) {
      const float a = lq_half_to_float(scales[gi]) * unit;
      for (size_t j = beg; j < end; ++j) deq[j] = codes[j] ? a : -a;
    } else {
      const float delta = lq_half_to_float(scales[2 * gi]) * unit;
      const float zmin = lq_half_to_float(scales[2 * gi + 1]) * unit;
      for (size_t j = beg; j < end; ++j) deq[j] = zmin + (float)codes[j] * delta;
    }
  }
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
      float a = lq_half_to_float(scales[gi]) * unit;
      out[j] = c ? a : -a;
    } else {
      float delta = lq_half_to_float(scales[2 * gi]) * unit;
      float zmin = lq_half_to_float(scales[2 * gi + 1]) * unit;
      out[j] = zmin + (float)c * delta;
    }
  }
}

}  // namespace loraquant
