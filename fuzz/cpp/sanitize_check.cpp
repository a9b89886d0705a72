// lq_sanitize_check: every fuzz target over a fixed, deterministic set of inputs, for
// builds with AddressSanitizer and UBSan (tests/test_sanitizers.py). Valid blobs of
// several shapes, an adapter file of them and the version-1 file of tests/data, each truncation, byte flips and hostile
// 32-bit values of them, and compress() over pseudo-random pairs of extreme magnitudes.
//
//   lq_sanitize_check                        the fixed set
//   lq_sanitize_check adapter|blob|compress FILE...  replay files (e.g. a libFuzzer crash)
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>

#include "loraquant/adapter_file.h"
#include "loraquant/compress.h"
#include "loraquant/format.h"
#include "targets.h"

namespace lq = loraquant;

namespace {

size_t g_inputs = 0;

void run(void (*target)(const uint8_t*, size_t), const std::vector<uint8_t>& bytes) {
  target(bytes.data(), bytes.size());
  ++g_inputs;
}

struct Shape {
  uint32_t m, n, r, group;
  double bits, rho;  // rho > 0: paper mode with high_bits
  uint32_t high_bits;
};

// Awkward sizes, every group regime (1, shorter and longer than the vectors), both
// modes, widths 1 to 8 and dropped components (as fuzz/make_seeds.py).
const Shape kShapes[] = {
    {1, 1, 1, 1, 2.0, 1.0, 8},     {3, 5, 2, 4, 2.0, 0.5, 5},          {17, 9, 4, 128, 6.0, 0, 2},
    {64, 33, 6, 32, 2.5, 0, 2},    {130, 7, 3, 1 << 20, 4.0, 0, 2},    {40, 23, 5, 8, 2.0, 0.9, 3},
};

std::vector<uint8_t> valid_blob(const Shape& s) {
  std::vector<double> A((size_t)s.r * s.n), B((size_t)s.m * s.r);
  for (size_t k = 0; k < A.size(); ++k) A[k] = std::sin(1.3 * (double)k + 0.2);
  for (size_t k = 0; k < B.size(); ++k) B[k] = std::cos(0.9 * (double)k) / (1 + k % 7);
  lq::CompressOptions o;
  o.bits = s.bits;
  o.rho = s.rho;
  o.high_bits = s.high_bits;
  o.group_size = s.group;
  lq::Compressed c = lq::compress({A.data(), B.data(), s.m, s.n, s.r, 0.5}, o);
  if (c.module.b_width(0) == 0) lq_fuzz::fail("a seed shape keeps no component");
  return c.module.to_bytes();
}

// The input, each truncation, four changes of every byte, hostile 32-bit values at
// every multiple of `word_step`, and four bytes more.
void mutations(void (*target)(const uint8_t*, size_t), const std::vector<uint8_t>& seed,
               size_t word_step) {
  run(target, seed);
  for (size_t k = 0; k < seed.size(); ++k)
    run(target, std::vector<uint8_t>(seed.begin(), seed.begin() + k));
  for (size_t k = 0; k < seed.size(); ++k)
    for (uint8_t v : {uint8_t(0x00), uint8_t(0xFF), uint8_t(seed[k] ^ 0x01), uint8_t(seed[k] + 8)}) {
      std::vector<uint8_t> b = seed;
      b[k] = v;
      run(target, b);
    }
  const uint32_t hostile[] = {0, 1, 9, 25, LQ_MAX_RANK + 1, LQ_MAX_DIM, LQ_MAX_DIM + 1,
                              1u << 31, 0xFFFFFFFFu};
  for (size_t k = 0; k + 4 <= seed.size(); k += word_step)
    for (uint32_t v : hostile) {
      std::vector<uint8_t> b = seed;
      std::memcpy(b.data() + k, &v, 4);
      run(target, b);
    }
  std::vector<uint8_t> longer = seed;
  longer.insert(longer.end(), 4, 0);
  run(target, longer);
}

// A file of every seed shape's module, named as PEFT names them, and an extra.
std::vector<uint8_t> valid_file(const std::vector<std::vector<uint8_t>>& blobs) {
  lq::Adapter a;
  for (size_t k = 0; k < blobs.size(); ++k) {
    lq::AdapterModule m;
    m.name = "base_model.model.layers." + std::to_string(k) + ".proj";
    m.scaling = 0.5 + (double)k;
    m.module = lq::Module::from_bytes(blobs[k].data(), blobs[k].size());
    m.sigma.assign(m.module.r(), 1.0f);
    a.modules.push_back(std::move(m));
  }
  a.extras.push_back({"base_model.model.lm_head.weight", "F16", {2, 3}, std::vector<uint8_t>(12, 0x3c)});
  a.peft_config_json = "{\"peft_type\":\"LORA\",\"r\":8}";
  return lq::serialize_adapter(a);
}

// Inputs that once failed, each with what it found.
struct Regression {
  void (*target)(const uint8_t*, size_t);
  std::vector<uint8_t> bytes;
};
const Regression kRegressions[] = {
    // compress: factors of 93 * 2^138 overflow float32; the inf codes became NaN and
    // the float-to-int conversion of the code was undefined.
    {lq_fuzz::fuzz_compress, {0x22, 0x22, 0x75, 0x75, 0x75, 0x75, 0x75, 0x75, 0x75, 0x75, 0x5d}},
    // compress: factors near 2^-120 give an fp16 delta of 2^-149, so 1 / delta = inf and
    // an entry equal to zmin gives 0 * inf = NaN before the same conversion.
    {lq_fuzz::fuzz_compress, {0x10, 0x86, 0x85, 0x86, 0xff, 0x85, 0x00, 0x86, 0x86, 0x86, 0x85, 0x00}},
    // blob (a fault of the check, not of the library): a unit of 3.3e35 decodes a_1 to
    // +-1.75e38 and b_1 to -0, so apply's float sum overflows to inf and inf * -0 = NaN
    // where apply_ref's double sums give 0; exercise() now skips sums near overflow.
    {lq_fuzz::fuzz_blob, {
      0x4c, 0x51, 0x4d, 0x31, 0x01, 0x00, 0x30, 0x00, 0x03, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00,
      0x02, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
      0x30, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xfa, 0x7e, 0x9e, 0x88, 0x00, 0x00, 0x00, 0x00,
      0x05, 0x01, 0x05, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x80, 0x7a, 0x88, 0x50, 0x4e, 0xd0,
      0xe0, 0x00, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xf0, 0x00,
      0x00, 0x00, 0xb2, 0x00, 0x00, 0x00, 0x00, 0xe0, 0x20, 0xe0, 0x00, 0x00, 0x1d, 0x00, 0x00, 0x00,
    }},
};

void compress_inputs() {
  uint64_t state = 0x9E3779B97F4A7C15ull;
  auto next = [&] {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return (uint8_t)(state >> 24);
  };
  for (int k = 0; k < 400; ++k) {
    std::vector<uint8_t> b(10 + (size_t)(k * 37) % 300);
    for (uint8_t& v : b) v = next();
    if (k % 4 == 0) b[7] = b[8] = (uint8_t)(k % 8 < 4 ? 127 : 128);  // 2^127 or 2^-128
    run(lq_fuzz::fuzz_compress, b);
  }
  run(lq_fuzz::fuzz_compress, {});
}

int replay(const char* target, int nfiles, char** files) {
  void (*fn)(const uint8_t*, size_t) = nullptr;
  if (std::strcmp(target, "adapter") == 0) fn = lq_fuzz::fuzz_adapter;
  if (std::strcmp(target, "blob") == 0) fn = lq_fuzz::fuzz_blob;
  if (std::strcmp(target, "compress") == 0) fn = lq_fuzz::fuzz_compress;
  if (!fn) {
    std::fprintf(stderr, "unknown target %s (adapter, blob, compress)\n", target);
    return 2;
  }
  for (int i = 0; i < nfiles; ++i) {
    std::ifstream f(files[i], std::ios::binary);
    if (!f) {
      std::fprintf(stderr, "cannot read %s\n", files[i]);
      return 2;
    }
    run(fn, std::vector<uint8_t>(std::istreambuf_iterator<char>(f), {}));
  }
  std::printf("lq_sanitize_check: replayed %zu inputs\n", g_inputs);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 2) return replay(argv[1], argc - 2, argv + 2);
  for (const Regression& r : kRegressions) run(r.target, r.bytes);
  std::vector<std::vector<uint8_t>> blobs;
  for (const Shape& s : kShapes) blobs.push_back(valid_blob(s));
  for (const auto& b : blobs) mutations(lq_fuzz::fuzz_blob, b, 4);
  mutations(lq_fuzz::fuzz_adapter, valid_file({blobs[0], blobs[2]}), 8);
  // The format's version 1, which no writer writes any more (tests/data/README.md).
  std::ifstream v1(LQ_V1_FILE, std::ios::binary);
  if (!v1) {
    std::fprintf(stderr, "cannot read %s\n", LQ_V1_FILE);
    return 2;
  }
  mutations(lq_fuzz::fuzz_adapter, std::vector<uint8_t>(std::istreambuf_iterator<char>(v1), {}), 8);
  compress_inputs();
  std::printf("lq_sanitize_check: %zu inputs, no failure\n", g_inputs);
  return 0;
}
