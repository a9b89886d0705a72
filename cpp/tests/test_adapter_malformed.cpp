// Malformed adapter files, each built by editing a valid one (version 2, and the
// version-1 file of tests/data), must give a FormatError that names the problem;
// hostile sizes must be refused before anything is allocated. Also: what the writer
// refuses to write.
#include <algorithm>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "file_io.h"
#include "fixtures.h"
#include "harness.h"
#include "json.h"
#include "loraquant/adapter_file.h"

namespace lq = loraquant;
namespace json = loraquant::json;

namespace {

// A file taken apart: its JSON header as a tree and its data section.
struct Parts {
  json::Value header;
  std::vector<uint8_t> data;
};

Parts split(const std::vector<uint8_t>& f) {
  uint64_t n = 0;
  for (int k = 7; k >= 0; --k) n = (n << 8) | f[k];
  Parts p;
  p.header = json::parse(reinterpret_cast<const char*>(f.data() + 8), n);
  p.data.assign(f.begin() + 8 + (std::ptrdiff_t)n, f.end());
  return p;
}

json::Value& at(json::Value& obj, const std::string& key) {
  for (auto& m : obj.members)
    if (m.first == key) return m.second;
  throw std::logic_error("test bug: no key " + key);
}

json::Value& meta(Parts& p) { return at(p.header, "__metadata__"); }

std::string hex8(uint32_t v) {
  char buf[9];
  std::snprintf(buf, sizeof buf, "%08x", v);
  return buf;
}

const json::Value* member(const json::Value& obj, const std::string& key) {
  for (const auto& m : obj.members)
    if (m.first == key) return &m.second;
  return nullptr;
}

// data_crc32 and, in a version-2 file that has them, modules_crc32 made to match.
void set_crc(Parts& p) {
  at(meta(p), "data_crc32").text = hex8(lq::crc32(p.data.data(), p.data.size()));
  const json::Value *prefix = member(meta(p), "module_prefix"), *modules = member(meta(p), "modules");
  if (prefix && modules && member(meta(p), "modules_crc32")) {
    const auto bytes = [](const std::string& s) { return reinterpret_cast<const uint8_t*>(s.data()); };
    at(meta(p), "modules_crc32").text = hex8(lq::crc32(bytes(modules->text), modules->text.size(),
                                                       lq::crc32(bytes(prefix->text), prefix->text.size())));
  }
}

std::vector<uint8_t> join_text(const std::string& text, const std::vector<uint8_t>& data) {
  std::vector<uint8_t> f(8 + text.size() + data.size());
  for (int k = 0; k < 8; ++k) f[k] = (uint8_t)((uint64_t)text.size() >> (8 * k));
  std::memcpy(f.data() + 8, text.data(), text.size());
  if (!data.empty()) std::memcpy(f.data() + 8 + text.size(), data.data(), data.size());
  return f;
}

std::vector<uint8_t> join(const Parts& p) { return join_text(json::dump(p.header), p.data); }

// The sample file after `edit`, with data_crc32 recomputed unless the edit is about it.
std::vector<uint8_t> edited(const std::function<void(Parts&)>& edit, bool fix_crc = true) {
  Parts p = split(lq::serialize_adapter(lqtest::sample_adapter()));
  edit(p);
  if (fix_crc) set_crc(p);
  return join(p);
}

// The version-1 file of tests/data after `edit`, data_crc32 recomputed.
std::vector<uint8_t> edited_v1(const std::function<void(Parts&)>& edit) {
  Parts p = split(lq::read_whole_file(LQ_TEST_DATA_DIR "/adapter-v1.lqa"));
  edit(p);
  set_crc(p);
  return join(p);
}

// Edit the JSON array stored in metadata string `key`.
void edit_list(Parts& p, const char* key, const std::function<void(json::Value&)>& edit) {
  json::Value list = json::parse(at(meta(p), key).text);
  edit(list);
  at(meta(p), key).text = json::dump(list);
}

// Where the first module's blob lies in the data section: at the start of lq.blobs,
// blob_bytes long.
std::pair<uint64_t, uint64_t> first_blob_span(Parts& p) {
  const json::Value& off = at(at(p.header, "lq.blobs"), "data_offsets");
  const uint64_t begin = json::as_uint(off.items[0], UINT64_MAX, "");
  const json::Value first = json::parse(at(meta(p), "modules").text).items[0];
  return {begin, begin + json::as_uint(first.items[1], UINT64_MAX, "")};
}

// An integer of the header plus d (modulo 2^64: d = -4 subtracts 4).
void add_to(json::Value& v, uint64_t d) { v = json::Value::number(json::as_uint(v, UINT64_MAX, "") + d); }

void parse(const std::vector<uint8_t>& f) { (void)lq::parse_adapter(f.data(), f.size()); }

}  // namespace

