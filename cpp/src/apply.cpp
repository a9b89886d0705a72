// CPU adapter path: y = x @ (B_hat A_hat)^T straight from the packed codes.
#include <algorithm>
#include <cstring>
#include <vector>

#include "loraquant/format.h"
#include "loraquant/half.h"
#include "loraquant/module.h"
#include "loraquant/quantize.h"

namespace loraquant {

namespace {

// Decode a vector block one group at a time, streaming the code words through a
// 64-bit register instead of locating every entry (the reference, decode_vector,
// does that).
void decode_fast(const uint8_t* block, uint32_t len, uint32_t w, uint64_t group, float unit,
                 float* out) {
  const uint16_t* scales = reinterpret_cast<const uint16_t*>(block);
  const uint32_t* words =
      reinterpret_cast<const uint32_t*>(block + lq_pad4(lq_scale_bytes(len, w, group)));
  const uint32_t mask = (1u << w) - 1u;
  uint64_t acc = 0;
  uint32_t have = 0;
  size_t k = 0;
  for (uint64_t beg = 0, gi = 0; beg < len; beg += group, ++gi) {
    const uint32_t end = (uint32_t)std::min<uint64_t>(len, beg + group);
    float lo, step;
    if (w == 1) {
      float a = lq_half_to_float(scales[gi]) * unit;
      lo = -a;
      step = 2.0f * a;
    } else {
      step = lq_half_to_float(scales[2 * gi]) * unit;
      lo = lq_half_to_float(scales[2 * gi + 1]) * unit;
    }
    for (uint32_t j = (uint32_t)beg; j < end; ++j) {
      if (have < w) {
        acc |= (uint64_t)words[k++] << have;
        have += 32;
      }
      out[j] = lo + (float)(uint32_t)(acc & mask) * step;
      acc >>= w;
      have -= w;
    }
  }
}

// x . v in a fixed order: eight running sums (j mod 8), then a fixed tree. Independent
// lanes let the compiler vectorize without reassociating, and every row is summed the
// same way whatever the batch, so a row alone and in a batch give the same bits.
float dot8(const float* x, const float* v, uint32_t n) {
  float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  uint32_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int k = 0; k < 8; ++k) s[k] += x[j + k] * v[j + k];
  for (int k = 0; j < n; ++j, ++k) s[k] += x[j] * v[j];
  return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
}

// The live components, decoded once per call into scratch that is freed on return (the
// module itself keeps only its codes): a_i as rows of A (k x n), b_i as rows of B (k x m).
struct Decoded {
  uint32_t k = 0;
  std::vector<float> A, B;
  explicit Decoded(const Module& mod) {
    const uint32_t m = mod.m(), n = mod.n();
    for (uint32_t i = 0; i < mod.r(); ++i) k += mod.b_width(i) != 0;
    A.resize((size_t)k * n);
    B.resize((size_t)k * m);
    for (uint32_t i = 0, c = 0; i < mod.r(); ++i) {
      if (mod.b_width(i) == 0) continue;
      decode_fast(mod.a_block(i), n, mod.a_width(i), mod.a_group(i), mod.unit(), &A[(size_t)c * n]);
      decode_fast(mod.b_block(i), m, mod.b_width(i), mod.b_group(i), mod.unit(), &B[(size_t)c * m]);
      ++c;
    }
  }
};

// One row at a time, so that the row's output stays in cache while every component adds
// to it, in component order: a row gives the same bits alone and in any batch.
void apply_rows(const Decoded& d, uint32_t m, uint32_t n, const float* x, size_t rows, float* y) {
  std::vector<float> t(d.k);
  for (size_t row = 0; row < rows; ++row) {
    const float* xr = x + row * n;
    float* yr = y + row * m;
    for (uint32_t c = 0; c < d.k; ++c) t[c] = dot8(xr, &d.A[(size_t)c * n], n);
    std::memset(yr, 0, sizeof(float) * m);
    for (uint32_t c = 0; c < d.k; ++c) {
      const float tc = t[c];
      const float* vb = &d.B[(size_t)c * m];
      for (uint32_t j = 0; j < m; ++j) yr[j] += tc * vb[j];
    }
  }
}

}  // namespace

void Module::apply(const float* x, size_t batch, float* y) const {
  const Decoded d(*this);
  // Rows are independent; threads take blocks of rows.
  const long blocks = (long)std::min<size_t>(batch / 32 + 1, 64);
#pragma omp parallel for schedule(static) if (blocks > 1)
  for (long b = 0; b < blocks; ++b) {
    size_t beg = batch * (size_t)b / (size_t)blocks, end = batch * (size_t)(b + 1) / (size_t)blocks;
    if (end > beg) apply_rows(d, m_, n_, x + beg * n_, end - beg, y + beg * m_);
  }
}

void Module::apply_ref(const float* x, size_t batch, float* y) const {
  std::vector<float> A((size_t)r_ * n_), B((size_t)m_ * r_);
  dequantize(A.data(), B.data());
  std::vector<double> t(r_);
  for (size_t row = 0; row < batch; ++row) {
    for (uint32_t i = 0; i < r_; ++i) {
      t[i] = 0;
      for (uint32_t c = 0; c < n_; ++c) t[i] += (double)A[(size_t)i * n_ + c] * x[row * n_ + c];
    }
    for (uint32_t j = 0; j < m_; ++j) {
      double s = 0;
      for (uint32_t i = 0; i < r_; ++i) s += (double)B[(size_t)j * r_ + i] * t[i];
      y[row * m_ + j] = (float)s;
    }
  }
}

}  // namespace loraquant
