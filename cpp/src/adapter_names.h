// Private: the names and keys of the compressed-adapter file, as format.h defines them,
// shared by its reader (adapter_file.cpp) and writer (adapter_write.cpp).
#ifndef LORAQUANT_ADAPTER_NAMES_H
#define LORAQUANT_ADAPTER_NAMES_H

#include <string>

namespace loraquant {
namespace adapter_names {

constexpr const char* kMetadata = "__metadata__";  // the safetensors metadata object

// Keys of the metadata object and of one "modules" entry.
constexpr const char* kFormat = "format";
constexpr const char* kFormatVersion = "format_version";
constexpr const char* kModulePrefix = "module_prefix";  // version 2
constexpr const char* kModulesCrc32 = "modules_crc32";  // version 2
constexpr const char* kModules = "modules";
constexpr const char* kExtras = "extras";
constexpr const char* kPeftConfig = "peft_config";
constexpr const char* kDataCrc32 = "data_crc32";

// Version 2: every module's blob in one tensor, every singular value in another.
constexpr const char* kBlobs = "lq.blobs";
constexpr const char* kSigma = "lq.sigma";
// Names starting so are the file's own tensors: no extra may take one.
constexpr const char* kReserved = "lq.";

// Version 1: the keys of a "modules" entry and each module's two tensors.
constexpr const char* kModuleKeysV1[] = {"name", "m", "n", "r", "group_size", "scaling", "widths"};
inline std::string blob_tensor_v1(const std::string& module) { return "lq." + module + ".blob"; }
inline std::string sigma_tensor_v1(const std::string& module) { return "lq." + module + ".sigma"; }

inline bool reserved(const std::string& name) { return name.rfind(kReserved, 0) == 0; }

}  // namespace adapter_names
}  // namespace loraquant

#endif
