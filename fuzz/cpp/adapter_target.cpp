// fuzz_adapter: the compressed-adapter file parser, parse_adapter (format.h, end).
#include <cstdio>
#include <cstring>
#include <stdexcept>

#include "json.h"  // private to the core (cpp/src): the header is parsed to fix a checksum
#include "loraquant/adapter_file.h"
#include "targets.h"

namespace lq_fuzz {

namespace lq = loraquant;
namespace json = loraquant::json;

namespace {

const char kCrcKey[] = "\"data_crc32\"";
const char kModulesCrcKey[] = "\"modules_crc32\"";

bool same(const lq::Adapter& a, const lq::Adapter& b) {
  if (a.modules.size() != b.modules.size() || a.extras.size() != b.extras.size() ||
      a.peft_config_json != b.peft_config_json)
    return false;
  for (size_t k = 0; k < a.modules.size(); ++k) {
    const lq::AdapterModule &x = a.modules[k], &y = b.modules[k];
    if (x.name != y.name || x.scaling != y.scaling || x.module.to_bytes() != y.module.to_bytes() ||
        x.sigma.size() != y.sigma.size() ||
        (!x.sigma.empty() && std::memcmp(x.sigma.data(), y.sigma.data(), x.sigma.size() * 4) != 0))
      return false;
  }
  for (size_t k = 0; k < a.extras.size(); ++k) {
    const lq::AdapterExtra &x = a.extras[k], &y = b.extras[k];
    if (x.name != y.name || x.dtype != y.dtype || x.shape != y.shape || x.data != y.data)
      return false;
  }
  return true;
}

void parse_and_check(const uint8_t* data, size_t size) {
  lq::Adapter a;
  try {
    a = lq::parse_adapter(data, size);
  } catch (const lq::FormatError&) {
    return;
  }
  // What the reader accepts, the writer must write, and reading that back must give
  // the same adapter; writing is deterministic.
  std::vector<uint8_t> bytes;
  try {
    bytes = lq::serialize_adapter(a);
  } catch (const std::invalid_argument& e) {
    fail(std::string("an accepted file cannot be written back: ") + e.what());
  }
  lq::Adapter b;
  try {
    b = lq::parse_adapter(bytes.data(), bytes.size());
  } catch (const lq::FormatError& e) {
    fail(std::string("a written file does not parse: ") + e.what());
  }
  if (!same(a, b)) fail("an accepted file changed through serialize + parse");
  if (lq::serialize_adapter(b) != bytes) fail("serialize_adapter is not deterministic");
  for (const lq::AdapterModule& m : a.modules) exercise(m.module);
}

// Overwrite the 8 characters in quotes after `key` in the header text at `head` (n
// bytes) with the hex of `crc`; nothing if the header has no such key and value.
void patch_crc(uint8_t* head, size_t n, const char* key, uint32_t crc) {
  const std::string text(reinterpret_cast<const char*>(head), n);
  const size_t at = text.find(key);
  if (at == std::string::npos) return;
  const size_t open = text.find('"', at + std::strlen(key));
  if (open == std::string::npos || open + 9 >= text.size() || text[open + 9] != '"') return;
  char hex[9];
  std::snprintf(hex, sizeof hex, "%08x", crc);
  std::memcpy(head + open + 1, hex, 8);
}

// The bytes with the header's data_crc32 made to match the data section, and its
// modules_crc32 the module_prefix and modules strings (when the header parses), so
// that mutations of the data and of the module entries reach the checks behind the
// checksums.
std::vector<uint8_t> with_matching_crcs(const uint8_t* data, size_t size) {
  std::vector<uint8_t> out(data, data + size);
  if (size < 8) return out;
  uint64_t n = 0;
  for (int k = 7; k >= 0; --k) n = (n << 8) | data[k];
  if (n > size - 8) return out;
  patch_crc(out.data() + 8, (size_t)n, kCrcKey, lq::crc32(data + 8 + n, size - 8 - (size_t)n));
  try {
    const json::Value h = json::parse(reinterpret_cast<const char*>(data + 8), (size_t)n);
    const json::Value* meta = h.kind == json::Value::Object ? h.find("__metadata__") : nullptr;
    if (!meta || meta->kind != json::Value::Object) return out;
    const json::Value *prefix = meta->find("module_prefix"), *modules = meta->find("modules");
    if (!prefix || !modules || prefix->kind != json::Value::String || modules->kind != json::Value::String)
      return out;
    const uint32_t crc = lq::crc32(reinterpret_cast<const uint8_t*>(modules->text.data()), modules->text.size(),
                                   lq::crc32(reinterpret_cast<const uint8_t*>(prefix->text.data()),
                                             prefix->text.size()));
    patch_crc(out.data() + 8, (size_t)n, kModulesCrcKey, crc);
  } catch (const lq::FormatError&) {
  }
  return out;
}

}  // namespace

void fuzz_adapter(const uint8_t* data, size_t size) {
  parse_and_check(data, size);
  const std::vector<uint8_t> fixed = with_matching_crcs(data, size);
  if (size > 0 && std::memcmp(fixed.data(), data, size) != 0)
    parse_and_check(fixed.data(), fixed.size());
}

}  // namespace lq_fuzz
