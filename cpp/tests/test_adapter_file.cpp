// The compressed-adapter file: exact round trips in memory and on disk, the
// safetensors layout format.h promises, atomic writes, and every truncation and byte
// flip of a small file rejected (or, in the JSON header, harmless to every module).
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "fixtures.h"
#include "harness.h"
#include "json.h"
#include "loraquant/adapter_file.h"
#include "loraquant/format.h"

namespace lq = loraquant;
namespace json = loraquant::json;
namespace fs = std::filesystem;

namespace {

void check_same(const lq::Adapter& a, const lq::Adapter& b) {
  CHECK_EQ(a.modules.size(), b.modules.size());
  for (size_t k = 0; k < std::min(a.modules.size(), b.modules.size()); ++k) {
    const lq::AdapterModule &x = a.modules[k], &y = b.modules[k];
    CHECK_EQ(x.name, y.name);
    CHECK_EQ(x.scaling, y.scaling);
    CHECK(x.module.to_bytes() == y.module.to_bytes());
    CHECK(x.sigma == y.sigma);
  }
  CHECK_EQ(a.peft_config_json, b.peft_config_json);
  CHECK_EQ(a.extras.size(), b.extras.size());
  for (size_t k = 0; k < std::min(a.extras.size(), b.extras.size()); ++k) {
    CHECK_EQ(a.extras[k].name, b.extras[k].name);
    CHECK_EQ(a.extras[k].dtype, b.extras[k].dtype);
    CHECK(a.extras[k].shape == b.extras[k].shape);
    CHECK(a.extras[k].data == b.extras[k].data);
  }
}

uint64_t header_length(const std::vector<uint8_t>& f) {
  uint64_t n = 0;
  for (int k = 7; k >= 0; --k) n = (n << 8) | f[k];
  return n;
}

std::vector<std::string> files_in(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  return out;
}

}  // namespace

LQ_TEST(adapter_file_round_trip_in_memory) {
  const lq::Adapter a = lqtest::sample_adapter();
  for (const lq::AdapterModule& am : a.modules) CHECK(am.module.b_width(0) > 0);  // not empty
  const std::vector<uint8_t> bytes = lq::serialize_adapter(a);
  const lq::Adapter b = lq::parse_adapter(bytes.data(), bytes.size());
  check_same(a, b);
  CHECK(lq::serialize_adapter(b) == bytes);  // deterministic: same adapter, same bytes

  lq::Adapter one;  // one module, no extras, no config
  one.modules.push_back(a.modules[0]);
  one.peft_config_json.clear();
  const std::vector<uint8_t> ob = lq::serialize_adapter(one);
  const lq::Adapter o2 = lq::parse_adapter(ob.data(), ob.size());
  CHECK(o2.modules.size() == 1 && o2.extras.empty());
  CHECK_EQ(o2.peft_config_json, std::string("{}"));
}

LQ_TEST(adapter_file_is_the_safetensors_layout_of_format_h) {
  const lq::Adapter a = lqtest::sample_adapter();
  const std::vector<uint8_t> f = lq::serialize_adapter(a);
  const uint64_t n = header_length(f);
  CHECK_EQ((8 + n) % 8, (uint64_t)0);  // the data section starts 8-byte aligned
  const json::Value h = json::parse(reinterpret_cast<const char*>(f.data() + 8), n);
  const json::Value* meta = h.find("__metadata__");
  CHECK(meta != nullptr);
  CHECK_EQ(meta->find("format")->text, std::string(LQ_ADAPTER_FORMAT));
  CHECK_EQ(meta->find("format_version")->text, std::string(LQ_ADAPTER_FORMAT_VERSION));
  CHECK_EQ(meta->find("peft_config")->text, a.peft_config_json);
  const json::Value modules = json::parse(meta->find("modules")->text);
  CHECK_EQ(modules.items.size(), a.modules.size());
  const json::Value& m0 = modules.items[0];
  CHECK_EQ(m0.find("name")->text, a.modules[0].name);
  CHECK_EQ(json::as_uint(*m0.find("m"), 99, "m"), (uint64_t)a.modules[0].module.m());
  const json::Value& w0 = m0.find("widths")->items[0];  // [b_width, a_width]
  CHECK_EQ(json::as_uint(w0.items[0], 8, "b"), (uint64_t)a.modules[0].module.b_width(0));
  CHECK_EQ(json::as_uint(w0.items[1], 8, "a"), (uint64_t)a.modules[0].module.a_width(0));
  CHECK_EQ(json::as_double(*m0.find("scaling"), "s"), a.modules[0].scaling);
  CHECK_EQ(json::parse(meta->find("extras")->text).items.size(), a.extras.size());
  // Tensors tile the data section in header order, and each starts at a multiple of
  // its item size (blobs: 4, for their uint32 code words).
  uint64_t at = 0;
  size_t tensors = 0;
  bool aligned = true;
  for (const auto& kv : h.members) {
    if (kv.first == "__metadata__") continue;
    ++tensors;
    const json::Value& off = *kv.second.find("data_offsets");
    CHECK_EQ(json::as_uint(off.items[0], UINT64_MAX, "begin"), at);
    const bool blob = kv.first.rfind("lq.", 0) == 0 && kv.first.size() > 5 &&
                      kv.first.compare(kv.first.size() - 5, 5, ".blob") == 0;
    aligned = aligned && at % (blob ? 4 : lq::dtype_size(kv.second.find("dtype")->text)) == 0;
    at = json::as_uint(off.items[1], UINT64_MAX, "end");
  }
  CHECK(aligned);
  CHECK_EQ(at, f.size() - 8 - n);
  CHECK_EQ(tensors, 2 * a.modules.size() + a.extras.size());
  const json::Value* blob = h.find("lq." + a.modules[1].name + ".blob");
  CHECK(blob && blob->find("dtype")->text == "U8");
  char crc[9];
  std::snprintf(crc, sizeof crc, "%08x", lq::crc32(f.data() + 8 + n, f.size() - 8 - n));
  CHECK_EQ(meta->find("data_crc32")->text, std::string(crc));
}

