// fuzz_blob: the module blob parser, Module::from_bytes (layout: format.h).
#include <cstring>

#include "targets.h"

namespace lq_fuzz {

namespace lq = loraquant;

namespace {

void parse_and_check(const uint8_t* data, size_t size) {
  lq::Module mod;
  try {
    mod = lq::Module::from_bytes(data, size);
  } catch (const lq::FormatError&) {
    return;  // rejected with a message: what a parser should do with bad bytes
  }
  const std::vector<uint8_t> again = mod.to_bytes();
  if (again.size() != size || std::memcmp(again.data(), data, size) != 0)
    fail("an accepted blob of " + std::to_string(size) + " bytes does not serialise back "
         "to the same bytes");
  exercise(mod);
}

}  // namespace

void fuzz_blob(const uint8_t* data, size_t size) {
  parse_and_check(data, size);
  const std::vector<uint8_t> fixed = with_consistent_header(data, size);
  parse_and_check(fixed.data(), fixed.size());
}

}  // namespace lq_fuzz
