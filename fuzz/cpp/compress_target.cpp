// fuzz_compress: compress() on a small pair and options decoded from the bytes.
//
// Bytes 0..9 choose m, n, r, the group size, the mode and its options, and one
// power-of-two exponent each for A, B and the scaling (so magnitudes from 2^-128 to
// 2^127 occur); the rest are the int8 entries of A (r x n) and then B (m x r), cycled.
#include <cmath>
#include <cstring>
#include <stdexcept>

#include "loraquant/compress.h"
#include "loraquant/format.h"
#include "targets.h"

namespace lq_fuzz {

namespace lq = loraquant;

namespace {

constexpr size_t kHead = 10;
constexpr uint32_t kMaxSide = 40, kMaxRank = 8;

struct Input {
  lq::PairInput pair;
  lq::CompressOptions opt;
  std::vector<double> A, B;
};

Input decode(const uint8_t* d, size_t size) {
  uint8_t h[kHead] = {0};
  if (size) std::memcpy(h, d, size < kHead ? size : kHead);
  Input in;
  const uint32_t m = 1 + h[0] % kMaxSide, n = 1 + h[1] % kMaxSide, r = 1 + h[2] % kMaxRank;
  in.opt.group_size = h[3] < 200 ? 1 + h[3] % 64 : 1u << (h[3] % 21);
  in.opt.range_search = h[4] & 2;
  in.opt.refit_rounds = (h[4] >> 2) & 3;
  if (h[4] & 1) {
    in.opt.rho = (h[5] + 1) / 256.0;
    in.opt.high_bits = 2 + h[6] % 7;
  } else {
    in.opt.bits = std::fmin(16.0, 0.25 + h[5] / 16.0);
  }
  const double sa = std::ldexp(1.0, (int8_t)h[7]), sb = std::ldexp(1.0, (int8_t)h[8]);
  in.A.resize((size_t)r * n);
  in.B.resize((size_t)m * r);
  const uint8_t* rest = d + (size < kHead ? size : kHead);
  const size_t nrest = size < kHead ? 0 : size - kHead;
  size_t k = 0;
  for (double& v : in.A) v = nrest ? sa * (int8_t)rest[k++ % nrest] : 0.0;
  for (double& v : in.B) v = nrest ? sb * (int8_t)rest[k++ % nrest] : 0.0;
  in.pair = {in.A.data(), in.B.data(), m, n, r,
             ((h[4] & 16) ? -1.0 : 1.0) * std::ldexp(1.0, (int8_t)h[9] / 4)};
  return in;
}

void check_result(const Input& in, const lq::Compressed& c) {
  const lq::Module& mod = c.module;
  const lq::PairInput& p = in.pair;
  if (mod.m() != p.m || mod.n() != p.n || mod.r() != p.r || mod.group_size() != in.opt.group_size)
    fail("compress returned a module of other dimensions");
  if (c.sigma.size() != p.r) fail("compress returned " + std::to_string(c.sigma.size()) + " sigmas");
  const std::vector<uint8_t> bytes = mod.to_bytes();
  if (lq::Module::from_bytes(bytes.data(), bytes.size()).to_bytes() != bytes)
    fail("a compressed module does not round-trip through its bytes");
  const double prefix = (double)lq_prefix_bytes(p.r);
  if (in.opt.rho == 0) {
    const double budget = std::floor(in.opt.bits * p.r * ((double)p.m + p.n) / 8.0 - prefix);
    if ((double)mod.nbytes() - prefix > std::fmax(0.0, budget))
      fail("compress spent " + std::to_string(mod.nbytes()) + " bytes, over its budget");
  } else {
    for (uint32_t i = 0; i < p.r; ++i)
      if (mod.b_width(i) != mod.a_width(i) ||
          (mod.b_width(i) != 0 && mod.b_width(i) != 1 && mod.b_width(i) != in.opt.high_bits))
        fail("paper mode stored a width other than 0, 1 or high_bits");
  }
  exercise(mod);
}

}  // namespace

void fuzz_compress(const uint8_t* data, size_t size) {
  const Input in = decode(data, size);
  lq::Compressed c;
  try {
    c = lq::compress(in.pair, in.opt);
  } catch (const std::invalid_argument&) {
    return;
  }
  check_result(in, c);
}

}  // namespace lq_fuzz
