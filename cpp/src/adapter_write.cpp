// Writer of the compressed-adapter file (format.h, version 2): validate, lay out, checksum, write.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <unordered_set>

#include "adapter_names.h"
#include "file_io.h"
#include "json.h"
#include "loraquant/adapter_file.h"
#include "loraquant/format.h"

namespace loraquant {

namespace names = adapter_names;

namespace {

[[noreturn]] void invalid(const std::string& what) {
  throw std::invalid_argument("cannot write the adapter: " + what);
}

// One tensor of the output, before offsets are assigned.
struct Pending {
  std::string name;
  std::string dtype;
  std::vector<uint64_t> shape;
  const uint8_t* data;
  size_t size;
  size_t align;  // tensors go by falling alignment, so every one starts aligned
};

// Blobs hold uint32 code words: they are placed as 4-byte items (format.h).
constexpr size_t kBlobAlign = 4;

void check_name(const std::string& name, const std::string& what,
                std::unordered_set<std::string>& taken) {
  if (name.empty()) invalid(what + " has an empty name");
  if (!json::valid_utf8(name)) invalid(what + " name is not valid UTF-8");
  if (name == names::kMetadata) invalid(what + " may not be called __metadata__");
  if (!taken.insert(name).second) invalid("the tensor name '" + name + "' is used twice (" + what + ")");
}

// The longest common prefix of the names that ends in '.' (format.h, "module_prefix").
std::string module_prefix(const std::vector<AdapterModule>& modules) {
  std::string prefix = modules.front().name;
  for (const AdapterModule& am : modules) {
    size_t k = 0;
    while (k < prefix.size() && k < am.name.size() && prefix[k] == am.name[k]) ++k;
    prefix.resize(k);
  }
  return prefix.substr(0, prefix.rfind('.') + 1);  // npos + 1 == 0: no '.', no prefix
}

std::string peft_config_text(const std::string& text) {
  if (text.empty()) return "{}";
  json::Value v;
  try {
    v = json::parse(text);
  } catch (const FormatError& e) {
    invalid(std::string("peft_config_json is not valid JSON: ") + e.what());
  }
  if (v.kind != json::Value::Object) invalid("peft_config_json must be a JSON object");
  try {
    json::check_finite_numbers(v, "peft_config_json has a");  // as readers require
  } catch (const FormatError& e) {
    invalid(e.what());
  }
  return text;
}

std::string hex8(uint32_t v) {
  char buf[9];
  std::snprintf(buf, sizeof buf, "%08x", v);
  return buf;
}

}  // namespace

std::vector<uint8_t> serialize_adapter(const Adapter& a) {
  std::unordered_set<std::string> module_names, taken = {names::kBlobs, names::kSigma};
  std::vector<uint8_t> blobs;  // every module's blob, back to back (format.h, version 2)
  std::vector<float> sigma;    // every module's singular values
  std::vector<Pending> tensors;
  json::Value modules = json::Value::array(), extras = json::Value::array();

  if (a.modules.empty()) invalid("an adapter needs at least one module");
  const std::string prefix = module_prefix(a.modules);
  for (const AdapterModule& am : a.modules) {
    const std::string what = "module '" + am.name + "'";
    if (am.module.r() == 0) invalid(what + " holds no module (default-constructed)");
    if (!std::isfinite(am.scaling)) invalid(what + " has a non-finite scaling");
    if (am.sigma.size() != am.module.r())
      invalid(what + " has " + std::to_string(am.sigma.size()) + " singular values for rank " +
              std::to_string(am.module.r()));
    for (float sv : am.sigma)
      if (!(sv >= 0.0f) || !std::isfinite(sv)) invalid(what + " has a singular value that is not finite and >= 0");
    if (am.name.empty()) invalid("a module has an empty name");
    if (!json::valid_utf8(am.name)) invalid(what + " name is not valid UTF-8");
    if (am.name.find('\0') != std::string::npos) invalid("a module name contains NUL");
    if (!module_names.insert(am.name).second) invalid("the module name '" + am.name + "' is used twice");
    const std::vector<uint8_t> blob = am.module.to_bytes();
    blobs.insert(blobs.end(), blob.begin(), blob.end());
    sigma.insert(sigma.end(), am.sigma.begin(), am.sigma.end());
    modules.push(json::Value::array()
                     .push(json::Value::string(am.name.substr(prefix.size())))
                     .push(json::Value::number((uint64_t)blob.size()))
                     .push(json::Value::number(am.scaling)));
  }
  tensors.push_back({names::kBlobs, "U8", {blobs.size()}, blobs.data(), blobs.size(), kBlobAlign});
  tensors.push_back({names::kSigma, "F32", {sigma.size()}, reinterpret_cast<const uint8_t*>(sigma.data()),
                     sigma.size() * sizeof(float), sizeof(float)});
  for (const AdapterExtra& x : a.extras) {
    const std::string what = "extra '" + x.name + "'";
    if (names::reserved(x.name)) invalid(what + ": extra names must not start with 'lq.'");
    check_name(x.name, what, taken);
    const size_t item = dtype_size(x.dtype);
    if (item == 0) invalid(what + " has unknown dtype '" + x.dtype + "'");
    uint64_t numel = 1;
    for (uint64_t d : x.shape) {
      if (d != 0 && numel > UINT64_MAX / d / item) invalid(what + " shape overflows");
      numel *= d;
    }
    if (numel * item != x.data.size())
      invalid(what + " has " + std::to_string(x.data.size()) + " bytes but " + x.dtype +
              " of its shape needs " + std::to_string(numel * item));
    tensors.push_back({x.name, x.dtype, x.shape, x.data.data(), x.data.size(), item});
    extras.push(json::Value::string(x.name));
  }
  const std::string peft = peft_config_text(a.peft_config_json);

  const std::string modules_text = json::dump(modules);
  const uint32_t modules_crc =
      crc32(reinterpret_cast<const uint8_t*>(modules_text.data()), modules_text.size(),
            crc32(reinterpret_cast<const uint8_t*>(prefix.data()), prefix.size()));

  std::stable_sort(tensors.begin(), tensors.end(),
                   [](const Pending& p, const Pending& q) { return p.align > q.align; });
  std::vector<uint8_t> data;
  json::Value header = json::Value::object();
  header.add(names::kMetadata, json::Value::object());  // filled below, once the crc is known
  for (const Pending& t : tensors) {
    json::Value shape = json::Value::array();
    for (uint64_t d : t.shape) shape.push(json::Value::number(d));
    json::Value offsets = json::Value::array();
    offsets.push(json::Value::number((uint64_t)data.size()));
    data.insert(data.end(), t.data, t.data + t.size);
    offsets.push(json::Value::number((uint64_t)data.size()));
    json::Value entry = json::Value::object();
    entry.add("dtype", json::Value::string(t.dtype)).add("shape", std::move(shape)).add("data_offsets", std::move(offsets));
    header.add(t.name, std::move(entry));
  }
  header.members[0].second.add(names::kFormat, json::Value::string(LQ_ADAPTER_FORMAT))
      .add(names::kFormatVersion, json::Value::string(LQ_ADAPTER_FORMAT_VERSION))
      .add(names::kModulePrefix, json::Value::string(prefix))
      .add(names::kModules, json::Value::string(modules_text))
      .add(names::kModulesCrc32, json::Value::string(hex8(modules_crc)))
      .add(names::kExtras, json::Value::string(json::dump(extras)))
      .add(names::kPeftConfig, json::Value::string(peft))
      .add(names::kDataCrc32, json::Value::string(hex8(crc32(data.data(), data.size()))));

  std::string text = json::dump(header);
  text.append((8 - text.size() % 8) % 8, ' ');  // the data section starts 8-byte aligned
  std::vector<uint8_t> out(8 + text.size() + data.size());
  for (int k = 0; k < 8; ++k) out[k] = (uint8_t)((uint64_t)text.size() >> (8 * k));
  std::memcpy(out.data() + 8, text.data(), text.size());
  if (!data.empty()) std::memcpy(out.data() + 8 + text.size(), data.data(), data.size());
  return out;
}

void write_adapter_file(const std::string& path, const Adapter& adapter) {
  const std::vector<uint8_t> bytes = serialize_adapter(adapter);
  write_file_atomic(path, bytes.data(), bytes.size());
}

}  // namespace loraquant
