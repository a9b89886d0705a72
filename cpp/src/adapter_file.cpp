// Reader of the compressed-adapter file, versions 1 and 2: every check of format.h. It accepts what
// loraquant.load accepts (python/loraquant/adapter_file.py), so that the two readers of
// the one format agree.
#include "loraquant/adapter_file.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <unordered_map>
#include <unordered_set>

#include "adapter_names.h"
#include "file_io.h"
#include "json.h"
#include "loraquant/format.h"

namespace loraquant {

namespace names = adapter_names;

size_t dtype_size(const std::string& dtype) {
  static const std::unordered_map<std::string, size_t> sizes = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},   {"F8_E5M2", 1}, {"F8_E4M3", 1},
      {"I16", 2},  {"U16", 2}, {"F16", 2},  {"BF16", 2},    {"I32", 4},
      {"U32", 4},  {"F32", 4}, {"F64", 8},  {"I64", 8},     {"U64", 8}};
  auto it = sizes.find(dtype);
  return it == sizes.end() ? 0 : it->second;
}

namespace {

// The ceiling the safetensors library (and loraquant.load) puts on the JSON header.
constexpr uint64_t kMaxHeaderBytes = 100000000;

// One entry of the safetensors header; offsets already checked against the data section.
struct Tensor {
  std::string dtype;
  std::vector<uint64_t> shape;
  uint64_t begin = 0, end = 0;  // inside the data section
};

[[noreturn]] void bad(const std::string& what) { throw FormatError(what); }

std::string quoted(const std::string& s) { return "'" + s + "'"; }

// product(shape) * item bytes, or an error if it overflows or exceeds `limit`.
uint64_t tensor_bytes(const std::vector<uint64_t>& shape, uint64_t item, uint64_t limit,
                      const std::string& what) {
  uint64_t numel = 1, strides = 1;  // strides: product of max(d, 1), as torch lays it out
  for (uint64_t d : shape) {
    if (d != 0 && numel > UINT64_MAX / d) bad(what + ": shape overflows 64 bits");
    numel *= d;
    if (strides > (uint64_t)INT64_MAX / (d ? d : 1)) bad(what + ": shape overflows 64-bit strides");
    strides *= d ? d : 1;
  }
  if (numel != 0 && item > limit / numel)
    bad(what + ": shape declares more bytes than the data section holds (" + std::to_string(limit) + ")");
  return numel * item;
}

Tensor read_tensor(const std::string& name, const json::Value& v, uint64_t data_size) {
  const std::string what = "tensor " + quoted(name);
  if (v.kind != json::Value::Object) bad(what + " is not a JSON object");
  if (v.members.size() != 3) bad(what + " must have exactly dtype, shape and data_offsets");
  const json::Value *dt = v.find("dtype"), *sh = v.find("shape"), *off = v.find("data_offsets");
  if (!dt || !sh || !off) bad(what + " must have exactly dtype, shape and data_offsets");
  Tensor t;
  t.dtype = json::as_string(*dt, what + " dtype");
  const size_t item = dtype_size(t.dtype);
  if (item == 0) bad(what + " has unknown dtype " + quoted(t.dtype));
  if (sh->kind != json::Value::Array) bad(what + " shape must be an array");
  for (size_t k = 0; k < sh->items.size(); ++k)
    t.shape.push_back(json::as_uint(sh->items[k], INT64_MAX, what + " shape[" + std::to_string(k) + "]"));
  if (off->kind != json::Value::Array || off->items.size() != 2)
    bad(what + " data_offsets must be [begin, end]");
  t.begin = json::as_uint(off->items[0], data_size, what + " data_offsets begin");
  t.end = json::as_uint(off->items[1], data_size, what + " data_offsets end");
  if (t.end < t.begin) bad(what + " data_offsets end < begin");
  const uint64_t bytes = tensor_bytes(t.shape, item, data_size, what);
  if (bytes != t.end - t.begin)
    bad(what + " holds " + std::to_string(t.end - t.begin) + " bytes but " + t.dtype +
        " of its shape needs " + std::to_string(bytes));
  return t;
}

// As safetensors requires: sorted by offset, each tensor begins where the one before
// ends, the first at 0, the last at the end of the data section.
void check_tiling(const std::unordered_map<std::string, Tensor>& tensors, uint64_t data_size) {
  struct Span {
    uint64_t begin, end;
    const std::string* name;
  };
  std::vector<Span> spans;
  for (const auto& kv : tensors) spans.push_back({kv.second.begin, kv.second.end, &kv.first});
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t pos = 0;
  for (const Span& s : spans) {
    if (s.begin != pos)
      bad("tensor " + quoted(*s.name) + " begins at " + std::to_string(s.begin) + " and " +
          (s.begin < pos ? "overlaps the tensor before it" : "leaves a gap before it") +
          " (expected " + std::to_string(pos) + "): tensors must tile the data section");
    pos = s.end;
  }
  if (pos != data_size)
    bad("the data section has " + std::to_string(data_size) + " bytes but the tensors cover " +
        std::to_string(pos));
}

std::string metadata_string(const std::unordered_map<std::string, std::string>& meta,
                            const char* key) {
  auto it = meta.find(key);
  if (it == meta.end()) bad(std::string("__metadata__ has no \"") + key + "\"");
  return it->second;
}

// A JSON document stored as a metadata string; errors say which one.
json::Value embedded_json(const std::string& text, const char* key) {
  try {
    json::Value v = json::parse(text);
    json::check_finite_numbers(v, "a");
    return v;
  } catch (const FormatError& e) {
    bad(std::string("__metadata__ \"") + key + "\": " + e.what());
  }
}

// The CRC-32 that metadata string `key` holds as 8 lowercase hex digits.
uint32_t crc_of(const std::string& text, const char* key) {
  bool hex = text.size() == 8;
  for (char c : text) hex = hex && ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'));
  if (!hex) bad(std::string(key) + " " + quoted(text) + " is not 8 lowercase hex digits");
  return (uint32_t)std::stoul(text, nullptr, 16);
}

void check_crc(const std::string& text, const uint8_t* data, size_t size) {
  if (crc_of(text, names::kDataCrc32) != crc32(data, size))
    bad("data_crc32 mismatch: the data section is corrupted");
}

class Reader {
 public:
  Reader(const uint8_t* data, size_t size) : file_(data), size_(size) {}

