// Whole-file reads and atomic writes (file_io.h).
#include "file_io.h"

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <thread>

#include "loraquant/adapter_file.h"

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#define LQ_HAVE_FSYNC 1
#endif

namespace loraquant {

namespace {

std::string reason(int err) { return err ? std::strerror(err) : "unknown error"; }

// A name no other writer in this or another process picks at the same moment.
std::string temp_name(const std::string& path) {
  static std::atomic<unsigned> counter{0};
  const auto t = std::chrono::steady_clock::now().time_since_epoch().count();
  const size_t tid = std::hash<std::thread::id>()(std::this_thread::get_id());
  return path + ".tmp-" + std::to_string(t) + "-" + std::to_string(tid % 1000003) + "-" +
         std::to_string(counter++);
}

}  // namespace

std::vector<uint8_t> read_whole_file(const std::string& path) {
  errno = 0;
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw IoError("cannot open '" + path + "': " + reason(errno));
  std::vector<uint8_t> out;
  constexpr size_t kChunk = 1 << 16;
  for (;;) {
    const size_t have = out.size();
    out.resize(have + kChunk);
    const size_t got = std::fread(out.data() + have, 1, kChunk, f);
    out.resize(have + got);
    if (got < kChunk) break;
  }
  const int err = errno;
  const bool failed = std::ferror(f) != 0;
  std::fclose(f);
  if (failed) throw IoError("cannot read '" + path + "': " + reason(err));
  return out;
}

void write_file_atomic(const std::string& path, const uint8_t* data, size_t size) {
  const std::string tmp = temp_name(path);
  errno = 0;
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) throw IoError("cannot write '" + path + "': cannot create '" + tmp + "': " + reason(errno));
  bool ok = std::fwrite(data, 1, size, f) == size && std::fflush(f) == 0;
#ifdef LQ_HAVE_FSYNC
  ok = ok && ::fsync(::fileno(f)) == 0;  // the bytes reach the disk before the rename
#endif
  int err = ok ? 0 : errno;
  if (std::fclose(f) != 0 && ok) {
    ok = false;
    err = errno;
  }
  std::error_code ec;
  if (!ok) {
    std::filesystem::remove(tmp, ec);
    throw IoError("cannot write '" + path + "': " + reason(err));
  }
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::error_code ignored;
    std::filesystem::remove(tmp, ignored);
    throw IoError("cannot write '" + path + "': rename failed: " + ec.message());
  }
}

}  // namespace loraquant
