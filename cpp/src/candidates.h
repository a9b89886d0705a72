// Internal: every component of one pair encoded at the widths the allocator asks for.
#ifndef LORAQUANT_CANDIDATES_H
#define LORAQUANT_CANDIDATES_H

#include <cstdint>
#include <vector>

#include "loraquant/compress.h"
#include "loraquant/format.h"
#include "loraquant/svd.h"

namespace loraquant {

class Candidates {
 public:
  Candidates(Factors f, uint32_t group, bool range_search);

  uint32_t r() const { return f_.r; }
  uint32_t group() const { return group_; }
  bool range_search() const { return search_; }
  const Factors& factors() const { return f_; }
  float unit() const { return unit_; }
  // Stored bytes of one component at width w (both vector blocks).
  uint64_t cost(uint32_t w) const {
    return lq_vector_bytes(f_.m, w, group_) + lq_vector_bytes(f_.n, w, group_);
  }
  // |b_i a_i^T - b_hat a_hat^T|_F^2 at width w (0: the component is dropped).
  double err(uint32_t i, uint32_t w);
  // Encode widths 1..max_w of every component now (in parallel where built with OpenMP).
  void precompute(uint32_t max_w);
  // The payload for the given widths (format.h).
  std::vector<uint8_t> payload(const std::vector<uint8_t>& widths);
  // Decoded factors for the given widths: b_hat (r x m) and a_hat (r x n), component-major.
  void decoded(const std::vector<uint8_t>& widths, std::vector<float>& b_hat,
               std::vector<float>& a_hat);
  // Replace the stored encoding of component i at width w (used by the re-fit).
  void set_encoding(uint32_t i, uint32_t w, const float* b, const float* a);

 private:
  struct Enc {
    bool done = false;
    double err = 0;
    std::vector<uint8_t> bblk, ablk;
    std::vector<float> bdeq, adeq;
  };
  Enc& enc(uint32_t i, uint32_t w);
  void encode(uint32_t i, uint32_t w, const float* b, const float* a, Enc& e);

  Factors f_;
  uint32_t group_;
  bool search_;
  float unit_;
  std::vector<float> bf_, af_;  // float copies of the factors, component-major
  std::vector<Enc> cache_;      // r x (LQ_MAX_WIDTH + 1)
};

// Widths by a greedy marginal-gain-per-byte allocation over all components of all
// pairs, within `budget` bytes of vector blocks. Returns one width vector per pair.
std::vector<std::vector<uint8_t>> allocate_greedy(std::vector<Candidates*>& pairs,
                                                  int64_t budget);

}  // namespace loraquant

#endif