LQ_TEST(adapter_malformed_container) {
  const std::vector<uint8_t> good = lq::serialize_adapter(lqtest::sample_adapter());
  std::vector<uint8_t> f = good;
  f[7] = 0x80;  // header length 2^63
  CHECK_THROWS(parse(f), lq::FormatError, "exceeds the");
  CHECK_THROWS(parse(join_text("[]", {})), lq::FormatError, "not a JSON object");
  CHECK_THROWS(parse(join_text("{\"a\":", {})), lq::FormatError, "header: JSON:");
  CHECK_THROWS(parse(join_text("{}", {})), lq::FormatError, "no __metadata__");
  std::vector<uint8_t> huge(8 + 100000001, ' ');  // a header longer than safetensors allows
  for (int k = 0; k < 8; ++k) huge[k] = (uint8_t)((uint64_t)100000001 >> (8 * k));
  CHECK_THROWS(parse(huge), lq::FormatError, "more than the limit 100000000");
  CHECK_THROWS(parse(edited([](Parts& p) { at(meta(p), "format").text = "pt"; })), lq::FormatError,
               "not a loraquant adapter");
  CHECK_THROWS(parse(edited([](Parts& p) { at(meta(p), "format_version").text = "3"; })), lq::FormatError,
               "unsupported format_version '3' (this reader knows 1 and 2)");
  // Each version's layout under the other's number.
  CHECK_THROWS(parse(edited([](Parts& p) { at(meta(p), "format_version").text = "1"; })), lq::FormatError,
               "is not a JSON object");
  CHECK_THROWS(parse(edited_v1([](Parts& p) { at(meta(p), "format_version").text = "2"; })), lq::FormatError,
               "no \"module_prefix\"");
  CHECK_THROWS(parse(edited([](Parts& p) { meta(p).members.pop_back(); }, false)), lq::FormatError,
               "no \"data_crc32\"");
  CHECK_THROWS(parse(edited([](Parts& p) { at(meta(p), "extras") = json::Value::number((uint64_t)1); })),
               lq::FormatError, "must be a string");
}

