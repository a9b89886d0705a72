// The compressed-adapter file (a safetensors container, specified at the end of
// format.h): the same file that Python's loraquant.save writes and loraquant.load reads.
#ifndef LORAQUANT_ADAPTER_FILE_H
#define LORAQUANT_ADAPTER_FILE_H

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "loraquant/module.h"

namespace loraquant {

// A file could not be opened, read, written or renamed (the message names the path
// and the system's reason). Malformed content is a FormatError instead.
struct IoError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// One compressed LoRA module of an adapter.
struct AdapterModule {
  std::string name;          // PEFT module path, e.g. "base_model.model.layers.0.self_attn.q_proj"
  double scaling = 1.0;      // the scaling s folded into the codes (update = s * B @ A)
  Module module;             // the packed module
  std::vector<float> sigma;  // r singular values of s * B @ A (for inspection, not served)
};

// A tensor kept unchanged (modules_to_save weights, LoRA biases), in safetensors terms.
struct AdapterExtra {
  std::string name;             // tensor name as in the source state dict
  std::string dtype;            // safetensors dtype: "F32", "F16", "BF16", "I64", "U8", ...
  std::vector<uint64_t> shape;  // dimensions; {} is a scalar
  std::vector<uint8_t> data;    // little-endian, row-major: product(shape) * dtype size bytes
};

struct Adapter {
  std::vector<AdapterModule> modules;  // file order; a file holds at least one
  std::string peft_config_json = "{}"; // the source adapter_config.json, a JSON object
  std::vector<AdapterExtra> extras;    // file order of the "extras" list
};

// Parse a whole file held in memory. Performs every check format.h lists and throws
// FormatError naming the problem; sizes declared in the file are checked against the
// bytes present before anything is allocated for them, and nothing is read out of bounds.
Adapter parse_adapter(const uint8_t* data, size_t size);
// Read and parse a file. IoError if it cannot be read, FormatError as parse_adapter.
Adapter read_adapter_file(const std::string& path);

// The file's bytes. Throws std::invalid_argument if the adapter cannot be stored as
// format.h defines (no modules, duplicate or empty names, sigma not of length r,
// non-finite scaling, an extra named "lq.*" or whose bytes do not match its dtype and
// shape, a peft config that is not a JSON object). The output is deterministic: the
// same adapter gives the same bytes.
std::vector<uint8_t> serialize_adapter(const Adapter& adapter);
// Write the file atomically: a temporary file in the same directory, flushed, then
// renamed over `path`; on any failure the temporary file is removed and `path` is left
// as it was. IoError on a file-system failure.
void write_adapter_file(const std::string& path, const Adapter& adapter);

// Bytes per element of a safetensors dtype name, or 0 if the name is unknown.
size_t dtype_size(const std::string& dtype);

}  // namespace loraquant

#endif
