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
inline uint32_t rtn_code(float x, float zmin, float inv, float qmax) {
  float v = (x - zmin) * inv;
  v = std::min(std::max(v, 0.0f), qmax);
  return (uint32_t)(v + 0.5f);
}

// Codes for an RTN group with stored delta/zmin; returns the squared error.
inline float rtn_codes(const float* x, size_t len, float delta, float zmin, uint32_t qmax,
                       uint8_t* codes) {
  float err = 0;
  const float inv = delta > 0 ? 1.0f / delta : 0.0f, fq = (float)qmax;
  for (size_t j = 0; j < len; ++j) {
    uint32_t q = rtn_code(x[j], zmin, inv, fq);
    if (codes) codes[j] = (uint8_t)q;
    float e = x[j] - (zmin + (float)q * delta);
    err += e * e;
  }
  return err;
}

// Shrink factors of the [lo, hi] range tried by the range search, about its middle.
constexpr float kShrink[] = {1.0f, 0.95f, 0.9f, 0.85f, 0.8f, 0.75f, 0.7f, 0.65f, 0.6f, 0.55f};

void encode_rtn_group(const float* x, size_t len, uint32_t width, float unit, bool search,
                      uint16_t* stored, uint8_t* codes) {
  float lo = x[0], hi = x[0];
  for (size_t j = 1; j < len; ++j) {
    lo = std::min(lo, x[j]);
    hi = std::max(hi, x[j]);
  }
  const uint32_t qmax = (1u << width) - 1u;
  const float mid = 0.5f * (lo + hi), half = 0.5f * (hi - lo);
  size_t ntry = search ? sizeof(kShrink) / sizeof(kShrink[0]) : 1;
  float best = INFINITY;
  float best_p = 1.0f;
  for (size_t t = 0; t < ntry; ++t) {
    float clo = mid - half * kShrink[t], chi = mid + half * kShrink[t];
    float delta = round_scale((chi - clo) / (float)qmax, unit, nullptr);
    float zmin = round_scale(clo, unit, nullptr);
    float e = rtn_codes(x, len, delta, zmin, qmax, nullptr);
    if (e < best) {
      best = e;
      best_p = kShrink[t];
    }
  }
  float clo = mid - half * best_p, chi = mid + half * best_p;
  float delta = round_scale((chi - clo) / (float)qmax, unit, &stored[0]);
  float zmin = round_scale(clo, unit, &stored[1]);
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

void encode_vector(const float* x, size_t len, uint32_t width, uint32_t group, float unit,
                   bool range_search, uint8_t* dst, float* deq) {
  const size_t groups = (len + group - 1) / group;
  const uint64_t sbytes = lq_scale_bytes(len, width, group);
  std::memset(dst, 0, lq_vector_bytes(len, width, group));
  std::vector<uint16_t> scales(width == 1 ? groups : 2 * groups);
  std::vector<uint8_t> codes(len);
  for (size_t gi = 0; gi < groups; ++gi) {
    size_t beg = gi * group, cnt = std::min<size_t>(group, len - beg);
    if (width == 1)
      encode_sign_group(x + beg, cnt, unit, &scales[gi], codes.data() + beg);
    else
      encode_rtn_group(x + beg, cnt, width, unit, range_search, &scales[2 * gi],
                       codes.data() + beg);
  }
  std::memcpy(dst, scales.data(), sbytes);
  uint32_t* words = reinterpret_cast<uint32_t*>(dst + lq_pad4(sbytes));
  pack_codes(codes.data(), len, width, words);
  if (deq) decode_vector(dst, len, width, group, unit, deq);
}

void decode_vector(const uint8_t* block, size_t len, uint32_t width, uint32_t group,
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