LQ_TEST(adapter_malformed_tensor_entries) {
  auto on_blob = [](const std::function<void(json::Value&)>& edit) {
    return edited([&](Parts& p) { edit(at(p.header, "lq.blobs")); });
  };
  CHECK_THROWS(parse(on_blob([](json::Value& t) { at(t, "dtype").text = "F128"; })), lq::FormatError,
               "unknown dtype 'F128'");
  CHECK_THROWS(parse(on_blob([](json::Value& t) { at(t, "data_offsets").items[1] = json::Value::number((uint64_t)1 << 40); })),
               lq::FormatError, "out of range");
  CHECK_THROWS(parse(on_blob([](json::Value& t) { at(t, "shape").items[0] = json::Value::number((uint64_t)3); })),
               lq::FormatError, "bytes but U8 of its shape needs 3");
  CHECK_THROWS(parse(on_blob([](json::Value& t) {
                 at(t, "shape") = json::Value::array().push(json::Value::number((uint64_t)1 << 20)).push(json::Value::number((uint64_t)1 << 20));
               })),
               lq::FormatError, "more bytes than the data section holds");
  CHECK_THROWS(parse(on_blob([](json::Value& t) {
                 at(t, "shape") = json::Value::array().push(json::Value::number((uint64_t)1 << 62)).push(json::Value::number((uint64_t)1 << 62));
               })),
               lq::FormatError, "overflows 64 bits");
  CHECK_THROWS(parse(on_blob([](json::Value& t) { at(t, "shape").items[0].text = "1e3"; })), lq::FormatError,
               "must be an integer");
  CHECK_THROWS(parse(on_blob([](json::Value& t) { t.members.pop_back(); })), lq::FormatError,
               "exactly dtype, shape and data_offsets");
  // Tiling: two tensors sharing bytes, a gap, bytes no tensor covers.
  CHECK_THROWS(parse(edited([](Parts& p) {
                 for (auto& m : p.header.members)
                   if (m.first.size() > 6 && m.first.compare(m.first.size() - 6, 6, ".sigma") == 0) {
                     json::Value& off = at(m.second, "data_offsets");
                     const uint64_t len = json::as_uint(off.items[1], UINT64_MAX, "") - json::as_uint(off.items[0], UINT64_MAX, "");
                     off.items[0] = json::Value::number((uint64_t)0);
                     off.items[1] = json::Value::number(len);
                   }
               })),
               lq::FormatError, "overlaps the tensor before it");
  CHECK_THROWS(parse(edited([](Parts& p) { p.header.add("stray", at(p.header, "lq.blobs")); })),
               lq::FormatError, "overlaps the tensor before it");
  CHECK_THROWS(parse(edited([](Parts& p) { p.data.push_back(0); })), lq::FormatError,
               "but the tensors cover");
  CHECK_THROWS(parse(edited([](Parts& p) {
                 p.data.insert(p.data.begin(), 8, 0);  // 8 bytes in front that no tensor covers
                 for (auto& m : p.header.members)
                   if (m.first != "__metadata__")
                     for (json::Value& o : at(m.second, "data_offsets").items)
                       o = json::Value::number(json::as_uint(o, UINT64_MAX, "") + 8);
               })),
               lq::FormatError, "leaves a gap before it");
}

LQ_TEST(adapter_malformed_checksum) {
  CHECK_THROWS(parse(edited([](Parts& p) { p.data[p.data.size() / 2] ^= 1; }, false)), lq::FormatError,
               "data_crc32 mismatch");
  CHECK_THROWS(parse(edited([](Parts& p) { at(meta(p), "data_crc32").text = "ABCDEF01"; }, false)),
               lq::FormatError, "not 8 lowercase hex digits");
  // Each name is stored once: modules_crc32 catches a corrupted one, or a scaling.
  CHECK_THROWS(parse(edited([](Parts& p) { at(meta(p), "module_prefix").text = "base_model.modem."; }, false)),
               lq::FormatError, "modules_crc32 mismatch");
  CHECK_THROWS(parse(edited([](Parts& p) { at(meta(p), "modules_crc32").text = "xyz"; }, false)),
               lq::FormatError, "modules_crc32 'xyz' is not 8 lowercase hex digits");
  // A corrupted blob whose data_crc32 was recomputed is still caught, by its own CRC.
  CHECK_THROWS(parse(edited([](Parts& p) { p.data[first_blob_span(p).second - 1] ^= 1; })), lq::FormatError,
               "blob: checksum mismatch");
  CHECK_THROWS(parse(edited([](Parts& p) { p.data[first_blob_span(p).first + 8] ^= 1; })), lq::FormatError,
               "blob: checksum mismatch");  // in the blob's header: m
}

