// The compressed-adapter file: exact round trips in memory and on disk, the
// safetensors layout format.h promises, atomic writes, and every truncation and byte
// flip of a small file rejected (or, in the JSON header, harmless to every module).
#include <algorithm>
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
  // Version 2: the names' common prefix up to a '.', then [name, blob_bytes, scaling].
  const std::string prefix = meta->find("module_prefix")->text;
  CHECK_EQ(prefix, std::string("base_model.model."));
  const json::Value modules = json::parse(meta->find("modules")->text);
  CHECK_EQ(modules.items.size(), a.modules.size());
  std::vector<uint64_t> blob_bytes;
  for (size_t k = 0; k < std::min(modules.items.size(), a.modules.size()); ++k) {
    const json::Value& e = modules.items[k];
    CHECK_EQ(e.items.size(), (size_t)3);
    CHECK_EQ(prefix + e.items[0].text, a.modules[k].name);
    blob_bytes.push_back(json::as_uint(e.items[1], UINT64_MAX, "blob_bytes"));
    CHECK_EQ(blob_bytes.back(), (uint64_t)a.modules[k].module.to_bytes().size());
    CHECK_EQ(blob_bytes.back() % 4, (uint64_t)0);  // blobs are whole uint32 words
    CHECK_EQ(json::as_double(e.items[2], "scaling"), a.modules[k].scaling);
  }
  CHECK_EQ(json::parse(meta->find("extras")->text).items.size(), a.extras.size());
  // Tensors tile the data section in header order, and each starts at a multiple of
  // its item size (lq.blobs: 4, for the uint32 code words of every blob in it).
  uint64_t at = 0, blobs_at = 0;
  size_t tensors = 0;
  bool aligned = true;
  for (const auto& kv : h.members) {
    if (kv.first == "__metadata__") continue;
    ++tensors;
    const json::Value& off = *kv.second.find("data_offsets");
    CHECK_EQ(json::as_uint(off.items[0], UINT64_MAX, "begin"), at);
    const bool blobs = kv.first == "lq.blobs";
    if (blobs) blobs_at = at;
    aligned = aligned && at % (blobs ? 4 : lq::dtype_size(kv.second.find("dtype")->text)) == 0;
    at = json::as_uint(off.items[1], UINT64_MAX, "end");
  }
  CHECK(aligned);
  CHECK_EQ(at, f.size() - 8 - n);
  CHECK_EQ(tensors, 2 + a.extras.size());
  const json::Value* blobs = h.find("lq.blobs");
  CHECK(blobs && blobs->find("dtype")->text == "U8");
  const json::Value* sigma = h.find("lq.sigma");
  CHECK(sigma && sigma->find("dtype")->text == "F32");
  // The second module's blob follows the first in lq.blobs, byte for byte.
  const std::vector<uint8_t> second = a.modules[1].module.to_bytes();
  const uint8_t* in_file = f.data() + 8 + n + blobs_at + blob_bytes[0];
  CHECK(std::equal(second.begin(), second.end(), in_file));
  char crc[9];
  std::snprintf(crc, sizeof crc, "%08x", lq::crc32(f.data() + 8 + n, f.size() - 8 - n));
  CHECK_EQ(meta->find("data_crc32")->text, std::string(crc));
}

LQ_TEST(adapter_file_reads_version_1) {
  // tests/data/adapter-v1.lqa: written by loraquant.save before version 2 (see
  // tests/data/README.md); read, then written as version 2, it reads back the same.
  const lq::Adapter v1 = lq::read_adapter_file(LQ_TEST_DATA_DIR "/adapter-v1.lqa");
  CHECK_EQ(v1.modules.size(), (size_t)2);
  if (v1.modules.size() == 2) {
    CHECK_EQ(v1.modules[0].name, std::string("base_model.model.layers.0.q_proj"));
    CHECK_EQ(v1.modules[1].name, std::string("base_model.model.layers.0.v_proj"));
    CHECK_EQ(v1.modules[0].scaling, 2.0);
    CHECK_EQ(v1.modules[1].scaling, 0.5);
    CHECK_EQ(v1.modules[0].sigma.size(), (size_t)v1.modules[0].module.r());
  }
  CHECK_EQ(v1.extras.size(), (size_t)3);
  const std::vector<uint8_t> v2 = lq::serialize_adapter(v1);
  check_same(v1, lq::parse_adapter(v2.data(), v2.size()));
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
