// Helpers shared by the fuzz targets: failing loudly, repairing a blob header, and
// running every decoder of an accepted module.
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "loraquant/format.h"
#include "targets.h"

namespace lq_fuzz {

namespace lq = loraquant;

// Decoders run only on modules whose dense form has at most this many entries:
// dequantize() writes r * (m + n) floats by contract, so a blob that declares
// m = n = 2^24 would make the harness, not the parser, allocate gigabytes.
constexpr uint64_t kMaxDense = 1u << 20;
constexpr size_t kBatch = 3;
// apply() sums in float, apply_ref() in double over the same decoded values: allow
// this many float roundings per term of the longest sum.
constexpr double kRoundings = 4.0;
// Sums below this are far from float32 overflow (FLT_MAX is 3.4e38).
constexpr double kFar = 1e30;

void fail(const std::string& what) {
  std::fprintf(stderr, "loraquant fuzz: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}

std::vector<uint8_t> with_consistent_header(const uint8_t* data, size_t size) {
  std::vector<uint8_t> out(data, data + size);
  lq_blob_header h;
  if (size < sizeof h) return out;
  std::memcpy(&h, out.data(), sizeof h);
  h.payload_bytes = size - sizeof h;
  std::memcpy(out.data(), &h, sizeof h);
  const uint32_t head = lq::crc32(out.data(), offsetof(lq_blob_header, crc32));
  h.crc32 = lq::crc32(out.data() + sizeof h, size - sizeof h, head);
  std::memcpy(out.data(), &h, sizeof h);
  return out;
}

void exercise(const lq::Module& mod) {
  const uint64_t m = mod.m(), n = mod.n(), r = mod.r();
  if (r * (m + n) > kMaxDense || kBatch * (m + n) > kMaxDense) return;
  std::vector<float> A(r * n), B(m * r), x(kBatch * n), y(kBatch * m), yref(kBatch * m);
  mod.dequantize(A.data(), B.data());
  for (size_t k = 0; k < x.size(); ++k) x[k] = std::sin(0.7 * (double)k + 0.1);
  mod.apply(x.data(), kBatch, y.data());
  mod.apply_ref(x.data(), kBatch, yref.data());
  (void)mod.probe_norm();
  // |y - yref| <= roundings * eps * (n + r) * sum_i |B_ji| sum_c |A_ic x_c|, where the
  // bound and every float sum on the way are far from overflow: apply sums in float,
  // so a sum past FLT_MAX is inf there (and inf * 0 = NaN) but finite in apply_ref.
  for (size_t row = 0; row < kBatch; ++row) {
    std::vector<double> t(r, 0.0);
    double tmax = 0;
    for (uint64_t i = 0; i < r; ++i) {
      for (uint64_t c = 0; c < n; ++c) t[i] += std::fabs((double)A[i * n + c] * x[row * n + c]);
      tmax = std::fmax(tmax, t[i]);
    }
    if (!(tmax < kFar)) continue;
    for (uint64_t j = 0; j < m; ++j) {
      double bound = 0;
      for (uint64_t i = 0; i < r; ++i) bound += std::fabs((double)B[j * r + i]) * t[i];
      if (!(bound < kFar)) continue;
      const double tol = kRoundings * FLT_EPSILON * (double)(n + r) * bound + FLT_MIN;
      const double got = y[row * m + j], want = yref[row * m + j];
      if (!(std::fabs(got - want) <= tol))
        fail("apply and apply_ref differ at row " + std::to_string(row) + ", column " +
             std::to_string(j) + ": " + std::to_string(got) + " vs " + std::to_string(want));
    }
  }
}

}  // namespace lq_fuzz
