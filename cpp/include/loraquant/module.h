// A compressed LoRA module: the packed payload of format.h and what can be done with it.
#ifndef LORAQUANT_MODULE_H
#define LORAQUANT_MODULE_H

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace loraquant {

// Malformed serialized data: truncated, corrupted, or of an unknown version.
struct FormatError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Where each component's vector blocks lie inside the payload (derived, never stored).
struct Layout {
  std::vector<uint64_t> b_offset, a_offset;  // per component; meaningless at width 0
  std::vector<uint64_t> b_group, a_group;    // group length of each vector
  uint64_t payload_bytes = 0;
};
// `prefix` points at the payload's b_width[r], a_width[r], b_shift[r], a_shift[r].
Layout make_layout(uint32_t m, uint32_t n, uint32_t r, uint32_t group, const uint8_t* prefix);

class Module {
 public:
  Module() = default;
  // Takes a payload laid out as format.h says; throws FormatError if it is not.
  Module(uint32_t m, uint32_t n, uint32_t r, uint32_t group, std::vector<uint8_t> payload);

  // Header + payload, and its exact inverse (checks sizes, version and CRC-32).
  std::vector<uint8_t> to_bytes() const;
  static Module from_bytes(const uint8_t* data, size_t size);

  uint32_t m() const { return m_; }
  uint32_t n() const { return n_; }
  uint32_t r() const { return r_; }
  uint32_t group_size() const { return group_; }
  // Width of b_i and a_i (0 for both when component i is dropped).
  uint32_t b_width(uint32_t i) const { return payload_[i]; }
  uint32_t a_width(uint32_t i) const { return payload_[r_ + i]; }
  float unit() const { return unit_; }
  const std::vector<uint8_t>& payload() const { return payload_; }
  const Layout& layout() const { return layout_; }
  // Every stored byte (widths, pad, unit, scales, codes), and per weight of r(m+n).
  size_t nbytes() const { return payload_.size(); }
  double avg_bits() const;

  // A_hat: r x n row-major, B_hat: m x r row-major, so that B_hat @ A_hat = dW_hat.
  void dequantize(float* A_hat, float* B_hat) const;
  // y (batch x m) = x (batch x n) @ dW_hat^T, decoding the packed codes on the fly.
  void apply(const float* x, size_t batch, float* y) const;
  // Reference for apply: dequantize, then a plain triple loop.
  void apply_ref(const float* x, size_t batch, float* y) const;

  // |dW_hat x|_2 for x_j = sin(j + 1), j = 0..n-1, in double: a fingerprint that the
  // Python and C++ front ends print alike (`loraquant inspect --probe`).
  double probe_norm() const;

  uint64_t b_group(uint32_t i) const { return layout_.b_group[i]; }
  uint64_t a_group(uint32_t i) const { return layout_.a_group[i]; }
  const uint8_t* b_block(uint32_t i) const { return payload_.data() + layout_.b_offset[i]; }
  const uint8_t* a_block(uint32_t i) const { return payload_.data() + layout_.a_offset[i]; }

 private:
  uint32_t m_ = 0, n_ = 0, r_ = 0, group_ = 0;
  float unit_ = 1.0f;
  std::vector<uint8_t> payload_;
  Layout layout_;
};

// CRC-32 (IEEE, as zlib); `seed` continues an earlier checksum.
uint32_t crc32(const uint8_t* data, size_t size, uint32_t seed = 0);

}  // namespace loraquant

#endif