  Adapter read() {
    const json::Value header = read_header();
    const bool v1 = read_metadata(header) == LQ_ADAPTER_FORMAT_VERSION_1;
    for (const auto& m : header.members)
      if (m.first != names::kMetadata)
        tensors_.emplace(m.first, read_tensor(m.first, m.second, data_size_));
    check_tiling(tensors_, data_size_);
    check_crc(metadata_string(meta_, names::kDataCrc32), data_, data_size_);

    Adapter out;
    const json::Value mods = embedded_json(metadata_string(meta_, names::kModules), names::kModules);
    if (mods.kind != json::Value::Array) bad("__metadata__ \"modules\" must be a JSON array");
    if (mods.items.empty()) bad("the file lists no modules");
    if (v1)
      for (size_t k = 0; k < mods.items.size(); ++k) out.modules.push_back(read_module_v1(k, mods.items[k]));
    else
      read_modules(mods, out);
    read_extras(out);
    for (const auto& kv : tensors_)
      if (!used_.count(kv.first))
        bad("tensor " + quoted(kv.first) + " belongs to no module and is not a listed extra");
    out.peft_config_json = metadata_string(meta_, names::kPeftConfig);
    if (embedded_json(out.peft_config_json, names::kPeftConfig).kind != json::Value::Object)
      bad("__metadata__ \"peft_config\" must be a JSON object");
    return out;
  }

 private:
  json::Value read_header() {
    if (size_ < 8)
      bad("truncated: " + std::to_string(size_) + " bytes, a safetensors file starts with an 8-byte length");
    uint64_t n = 0;
    for (int k = 7; k >= 0; --k) n = (n << 8) | file_[k];
    if (n > size_ - 8)
      bad("header length " + std::to_string(n) + " exceeds the " + std::to_string(size_ - 8) +
          " bytes that follow it (truncated or not a safetensors file)");
    if (n > kMaxHeaderBytes)
      bad("header length " + std::to_string(n) + " is more than the limit " +
          std::to_string(kMaxHeaderBytes));
    data_ = file_ + 8 + n;
    data_size_ = size_ - 8 - (size_t)n;
    json::Value h;
    try {
      h = json::parse(reinterpret_cast<const char*>(file_ + 8), (size_t)n);
    } catch (const FormatError& e) {
      bad(std::string("header: ") + e.what());
    }
    if (h.kind != json::Value::Object) bad("header is not a JSON object");
    return h;
  }

  // Checks the format and returns the version, one this reader knows.
  std::string read_metadata(const json::Value& header) {
    const json::Value* meta = header.find(names::kMetadata);
    if (!meta) bad("no __metadata__: a safetensors file, but not a loraquant adapter");
    if (meta->kind != json::Value::Object) bad("__metadata__ is not a JSON object");
    for (const auto& m : meta->members)
      meta_[m.first] = json::as_string(m.second, "__metadata__ \"" + m.first + "\"");
    const std::string format = metadata_string(meta_, names::kFormat);
    if (format != LQ_ADAPTER_FORMAT)
      bad("format is " + quoted(format) + ", not '" LQ_ADAPTER_FORMAT "': not a loraquant adapter");
    const std::string version = metadata_string(meta_, names::kFormatVersion);
    if (version != LQ_ADAPTER_FORMAT_VERSION && version != LQ_ADAPTER_FORMAT_VERSION_1)
      bad("unsupported format_version " + quoted(version) + " (this reader knows " LQ_ADAPTER_FORMAT_VERSION_1
          " and " LQ_ADAPTER_FORMAT_VERSION ")");
    return version;
  }

