// Internal: every component of one pair encoded in the configurations the allocator
// asks for. A configuration is a width for b_i and one for a_i (0..8; both 0 or
// neither) and a group option k shared by both:
//   k = 0  the user's group size (shift 0)
//   k = 1  four times it (shift 2)
//   k = 2  one group for the whole vector
// Budget mode may pick any; paper mode uses k = 0 only.
#ifndef LORAQUANT_CANDIDATES_H
#define LORAQUANT_CANDIDATES_H

#include <cstdint>
#include <vector>

#include "loraquant/compress.h"
#include "loraquant/format.h"
#include "loraquant/svd.h"

namespace loraquant {

constexpr uint32_t kGroupOptions = 3;

struct Config {
  uint32_t wb = 0, wa = 0, k = 0;
  bool kept() const { return wb > 0; }
};

class Candidates {
 public:
  Candidates(Factors f, uint32_t group, bool range_search);

  uint32_t r() const { return f_.r; }
  uint32_t group() const { return group_; }
  bool range_search() const { return search_; }
  const Factors& factors() const { return f_; }
  float unit() const { return unit_; }
  // Whether option k differs from option k-1 for this pair's vector lengths.
  bool option_distinct(uint32_t k) const;
  uint32_t b_shift(uint32_t k) const { return bshift_[k]; }
  uint32_t a_shift(uint32_t k) const { return ashift_[k]; }
  // Stored bytes of one component in configuration c (both vector blocks).
  uint64_t cost(Config c) const;
  // |b_i a_i^T - b_hat a_hat^T|_F^2 in configuration c (0 widths: dropped); for
  // calibrated factors, in the output metric: |(b_i a_i^T - b_hat a_hat^T) L|_F^2.
  double err(uint32_t i, Config c);
  // A lower bound of err(i, c) from the sides already encoded, without encoding any:
  // with one vector's encoding fixed, the best the other could do leaves
  // sigma^2 (1 - cos^2(x, x_hat)) (0 when neither side of c is encoded yet).
  double err_floor(uint32_t i, Config c) const;
  // Fix one configuration per component; payload, decoded and refit then use it.
  void select(const std::vector<Config>& cfg);
  // The payload of the selection (format.h).
  std::vector<uint8_t> payload() const;
  // Decoded factors of the selection: b_hat (r x m), a_hat (r x n), component-major.
  void decoded(std::vector<float>& b_hat, std::vector<float>& a_hat) const;
  // Least-squares re-fit of the selection, alternating: A given the quantized B, then
  // B given the quantized A, each re-quantized in its configuration. A round is kept
  // only if it lowers the exact error. Returns the number of rounds kept.
  uint32_t refit(uint32_t rounds);

 private:
  // One vector (side 0: b_i, side 1: a_i) at one width and group option: its scales
  // (the codes follow from them) and what the exact error needs. Blocks are written
  // for the selection only.
  struct Side {
    bool done = false;
    double dot = 0, norm2 = 0;  // x . x_hat and |x_hat|^2, against the exact vector
    std::vector<uint16_t> scales;  // (a side of calibrated factors: dot and norm2 are
                                   // L^T x . L^T x_hat and |L^T x_hat|^2)
  };
  struct Chosen {
    std::vector<uint8_t> bblk, ablk;
    std::vector<float> bdeq, adeq;
  };
  Side& side(uint32_t i, uint32_t s, uint32_t w, uint32_t k);
  size_t slot(uint32_t i, uint32_t s, uint32_t w, uint32_t k) const {
    return (((size_t)i * 2 + s) * LQ_MAX_WIDTH + (w - 1)) * kGroupOptions + k;
  }
  // out = L^T x for a vector x of length n (calibrated factors only).
  void whiten(const double* x, double* out) const;
  uint32_t len(uint32_t s) const { return s ? f_.n : f_.m; }
  uint64_t group_of(uint32_t s, uint32_t k) const {
    return lq_group(group_, s ? ashift_[k] : bshift_[k]);
  }

  Factors f_;
  uint32_t group_;
  bool search_;
  float unit_;
  uint32_t bshift_[kGroupOptions], ashift_[kGroupOptions];
  std::vector<float> bf_, af_;  // float copies of the factors, component-major
  std::vector<double> aw_;      // calibrated factors: L^T a_i, component-major (else empty)
  std::vector<double> norm2_;   // |b_i|^2, |a_i|^2 (|L^T a_i|^2 calibrated), interleaved
  std::vector<Side> cache_;     // r x 2 sides x LQ_MAX_WIDTH x kGroupOptions
  std::vector<Config> cfg_;     // the selection
  std::vector<Chosen> chosen_;  // its encodings (copied from the cache, then re-fitted)
};

// Exact |X - Y|_F / |X|_F, X from the exact factors, Y from decoded ones (r x m, r x n).
// With `output` and calibrated factors: |(X - Y) L|_F / |X L|_F, the output error.
double relative_error(const Factors& f, const std::vector<float>& b_hat,
                      const std::vector<float>& a_hat, bool output = false);

// Configurations by greedy marginal gain per byte over all components of all pairs,
// within `budget` bytes of vector blocks; with `relative`, each pair's squared error
// counts over its |s B A|_F^2. Returns one configuration vector per pair.
std::vector<std::vector<Config>> allocate_greedy(std::vector<Candidates*>& pairs, int64_t budget,
                                                 bool relative);

}  // namespace loraquant

#endif
