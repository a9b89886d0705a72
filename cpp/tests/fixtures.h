// Test data shared by the C++ unit tests: deterministic random pairs and a sample adapter.
#ifndef LORAQUANT_TEST_FIXTURES_H
#define LORAQUANT_TEST_FIXTURES_H

#include <cstdint>
#include <vector>

#include "loraquant/adapter_file.h"
#include "loraquant/compress.h"

namespace lqtest {

// A LoRA pair: A is r x n, B is m x r, row-major, entries uniform in [-1, 1).
struct Pair {
  uint32_t m = 0, n = 0, r = 0;
  std::vector<double> A, B;
  loraquant::PairInput input(double scaling) const;
};
Pair random_pair(uint32_t m, uint32_t n, uint32_t r, uint64_t seed);

loraquant::Compressed compress_pair(const Pair& p, double scaling, double bits = 2.0,
                                    uint32_t group = 128);

// Three modules of awkward shapes (one in paper mode, one negative scaling), four extras
// (F32 matrix, BF16 vector, I64 scalar, empty U8) and a peft config with escapes.
loraquant::Adapter sample_adapter();

// x_j = sin(j + 1): the probe vector of Module::probe_norm.
std::vector<double> probe_vector(uint32_t n);

}  // namespace lqtest

#endif