  const Tensor& tensor(const std::string& name, const std::string& owner) {
    auto it = tensors_.find(name);
    if (it == tensors_.end()) bad(owner + ": tensor " + quoted(name) + " is missing");
    if (!used_.insert(name).second) bad(owner + ": tensor " + quoted(name) + " is claimed twice");
    return it->second;
  }

  static Module read_blob(const uint8_t* blob, uint64_t size, const std::string& what) {
    try {
      return Module::from_bytes(blob, (size_t)size);
    } catch (const FormatError& err) {
      bad(what + " blob: " + err.what());
    }
  }

  // r singular values at `at` in the data section, copied out: alignment is not assumed.
  static std::vector<float> read_sigma(const uint8_t* at, uint32_t r, const std::string& what) {
    std::vector<float> sigma(r);
    if (r) std::memcpy(sigma.data(), at, (size_t)r * sizeof(float));
    for (float s : sigma)
      if (!(s >= 0.0f) || !std::isfinite(s)) bad(what + " sigma holds a value that is not finite and >= 0");
    return sigma;
  }

  // Version 2: [name, blob_bytes, scaling] per module; the blobs and singular values
  // follow one another in "lq.blobs" and "lq.sigma" and fill them.
  void read_modules(const json::Value& mods, Adapter& out) {
    const std::string prefix = metadata_string(meta_, names::kModulePrefix);
    const std::string& text = meta_[names::kModules];  // present: mods was parsed from it
    if (crc_of(metadata_string(meta_, names::kModulesCrc32), names::kModulesCrc32) !=
        crc32(reinterpret_cast<const uint8_t*>(text.data()), text.size(),
              crc32(reinterpret_cast<const uint8_t*>(prefix.data()), prefix.size())))
      bad("modules_crc32 mismatch: the module names or entries are corrupted");
    const Tensor& blobs = tensor(names::kBlobs, "the modules");
    if (blobs.dtype != "U8" || blobs.shape.size() != 1) bad("tensor 'lq.blobs' must be U8 [bytes]");
    const Tensor& sigma = tensor(names::kSigma, "the modules");
    if (sigma.dtype != "F32" || sigma.shape.size() != 1) bad("tensor 'lq.sigma' must be F32 [values]");
    std::unordered_set<std::string> seen;
    uint64_t at = blobs.begin, sv = 0;  // the next blob, the singular values taken
    for (size_t k = 0; k < mods.items.size(); ++k) {
      const json::Value& e = mods.items[k];
      std::string what = "modules[" + std::to_string(k) + "]";
      if (e.kind != json::Value::Array || e.items.size() != 3) bad(what + " must be [name, blob_bytes, scaling]");
      AdapterModule am;
      am.name = prefix + json::as_string(e.items[0], what + " name");
      if (am.name.empty()) bad(what + " has an empty name");
      if (am.name.find('\0') != std::string::npos)  // the C API hands names out NUL-terminated
        bad(what + ": a name must not contain NUL");
      if (!seen.insert(am.name).second) bad("module " + quoted(am.name) + " appears twice");
      what = "module " + quoted(am.name);
      const uint64_t bytes = json::as_uint(e.items[1], blobs.end - at, what + " blob_bytes (what 'lq.blobs' has left)");
      am.scaling = json::as_double(e.items[2], what + " scaling");
      am.module = read_blob(data_ + at, bytes, what);
      at += bytes;
      const uint32_t r = am.module.r();
      if (r > sigma.shape[0] - sv)
        bad(what + ": 'lq.sigma' has " + std::to_string(sigma.shape[0] - sv) + " values left for rank " +
            std::to_string(r));
      am.sigma = read_sigma(data_ + sigma.begin + 4 * sv, r, what);
      sv += r;
      out.modules.push_back(std::move(am));
    }
    if (at != blobs.end)
      bad("tensor 'lq.blobs' has " + std::to_string(blobs.end - at) + " bytes after the last module's blob");
    if (sv != sigma.shape[0])
      bad("tensor 'lq.sigma' has " + std::to_string(sigma.shape[0] - sv) + " values beyond the modules' ranks");
  }

