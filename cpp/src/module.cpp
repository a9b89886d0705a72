// Module: validation, serialisation and dequantization of the packed payload.
#include "loraquant/module.h"

#include <algorithm>
#include <cstddef>
#include <cmath>
#include <cstring>
#include <string>

#include "loraquant/format.h"
#include "loraquant/quantize.h"

namespace loraquant {

uint32_t crc32(const uint8_t* data, size_t size, uint32_t seed) {
  static uint32_t table[256];
  static bool ready = [] {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1u) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      table[i] = c;
    }
    return true;
  }();
  (void)ready;
  uint32_t c = seed ^ 0xFFFFFFFFu;
  for (size_t i = 0; i < size; ++i) c = table[(c ^ data[i]) & 0xFFu] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

Layout make_layout(uint32_t m, uint32_t n, uint32_t r, uint32_t group, const uint8_t* prefix) {
  const uint8_t *bw = prefix, *aw = prefix + r, *bs = prefix + 2 * (size_t)r,
                *as = prefix + 3 * (size_t)r;
  Layout L;
  L.b_offset.assign(r, 0);
  L.a_offset.assign(r, 0);
  L.b_group.assign(r, 0);
  L.a_group.assign(r, 0);
  uint64_t off = lq_prefix_bytes(r);
  for (uint32_t i = 0; i < r; ++i) {
    L.b_group[i] = lq_group(group, bs[i]);
    L.a_group[i] = lq_group(group, as[i]);
    L.b_offset[i] = off;
    off += lq_vector_bytes(m, bw[i], L.b_group[i]);
    L.a_offset[i] = off;
    off += lq_vector_bytes(n, aw[i], L.a_group[i]);
  }
  L.payload_bytes = off;
  return L;
}

// The blob's checksum covers the header up to the checksum field, then the payload.
static uint32_t blob_crc(const lq_blob_header& h, const uint8_t* payload, size_t size) {
  uint8_t head[sizeof h];
  std::memcpy(head, &h, sizeof h);
  return crc32(payload, size, crc32(head, offsetof(lq_blob_header, crc32)));
}

static void check_dims(uint32_t m, uint32_t n, uint32_t r, uint32_t group) {
  auto bad = [](const std::string& what) { throw FormatError("invalid module: " + what); };
  if (m == 0 || n == 0 || m > LQ_MAX_DIM || n > LQ_MAX_DIM)
    bad("shape (" + std::to_string(m) + ", " + std::to_string(n) + ") out of range");
  if (r == 0 || r > LQ_MAX_RANK) bad("rank " + std::to_string(r) + " out of range");
  if (group == 0 || group > LQ_MAX_GROUP)
    bad("group size " + std::to_string(group) + " out of range");
}

Module::Module(uint32_t m, uint32_t n, uint32_t r, uint32_t group, std::vector<uint8_t> payload)
    : m_(m), n_(n), r_(r), group_(group), payload_(std::move(payload)) {
  check_dims(m, n, r, group);
  const uint64_t prefix = lq_prefix_bytes(r);
  if (payload_.size() < prefix)
    throw FormatError("payload of " + std::to_string(payload_.size()) +
                      " bytes is shorter than its " + std::to_string(prefix) + "-byte prefix");
  for (uint32_t i = 0; i < r; ++i) {
    const uint32_t bw = payload_[i], aw = payload_[r + i];
    const uint32_t bs = payload_[2 * (size_t)r + i], as = payload_[3 * (size_t)r + i];
    const std::string comp = "component " + std::to_string(i);
    if (bw > LQ_MAX_WIDTH || aw > LQ_MAX_WIDTH)
      throw FormatError(comp + " has a width > 8 (" + std::to_string(bw) + ", " +
                        std::to_string(aw) + ")");
    if ((bw == 0) != (aw == 0)) throw FormatError(comp + " has one factor of width 0, not both");
    if (bs > LQ_MAX_SHIFT || as > LQ_MAX_SHIFT || (bw == 0 && (bs || as)))
      throw FormatError(comp + " has an invalid group shift");
  }
  for (uint64_t k = 4 * (uint64_t)r; k < prefix - 4; ++k)
    if (payload_[k] != 0) throw FormatError("nonzero padding after the group shifts");
  layout_ = make_layout(m, n, r, group, payload_.data());
  if (layout_.payload_bytes != payload_.size())
    throw FormatError("payload is " + std::to_string(payload_.size()) +
                      " bytes but its widths imply " + std::to_string(layout_.payload_bytes));
  std::memcpy(&unit_, payload_.data() + prefix - 4, 4);
  if (!(unit_ > 0) || !std::isfinite(unit_))
    throw FormatError("scale unit " + std::to_string(unit_) + " is not a positive finite number");
}

