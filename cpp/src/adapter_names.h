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
constexpr const char* kModules = "modules";
constexpr const char* kExtras = "extras";
constexpr const char* kPeftConfig = "peft_config";
constexpr const char* kDataCrc32 = "data_crc32";
constexpr const char* kModuleKeys[] = {"name", "m", "n", "r", "group_size", "scaling", "widths"};

inline std::string blob_tensor(const std::string& module) { return "lq." + module + ".blob"; }
inline std::string sigma_tensor(const std::string& module) { return "lq." + module + ".sigma"; }

}  // namespace adapter_names
}  // namespace loraquant

#endif
