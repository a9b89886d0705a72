// Private: whole-file reads and atomic writes, with IoError messages naming the path.
#ifndef LORAQUANT_FILE_IO_H
#define LORAQUANT_FILE_IO_H

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace loraquant {

// Every byte of a file. The buffer grows with what is actually read, never with a size
// claimed by the content.
std::vector<uint8_t> read_whole_file(const std::string& path);

// Write to a temporary file beside `path`, flush it to disk, rename it over `path`.
// On failure the temporary file is removed and `path` is untouched.
void write_file_atomic(const std::string& path, const uint8_t* data, size_t size);

}  // namespace loraquant

#endif