LQ_TEST(adapter_malformed_module_entries) {
  auto on_entry = [](const std::function<void(json::Value&)>& edit, size_t k = 0) {
    return edited([&](Parts& p) { edit_list(p, "modules", [&](json::Value& l) { edit(l.items[k]); }); });
  };
  auto bytes_plus = [](json::Value& e, uint64_t d) { add_to(e.items[1], d); };
  CHECK_THROWS(parse(on_entry([&](json::Value& e) { bytes_plus(e, 4); })), lq::FormatError,
               "module 'base_model.model.layers.0.self_attn.q_proj' blob: trailing data");
  CHECK_THROWS(parse(on_entry([&](json::Value& e) { bytes_plus(e, (uint64_t)-4); })), lq::FormatError,
               "blob: truncated");
  CHECK_THROWS(parse(on_entry([&](json::Value& e) { bytes_plus(e, 4); }, 2)), lq::FormatError,
               "blob_bytes (what 'lq.blobs' has left)");
  CHECK_THROWS(parse(on_entry([](json::Value& e) { e.items[1] = json::Value::number((uint64_t)1 << 40); })),
               lq::FormatError, "is out of range");
  CHECK_THROWS(parse(on_entry([](json::Value& e) { e.items[1].text = "8.0"; })), lq::FormatError,
               "blob_bytes (what 'lq.blobs' has left) must be an integer");
  CHECK_THROWS(parse(on_entry([](json::Value& e) { e.items.pop_back(); })), lq::FormatError,
               "modules[0] must be [name, blob_bytes, scaling]");
  CHECK_THROWS(parse(on_entry([](json::Value& e) { e.push(json::Value::number((uint64_t)0)); })),
               lq::FormatError, "modules[0] must be [name, blob_bytes, scaling]");
  CHECK_THROWS(parse(on_entry([](json::Value& e) { e.items[2] = json::Value::string("2"); })),
               lq::FormatError, "scaling must be a number");
  CHECK_THROWS(parse(on_entry([](json::Value& e) { e.items[0] = json::Value::number((uint64_t)1); })),
               lq::FormatError, "modules[0] name must be a string");
  CHECK_THROWS(parse(on_entry([](json::Value& e) { e.items[0].text = std::string("q\0proj", 6); })),
               lq::FormatError, "a name must not contain NUL");
  CHECK_THROWS(parse(edited([](Parts& p) {
                 edit_list(p, "modules", [](json::Value& l) { l.items[1].items[0] = l.items[0].items[0]; });
               })),
               lq::FormatError, "module 'base_model.model.layers.0.self_attn.q_proj' appears twice");
  // The prefix is part of every name: moved into the names, the file is the same adapter.
  const std::vector<uint8_t> spelled = edited([](Parts& p) {
    const std::string prefix = at(meta(p), "module_prefix").text;
    at(meta(p), "module_prefix").text.clear();
    edit_list(p, "modules", [&](json::Value& l) {
      for (json::Value& e : l.items) e.items[0].text = prefix + e.items[0].text;
    });
  });
  const lq::Adapter same = lq::parse_adapter(spelled.data(), spelled.size());
  CHECK(same.modules.size() == 3 && same.modules[2].name == "base_model.model.lm_head");
  CHECK_THROWS(parse(edited([](Parts& p) {
                 at(meta(p), "module_prefix").text.clear();
                 edit_list(p, "modules", [](json::Value& l) { l.items[0].items[0].text.clear(); });
               })),
               lq::FormatError, "modules[0] has an empty name");
  CHECK_THROWS(parse(edited([](Parts& p) {
                 auto& ms = meta(p).members;
                 ms.erase(std::find_if(ms.begin(), ms.end(), [](const auto& m) { return m.first == "module_prefix"; }));
               })),
               lq::FormatError, "no \"module_prefix\"");
  // The singular values fill lq.sigma: one more (in place of the first extra's first
  // bytes, which the sample's F32 extra lends) is left over.
  CHECK_THROWS(parse(edited([](Parts& p) {
                 json::Value& sigma = at(p.header, "lq.sigma");
                 json::Value& extra = at(p.header, "base_model.model.score.weight");
                 add_to(at(sigma, "shape").items[0], 1);
                 add_to(at(sigma, "data_offsets").items[1], 4);
                 at(extra, "shape") = json::Value::array().push(json::Value::number((uint64_t)5));
                 add_to(at(extra, "data_offsets").items[0], 4);
               })),
               lq::FormatError, "tensor 'lq.sigma' has 1 values beyond the modules' ranks");
  CHECK_THROWS(parse(edited([](Parts& p) { at(meta(p), "modules").text = "[{]"; })), lq::FormatError,
               "__metadata__ \"modules\": JSON:");
  CHECK_THROWS(parse(edited([](Parts& p) { at(meta(p), "modules").text = "{}"; })), lq::FormatError,
               "must be a JSON array");
  CHECK_THROWS(parse(edited([](Parts& p) { at(meta(p), "modules").text = "[]"; })), lq::FormatError,
               "the file lists no modules");
}