LQ_TEST(adapter_file_write_is_atomic_and_reads_back) {
  const std::string dir = lqtest::temp_dir() + "/write";
  fs::create_directories(dir);
  const std::string path = dir + "/adapter.lqa";
  const lq::Adapter a = lqtest::sample_adapter();
  lq::write_adapter_file(path, a);
  check_same(a, lq::read_adapter_file(path));
  CHECK(files_in(dir) == std::vector<std::string>{"adapter.lqa"});  // no temporary left

  lq::Adapter b = a;  // overwrite an existing file
  b.modules.pop_back();
  lq::write_adapter_file(path, b);
  check_same(b, lq::read_adapter_file(path));
  CHECK(files_in(dir) == std::vector<std::string>{"adapter.lqa"});

  CHECK_THROWS(lq::write_adapter_file(dir + "/no/such/dir/x.lqa", a), lq::IoError, "/no/such/dir/x.lqa");
  CHECK(files_in(dir) == std::vector<std::string>{"adapter.lqa"});
  // A refused adapter leaves the old file as it was.
  lq::Adapter bad = a;
  bad.modules[0].sigma.pop_back();
  CHECK_THROWS(lq::write_adapter_file(path, bad), std::invalid_argument, "singular values");
  check_same(b, lq::read_adapter_file(path));
}

LQ_TEST(adapter_file_io_errors) {
  const std::string dir = lqtest::temp_dir();
  CHECK_THROWS(lq::read_adapter_file(dir + "/missing.lqa"), lq::IoError, "cannot open");
  CHECK_THROWS(lq::read_adapter_file(dir), lq::IoError, dir);
  const std::string path = dir + "/short.lqa";
  const std::vector<uint8_t> f = lq::serialize_adapter(lqtest::sample_adapter());
  std::FILE* out = std::fopen(path.c_str(), "wb");
  std::fwrite(f.data(), 1, f.size() / 2, out);
  std::fclose(out);
  CHECK_THROWS(lq::read_adapter_file(path), lq::FormatError, path + ": ");
}

LQ_TEST(adapter_file_every_truncation_is_rejected) {
  const std::vector<uint8_t> f = lq::serialize_adapter(lqtest::sample_adapter());
  for (size_t len = 0; len < f.size(); ++len)
    CHECK_THROWS(lq::parse_adapter(f.data(), len), lq::FormatError, "adapter file: ");
}

LQ_TEST(adapter_file_every_byte_flip) {
  // In the length prefix and the data section every flip is rejected (data_crc32
  // covers the blobs, their headers included). In the JSON header a flip may land in
  // padding or in a value nothing checks (scaling's digits, peft_config's text); then
  // every module must still be exactly the original (issue: "applies as the original").
  const lq::Adapter a = lqtest::sample_adapter();
  const std::vector<uint8_t> f = lq::serialize_adapter(a);
  const uint64_t data_at = 8 + header_length(f);
  bool outside_json_rejected = true, modules_intact = true;
  size_t accepted = 0;
  for (size_t pos = 0; pos < f.size(); ++pos)
    for (uint8_t x : {0x01, 0x04, 0x20, 0x80, 0xFF}) {
      std::vector<uint8_t> bad = f;
      bad[pos] ^= x;
      try {
        const lq::Adapter b = lq::parse_adapter(bad.data(), bad.size());
        ++accepted;
        if (pos < 8 || pos >= data_at) outside_json_rejected = false;
        bool same = b.modules.size() == a.modules.size();
        for (size_t k = 0; same && k < a.modules.size(); ++k)
          same = b.modules[k].name == a.modules[k].name &&
                 b.modules[k].module.to_bytes() == a.modules[k].module.to_bytes();
        modules_intact = modules_intact && same;
      } catch (const lq::FormatError&) {
      }
    }
  CHECK(outside_json_rejected);
  CHECK(modules_intact);
  CHECK(accepted < f.size());  // most flips are caught even inside the header
}