  // Version 1: an object per module, its blob and sigma in tensors of their own.
  AdapterModule read_module_v1(size_t k, const json::Value& e) {
    std::string what = "modules[" + std::to_string(k) + "]";
    if (e.kind != json::Value::Object) bad(what + " is not a JSON object");
    for (const char* key : names::kModuleKeysV1)
      if (!e.find(key)) bad(what + " has no \"" + key + "\"");
    AdapterModule am;
    am.name = json::as_string(*e.find("name"), what + " name");
    if (am.name.empty()) bad(what + " has an empty name");
    if (am.name.find('\0') != std::string::npos) bad(what + ": a name must not contain NUL");
    what = "module " + quoted(am.name);
    const uint64_t m = json::as_uint(*e.find("m"), LQ_MAX_DIM, what + " m");
    const uint64_t n = json::as_uint(*e.find("n"), LQ_MAX_DIM, what + " n");
    const uint64_t r = json::as_uint(*e.find("r"), LQ_MAX_RANK, what + " r");
    const uint64_t g = json::as_uint(*e.find("group_size"), LQ_MAX_GROUP, what + " group_size");
    am.scaling = json::as_double(*e.find("scaling"), what + " scaling");
    const json::Value& w = *e.find("widths");
    if (w.kind != json::Value::Array || w.items.size() != r)
      bad(what + " widths must be an array of r = " + std::to_string(r) + " pairs [b_width, a_width]");

    const Tensor& blob = tensor(names::blob_tensor_v1(am.name), what);
    if (blob.dtype != "U8" || blob.shape.size() != 1) bad(what + " blob must be U8 [bytes]");
    am.module = read_blob(data_ + blob.begin, blob.end - blob.begin, what);
    const Module& mod = am.module;
    if (mod.m() != m || mod.n() != n || mod.r() != r || mod.group_size() != g)
      bad(what + ": entry says m, n, r, group_size = " + std::to_string(m) + ", " + std::to_string(n) +
          ", " + std::to_string(r) + ", " + std::to_string(g) + " but its blob holds " +
          std::to_string(mod.m()) + ", " + std::to_string(mod.n()) + ", " + std::to_string(mod.r()) +
          ", " + std::to_string(mod.group_size()));
    for (uint32_t i = 0; i < (uint32_t)r; ++i) {
      const std::string wi = what + " widths[" + std::to_string(i) + "]";
      const json::Value& pair = w.items[i];
      if (pair.kind != json::Value::Array || pair.items.size() != 2) bad(wi + " must be [b_width, a_width]");
      if (json::as_uint(pair.items[0], LQ_MAX_WIDTH, wi + "[0]") != mod.b_width(i) ||
          json::as_uint(pair.items[1], LQ_MAX_WIDTH, wi + "[1]") != mod.a_width(i))
        bad(wi + " disagrees with its blob");
    }

    const Tensor& sig = tensor(names::sigma_tensor_v1(am.name), what);
    if (sig.dtype != "F32" || sig.shape.size() != 1 || sig.shape[0] != r)
      bad(what + " sigma must be F32 [" + std::to_string(r) + "]");
    am.sigma = read_sigma(data_ + sig.begin, (uint32_t)r, what);
    return am;
  }

  void read_extras(Adapter& out) {
    const json::Value list = embedded_json(metadata_string(meta_, names::kExtras), names::kExtras);
    if (list.kind != json::Value::Array) bad("__metadata__ \"extras\" must be a JSON array");
    for (size_t k = 0; k < list.items.size(); ++k) {
      AdapterExtra x;
      x.name = json::as_string(list.items[k], "extras[" + std::to_string(k) + "]");
      if (names::reserved(x.name)) bad("extra " + quoted(x.name) + ": names starting 'lq.' are the file's own");
      const Tensor& t = tensor(x.name, "extra " + quoted(x.name));
      x.dtype = t.dtype;
      x.shape = t.shape;
      x.data.assign(data_ + t.begin, data_ + t.end);
      out.extras.push_back(std::move(x));
    }
  }

  const uint8_t* file_;
  size_t size_;
  const uint8_t* data_ = nullptr;
  size_t data_size_ = 0;
  std::unordered_map<std::string, std::string> meta_;
  std::unordered_map<std::string, Tensor> tensors_;
  std::unordered_set<std::string> used_;  // tensors claimed by a module or an extra
};

}  // namespace

Adapter parse_adapter(const uint8_t* data, size_t size) {
  if (!data && size) throw std::invalid_argument("parse_adapter: data is null");
  try {
    return Reader(data, size).read();
  } catch (const FormatError& e) {
    throw FormatError(std::string("adapter file: ") + e.what());
  }
}

Adapter read_adapter_file(const std::string& path) {
  const std::vector<uint8_t> bytes = read_whole_file(path);
  try {
    return Reader(bytes.data(), bytes.size()).read();
  } catch (const FormatError& e) {
    throw FormatError(path + ": " + e.what());
  }
}

}  // namespace loraquant
