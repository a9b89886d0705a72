// Blobs (Module::to_bytes / from_bytes): an exact round trip, and truncated or
// corrupted bytes give a FormatError, never a crash.
#include <cstddef>
#include <cstring>
#include <vector>

#include "fixtures.h"
#include "harness.h"
#include "loraquant/format.h"
#include "loraquant/module.h"

namespace lq = loraquant;

namespace {

// Small enough to flip every byte, with a budget that keeps every component.
lq::Module small_module() {
  return lqtest::compress_pair(lqtest::random_pair(13, 9, 3, 6000), 1.0, 10.0, 4).module;
}

}  // namespace

LQ_TEST(blob_round_trip_is_exact) {
  uint64_t seed = 6100;
  for (uint32_t m : {1u, 3u, 129u})
    for (uint32_t r : {1u, 3u, 16u}) {
      const lq::Module mod = lqtest::compress_pair(lqtest::random_pair(m, 127, r, ++seed), -1.5, 2.5, 32).module;
      const std::vector<uint8_t> bytes = mod.to_bytes();
      const lq::Module back = lq::Module::from_bytes(bytes.data(), bytes.size());
      CHECK(back.to_bytes() == bytes);
      CHECK(back.m() == mod.m() && back.n() == mod.n() && back.r() == mod.r() &&
            back.group_size() == mod.group_size() && back.unit() == mod.unit());
      CHECK(back.payload() == mod.payload());
      CHECK_EQ(std::memcmp(bytes.data(), LQ_BLOB_MAGIC, 4), 0);
    }
}

LQ_TEST(blob_every_truncation_is_rejected) {
  const std::vector<uint8_t> bytes = small_module().to_bytes();
  for (size_t len = 0; len < bytes.size(); ++len)
    CHECK_THROWS(lq::Module::from_bytes(bytes.data(), len), lq::FormatError, "");
  std::vector<uint8_t> longer = bytes;
  longer.push_back(0);
  CHECK_THROWS(lq::Module::from_bytes(longer.data(), longer.size()), lq::FormatError, "trailing data");
  CHECK_THROWS(lq::Module::from_bytes(bytes.data(), 47), lq::FormatError, "truncated");
}

LQ_TEST(blob_every_byte_flip_is_rejected) {
  // Every byte, every nonzero xor: the CRC-32 covers the header and the payload.
  const lq::Module mod = small_module();
  CHECK(mod.b_width(2) > 0 && mod.a_width(2) > 0);
  const std::vector<uint8_t> bytes = mod.to_bytes();
  size_t accepted = 0;
  for (size_t pos = 0; pos < bytes.size(); ++pos)
    for (unsigned x = 1; x < 256; ++x) {
      std::vector<uint8_t> bad = bytes;
      bad[pos] ^= (uint8_t)x;
      try {
        (void)lq::Module::from_bytes(bad.data(), bad.size());
        ++accepted;
      } catch (const lq::FormatError&) {
      }
    }
  CHECK_EQ(accepted, (size_t)0);
}

LQ_TEST(blob_header_errors_name_the_problem) {
  const std::vector<uint8_t> bytes = small_module().to_bytes();
  auto with = [&](size_t offset, const void* value, size_t size) {
    std::vector<uint8_t> b = bytes;
    std::memcpy(b.data() + offset, value, size);
    return b;
  };
  auto parse = [](const std::vector<uint8_t>& b) { return lq::Module::from_bytes(b.data(), b.size()); };
  const uint16_t v2 = 2, hb = 64;
  const uint32_t zero = 0, one = 1, big_rank = LQ_MAX_RANK + 1;
  const uint64_t huge = UINT64_MAX;
  CHECK_THROWS(parse(with(0, "LQM2", 4)), lq::FormatError, "bad magic");
  CHECK_THROWS(parse(with(offsetof(lq_blob_header, version), &v2, 2)), lq::FormatError, "version 2");
  CHECK_THROWS(parse(with(offsetof(lq_blob_header, header_bytes), &hb, 2)), lq::FormatError, "corrupt module header");
  CHECK_THROWS(parse(with(offsetof(lq_blob_header, scale_format), &one, 4)), lq::FormatError, "corrupt module header");
  CHECK_THROWS(parse(with(offsetof(lq_blob_header, reserved0), &one, 4)), lq::FormatError, "corrupt module header");
  CHECK_THROWS(parse(with(offsetof(lq_blob_header, m), &zero, 4)), lq::FormatError, "out of range");
  CHECK_THROWS(parse(with(offsetof(lq_blob_header, r), &big_rank, 4)), lq::FormatError, "rank");
  CHECK_THROWS(parse(with(offsetof(lq_blob_header, group_size), &zero, 4)), lq::FormatError, "group size");
  CHECK_THROWS(parse(with(offsetof(lq_blob_header, payload_bytes), &huge, 8)), lq::FormatError, "truncated");
  CHECK_THROWS(parse(with(offsetof(lq_blob_header, crc32), &zero, 4)), lq::FormatError, "checksum");
}
