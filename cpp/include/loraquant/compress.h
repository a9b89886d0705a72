// LoRAQuant compression: thin SVD, width per component, per-group quantizers, packing.
#ifndef LORAQUANT_COMPRESS_H
#define LORAQUANT_COMPRESS_H

#include <cstdint>
#include <memory>
#include <vector>

#include "loraquant/module.h"

namespace loraquant {

struct CompressOptions {
  double bits = 2.0;         // budget mode: average bits per weight, every stored byte counted
  double rho = 0.0;          // > 0 selects paper mode: energy share of the high part
  uint32_t high_bits = 2;    // paper mode: width of the high part (2..8); the rest is 1 bit
  uint32_t group_size = 128; // entries per quantization group
  bool range_search = true;  // RTN groups pick the least-error shrunken range
  uint32_t refit_rounds = 0; // least-squares re-fits of one factor against the other
  // How compress_many weighs the pairs' errors against each other under one budget:
  // relative (each pair's squared error over its |s B A|_F^2, so that a module with a
  // small update is not starved) or absolute (plain summed squared error).
  bool relative_balance = true;
};

// One LoRA pair: A is r x n, B is m x r, both row-major float64; update = scaling * B A.
struct PairInput {
  const double* A = nullptr;
  const double* B = nullptr;
  uint32_t m = 0, n = 0, r = 0;
  double scaling = 1.0;
  // Calibrated compression (optional): H is the n x n second moment E[x x^T] of the
  // layer's inputs, row-major. The split, the widths and the re-fit then minimise the
  // output error |(s B A - B_hat A_hat) L|_F, L L^T = H + damping * trace(H) / n * I
  // (thin_svd_weighted). Null: data-free, every input direction weighs the same.
  const double* H = nullptr;
  double damping = 0.01;
};

struct Compressed {
  Module module;
  std::vector<double> sigma;  // singular values of scaling * B A (r, descending)
  double rel_error = 0.0;     // |s B A - B_hat A_hat|_F / |s B A|_F (0 when s B A = 0)
};

// Compress one pair. Throws std::invalid_argument on bad input or options.
Compressed compress(const PairInput& in, const CompressOptions& opt);

// Compress many pairs. In budget mode one budget of `bits` per weight is shared by all
// pairs, so that the summed (relative or absolute, see relative_balance) squared error
// is minimised; in paper mode each pair is compressed alone. Uses OpenMP threads where
// built with it.
std::vector<Compressed> compress_many(const std::vector<PairInput>& in,
                                      const CompressOptions& opt);

// The two stages of compress_many, for callers that want to report progress or run
// the first stage on their own threads: prepare() factors one pair and encodes its
// candidate widths (the expensive part), finish() chooses widths for all prepared
// pairs at once (one shared budget in budget mode) and packs them. With `shared`
// (the pair will share a budget with others), prepare() also encodes the candidates
// that the pair's own allocation visits a little above the budget, so that finish(),
// which allocates serially, finds most of what it needs; results do not change.
class Candidates;
std::shared_ptr<Candidates> prepare(const PairInput& in, const CompressOptions& opt,
                                    bool shared = true);
std::vector<Compressed> finish(const std::vector<Candidates*>& prepared,
                               const CompressOptions& opt);

// Paper mode's split: the number of leading components whose cumulative share of
// sum(sigma^2) first reaches rho (the paper's text). The authors' public code keeps one
// fewer (the 0-based index of the first crossing, at least 1); see README.
uint32_t paper_split(const std::vector<double>& sigma, double rho);

}  // namespace loraquant

#endif
