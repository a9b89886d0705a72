// The fuzz targets of the core. Each takes arbitrary bytes; it must neither crash nor
// trip a sanitizer, and it calls fail() (which aborts) when an input breaks a property
// the core promises. libfuzzer_entry.cpp and sanitize_check.cpp drive them.
#ifndef LORAQUANT_FUZZ_TARGETS_H
#define LORAQUANT_FUZZ_TARGETS_H

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "loraquant/module.h"

namespace lq_fuzz {

// Module::from_bytes on the bytes as given, then on a copy whose payload_bytes and
// CRC-32 are made to agree with them, so that mutations reach the payload checks.
// An accepted blob must serialise back to the same bytes and decode consistently.
void fuzz_blob(const uint8_t* data, size_t size);

// parse_adapter on the bytes as given, then with the header's data_crc32 made to match
// the data section. An accepted file must be written back by serialize_adapter and
// read again unchanged, and its modules decode consistently.
void fuzz_adapter(const uint8_t* data, size_t size);

// compress() on a small pair and options decoded from the bytes (extreme magnitudes
// included). Either std::invalid_argument, or a module that keeps the budget and
// round-trips through its bytes.
void fuzz_compress(const uint8_t* data, size_t size);

// Print what broke and abort, so that libFuzzer keeps the input and a test fails.
[[noreturn]] void fail(const std::string& what);

// The bytes with the blob header's payload_bytes and crc32 recomputed (unchanged if
// shorter than a header).
std::vector<uint8_t> with_consistent_header(const uint8_t* data, size_t size);

// Run every decoder of an accepted module (dequantize, apply, apply_ref, probe_norm)
// when its dense form is small, and check that apply agrees with its reference.
void exercise(const loraquant::Module& mod);

}  // namespace lq_fuzz

#endif
