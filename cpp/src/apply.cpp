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

void apply_rows(const Module& mod, const float* x, size_t rows, float* y) {
  const uint32_t m = mod.m(), n = mod.n();
  std::vector<float> va(n), vb(m), t(rows);
  std::memset(y, 0, sizeof(float) * rows * m);
  for (uint32_t i = 0; i < mod.r(); ++i) {
    if (mod.b_width(i) == 0) continue;
    decode_fast(mod.a_block(i), n, mod.a_width(i), mod.a_group(i), mod.unit(), va.data());
    for (size_t row = 0; row < rows; ++row) {
      const float* xr = x + row * n;
      float s = 0.0f;
      for (uint32_t j = 0; j < n; ++j) s += xr[j] * va[j];
      t[row] = s;
    }
    decode_fast(mod.b_block(i), m, mod.b_width(i), mod.b_group(i), mod.unit(), vb.data());
    for (size_t row = 0; row < rows; ++row) {
      float* yr = y + row * m;
      const float tr = t[row];
      for (uint32_t j = 0; j < m; ++j) yr[j] += tr * vb[j];
    }
  }
}

}  // namespace

void Module::apply(const float* x, size_t batch, float* y) const {
  // Rows are independent; each thread decodes for its own block of rows.
  const long blocks = (long)std::min<size_t>(batch / 8 + 1, 64);
#pragma omp parallel for schedule(static) if (blocks > 1)
  for (long b = 0; b < blocks; ++b) {
    size_t beg = batch * (size_t)b / (size_t)blocks, end = batch * (size_t)(b + 1) / (size_t)blocks;
    if (end > beg) apply_rows(*this, x + beg * n_, end - beg, y + beg * m_);
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