LQ_TEST(adapter_malformed_module_entries_version_1) {
  auto on_entry = [](const std::function<void(json::Value&)>& edit) {
    return edited_v1([&](Parts& p) { edit_list(p, "modules", [&](json::Value& l) { edit(l.items[0]); }); });
  };
  CHECK_THROWS(parse(on_entry([](json::Value& e) { at(e, "m") = json::Value::number((uint64_t)6); })),
               lq::FormatError, "entry says m, n, r, group_size = 6");
  CHECK_THROWS(parse(on_entry([](json::Value& e) { at(e, "group_size") = json::Value::number((uint64_t)9); })),
               lq::FormatError, "but its blob holds");
  CHECK_THROWS(parse(on_entry([](json::Value& e) {
                 json::Value& a = at(e, "widths").items[0].items[1];
                 a = json::Value::number((uint64_t)(json::as_uint(a, 8, "") == 1 ? 2 : 1));
               })),
               lq::FormatError, "widths[0] disagrees with its blob");
  CHECK_THROWS(parse(on_entry([](json::Value& e) { at(e, "widths").items.pop_back(); })), lq::FormatError,
               "widths must be an array of r = 4 pairs");
  CHECK_THROWS(parse(on_entry([](json::Value& e) { at(e, "widths").items[1].items.pop_back(); })),
               lq::FormatError, "widths[1] must be [b_width, a_width]");
  CHECK_THROWS(parse(on_entry([](json::Value& e) { at(e, "widths").items[2].items[0].text = "9"; })),
               lq::FormatError, "widths[2][0] = 9 is out of range 0..8");
  CHECK_THROWS(parse(on_entry([](json::Value& e) { e.members.pop_back(); })), lq::FormatError, "has no \"widths\"");
  // A key the format does not define is ignored, as loraquant.load ignores it.
  const std::vector<uint8_t> noted = on_entry([](json::Value& e) { e.add("note", json::Value::string("x")); });
  CHECK_EQ(lq::parse_adapter(noted.data(), noted.size()).modules.size(), (size_t)2);
  CHECK_THROWS(parse(on_entry([](json::Value& e) { at(e, "name").text = "other"; })), lq::FormatError,
               "tensor 'lq.other.blob' is missing");
  CHECK_THROWS(parse(on_entry([](json::Value& e) { at(e, "name").text = ""; })), lq::FormatError, "empty name");
  CHECK_THROWS(parse(on_entry([](json::Value& e) { at(e, "scaling") = json::Value::string("2"); })),
               lq::FormatError, "scaling must be a number");
  CHECK_THROWS(parse(on_entry([](json::Value& e) { at(e, "r") = json::Value::number((uint64_t)1 << 40); })),
               lq::FormatError, "is out of range");
  CHECK_THROWS(parse(edited_v1([](Parts& p) { edit_list(p, "modules", [](json::Value& l) { l.push(l.items[0]); }); })),
               lq::FormatError, "claimed twice");
}