double Module::avg_bits() const {
  return 8.0 * (double)nbytes() / ((double)r_ * ((double)m_ + (double)n_));
}

std::vector<uint8_t> Module::to_bytes() const {
  lq_blob_header h;
  std::memset(&h, 0, sizeof h);
  std::memcpy(h.magic, LQ_BLOB_MAGIC, 4);
  h.version = LQ_BLOB_VERSION;
  h.header_bytes = sizeof(lq_blob_header);
  h.m = m_;
  h.n = n_;
  h.r = r_;
  h.group_size = group_;
  h.scale_format = LQ_SCALE_FORMAT_FP16;
  h.payload_bytes = payload_.size();
  h.crc32 = blob_crc(h, payload_.data(), payload_.size());
  std::vector<uint8_t> out(sizeof h + payload_.size());
  std::memcpy(out.data(), &h, sizeof h);
  std::memcpy(out.data() + sizeof h, payload_.data(), payload_.size());
  return out;
}

Module Module::from_bytes(const uint8_t* data, size_t size) {
  lq_blob_header h;
  if (size < sizeof h)
    throw FormatError("truncated: " + std::to_string(size) + " bytes, a module header alone is " +
                      std::to_string(sizeof h));
  std::memcpy(&h, data, sizeof h);
  if (std::memcmp(h.magic, LQ_BLOB_MAGIC, 4) != 0) throw FormatError("bad magic: not a loraquant module");
  if (h.version != LQ_BLOB_VERSION)
    throw FormatError("unsupported module version " + std::to_string(h.version));
  if (h.header_bytes != sizeof h || h.scale_format != LQ_SCALE_FORMAT_FP16 || h.reserved0 ||
      h.reserved1)
    throw FormatError("corrupt module header");
  check_dims(h.m, h.n, h.r, h.group_size);
  if (h.payload_bytes != size - sizeof h)
    throw FormatError((h.payload_bytes > size - sizeof h ? "truncated: " : "trailing data: ") +
                      std::string("header declares ") + std::to_string(h.payload_bytes) +
                      " payload bytes, " + std::to_string(size - sizeof h) + " present");
  if (blob_crc(h, data + sizeof h, size - sizeof h) != h.crc32)
    throw FormatError("checksum mismatch: the module is corrupted");
  return Module(h.m, h.n, h.r, h.group_size,
                std::vector<uint8_t>(data + sizeof h, data + size));
}

void Module::dequantize(float* A_hat, float* B_hat) const {
  std::memset(A_hat, 0, sizeof(float) * (size_t)r_ * n_);
  std::memset(B_hat, 0, sizeof(float) * (size_t)m_ * r_);
  std::vector<float> tmp(std::max(m_, n_));
  for (uint32_t i = 0; i < r_; ++i) {
    if (b_width(i) == 0) continue;
    decode_vector(b_block(i), m_, b_width(i), b_group(i), unit_, tmp.data());
    for (uint32_t j = 0; j < m_; ++j) B_hat[(size_t)j * r_ + i] = tmp[j];
    decode_vector(a_block(i), n_, a_width(i), a_group(i), unit_, A_hat + (size_t)i * n_);
  }
}

double Module::probe_norm() const {
  // One component at a time: O(m + n) memory whatever r the header declares.
  std::vector<double> x(n_), y(m_, 0.0);
  std::vector<float> va(n_), vb(m_);
  for (uint32_t j = 0; j < n_; ++j) x[j] = std::sin((double)j + 1.0);
  for (uint32_t i = 0; i < r_; ++i) {
    if (b_width(i) == 0) continue;
    decode_vector(a_block(i), n_, a_width(i), a_group(i), unit_, va.data());
    decode_vector(b_block(i), m_, b_width(i), b_group(i), unit_, vb.data());
    double t = 0;
    for (uint32_t j = 0; j < n_; ++j) t += (double)va[j] * x[j];
    for (uint32_t k = 0; k < m_; ++k) y[k] += (double)vb[k] * t;
  }
  double ss = 0;
  for (uint32_t k = 0; k < m_; ++k) ss += y[k] * y[k];
  return std::sqrt(ss);
}

}  // namespace loraquant
