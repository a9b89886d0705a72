// Blobs (Module::to_bytes / from_bytes): an exact round trip, and truncated or
// corrupted bytes give a FormatError, never a crash.
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <vector>

#include "fixtures.h"
#include "harness.h"
#include "loraquant/format.h"
#include "loraquant/module.h"

namespace lq = loraquant;

namespace {

// Small enough to flip every byte, with a budget that keeps components of two widths.
lq::Module small_module() {
  return lqtest::compress_pair(lqtest::random_pair(13, 9, 3, 6000), 1.0, 10.0, 4).module;
}

bool in_field(size_t pos, size_t offset, size_t size) { return pos >= offset && pos < offset + size; }

// Header fields that say what the payload means, which its CRC-32 does not cover:
// a flip there that keeps the implied layout gives a different, well-formed module.
bool geometry_byte(size_t pos) {
  return in_field(pos, offsetof(lq_blob_header, m), 4) || in_field(pos, offsetof(lq_blob_header, n), 4) ||
         in_field(pos, offsetof(lq_blob_header, r), 4) ||
         in_field(pos, offsetof(lq_blob_header, group_size), 4);
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

LQ_TEST(blob_every_byte_flip_is_caught) {
  // Every byte, every nonzero xor. Outside the geometry fields a flip is always
  // rejected (magic, version, sizes, reserved zeros, CRC-32 of the payload). Inside
  // them the blob header alone cannot tell; a flip is rejected unless the module it
  // describes is well formed, and then it must re-serialize to exactly the flipped
  // bytes. The adapter file's data_crc32 covers those fields (adapter_file tests).
  const lq::Module mod = small_module();
  CHECK(mod.widths()[0] > 0 && mod.widths()[0] != mod.widths()[2]);
  const std::vector<uint8_t> bytes = mod.to_bytes();
  size_t rejected = 0, accepted = 0;
  bool outside_ok = true, inside_ok = true;
  for (size_t pos = 0; pos < bytes.size(); ++pos)
    for (unsigned x = 1; x < 256; ++x) {
      std::vector<uint8_t> bad = bytes;
      bad[pos] ^= (uint8_t)x;
      try {
        const lq::Module mod = lq::Module::from_bytes(bad.data(), bad.size());
        ++accepted;
        if (!geometry_byte(pos)) outside_ok = false;
        inside_ok = inside_ok && mod.to_bytes() == bad;
      } catch (const lq::FormatError&) {
        ++rejected;
      }
    }
  CHECK(outside_ok);
  CHECK(inside_ok);
  CHECK_EQ(rejected + accepted, bytes.size() * 255);
  std::printf("  %zu flips rejected, %zu well-formed (all in m, n, r, group_size)\n", rejected, accepted);
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
  CHECK_THROWS(parse(with(offsetof(lq_blob_header, payload_crc32), &zero, 4)), lq::FormatError, "checksum");
}