LQ_TEST(adapter_malformed_extras_and_config) {
  CHECK_THROWS(parse(edited([](Parts& p) { edit_list(p, "extras", [](json::Value& l) { l.items.pop_back(); }); })),
               lq::FormatError, "belongs to no module and is not a listed extra");
  CHECK_THROWS(parse(edited([](Parts& p) {
                 p.header.add("lq.x", at(p.header, "base_model.model.empty"));  // 0 bytes: tiles
                 edit_list(p, "extras", [](json::Value& l) { l.push(json::Value::string("lq.x")); });
               })),
               lq::FormatError, "extra 'lq.x': names starting 'lq.' are the file's own");
  CHECK_THROWS(parse(edited([](Parts& p) {
                 edit_list(p, "extras", [](json::Value& l) { l.push(json::Value::string("absent")); });
               })),
               lq::FormatError, "extra 'absent': tensor 'absent' is missing");
  CHECK_THROWS(parse(edited([](Parts& p) { edit_list(p, "extras", [](json::Value& l) { l.push(l.items[0]); }); })),
               lq::FormatError, "claimed twice");
  CHECK_THROWS(parse(edited([](Parts& p) { at(meta(p), "peft_config").text = "[1]"; })), lq::FormatError,
               "\"peft_config\" must be a JSON object");
  CHECK_THROWS(parse(edited([](Parts& p) { at(meta(p), "peft_config").text = std::string(100000, '['); })),
               lq::FormatError, "nesting deeper");
}

LQ_TEST(adapter_malformed_writer_refusals) {
  auto refuses = [](const std::function<void(lq::Adapter&)>& edit, const char* needle) {
    lq::Adapter a = lqtest::sample_adapter();
    edit(a);
    CHECK_THROWS(lq::serialize_adapter(a), std::invalid_argument, needle);
  };
  refuses([](lq::Adapter& a) { a.modules[1].name = a.modules[0].name; }, "is used twice");
  refuses([](lq::Adapter& a) { a.modules[0].name = ""; }, "empty name");
  refuses([](lq::Adapter& a) { a.modules[0].name = "bad\xff"; }, "not valid UTF-8");
  refuses([](lq::Adapter& a) { a.modules[0].name = std::string("q\0proj", 6); }, "name contains NUL");
  refuses([](lq::Adapter& a) { a.modules[0].sigma.clear(); }, "0 singular values for rank 3");
  refuses([](lq::Adapter& a) { a.modules[0].scaling = NAN; }, "non-finite scaling");
  refuses([](lq::Adapter& a) { a.modules[0].module = lq::Module(); }, "holds no module");
  refuses([](lq::Adapter& a) { a.extras[0].data.pop_back(); }, "has 23 bytes but F32 of its shape needs 24");
  refuses([](lq::Adapter& a) { a.extras[0].dtype = "F128"; }, "unknown dtype");
  refuses([](lq::Adapter& a) { a.extras[0].shape = {1ull << 62, 1ull << 62}; }, "shape overflows");
  refuses([](lq::Adapter& a) { a.extras[1].name = a.extras[0].name; }, "is used twice");
  refuses([](lq::Adapter& a) { a.extras[0].name = "__metadata__"; }, "__metadata__");
  refuses([](lq::Adapter& a) { a.extras[0].name = "lq.free"; }, "must not start with 'lq.'");
  refuses([](lq::Adapter& a) { a.modules.clear(); }, "at least one module");
  refuses([](lq::Adapter& a) { a.peft_config_json = "[]"; }, "must be a JSON object");
  refuses([](lq::Adapter& a) { a.peft_config_json = "{"; }, "not valid JSON");
}
