// loraquant CUDA adapter path: y += B_hat (A_hat x) straight from the packed codes.
//
// Torch-free: launchers take raw device pointers, sizes and a stream. The registry
// (cuda_desc.h) holds many modules of one layer in one device buffer; a launch serves
// tokens that each use one of them, or none.
//
// Every launcher ADDS to y (tokens x m, row-major), reads x (tokens x n, row-major),
// both of one dtype, and uses a caller-provided fp32 workspace of workspace_bytes().
// Kernels, per launch:
//   apply_one  one adapter for all tokens (decode, 1..64 tokens): each decoded code
//              serves up to 8 tokens.
//   bgmv       token t uses adapter idx[t] (-1 or out of range: none), any mix.
//   sgmv       segment s = tokens [seg_start[s], seg_start[s+1]) uses seg_adapter[s];
//              fp16/bf16 segments of at least kMmaMinTokens tokens run on tensor cores
//              (fp16/bf16 operands, fp32 accumulation), shorter ones like apply_one.
// Every launch: shrink t = A_hat x into the workspace (partial sums over slices of n),
// then expand y += B_hat t. fp32 accumulation throughout, except the tensor-core path.
#ifndef LORAQUANT_CUDA_H
#define LORAQUANT_CUDA_H

#include <cstddef>
#include <cstdint>
#include <vector>

#include "cuda_desc.h"

struct CUstream_st;  // cudaStream_t is CUstream_st*; no CUDA header is needed here

namespace loraquant {

class Module;

namespace cuda {

using Stream = CUstream_st*;

// Element type of x and y.
enum class DType : int { f32 = 0, f16 = 1, bf16 = 2 };

// Segments at least this long take the tensor-core path in sgmv (fp16/bf16 only).
constexpr uint32_t kMmaMinTokens = 32;

// What a launch needs to know of a registry; `data` is the device copy of bytes().
struct RegistryRef {
  const uint8_t* data = nullptr;  // registry buffer (device memory for launches)
  uint32_t count = 0;             // modules
  uint32_t m = 0, n = 0;          // shape shared by all modules
  uint32_t max_live = 0;          // most live components of one module
  uint64_t comps_offset = 0;      // byte offset of the component table
};

// Host side: lay out modules of one layer (same m and n) in one buffer. Pure host code,
// built with or without CUDA; throws std::invalid_argument naming the odd module.
class Registry {
 public:
  explicit Registry(const std::vector<const Module*>& modules);
  const std::vector<uint8_t>& bytes() const { return bytes_; }
  RegistryRef ref(const uint8_t* data) const;  // data: where bytes() lies (host or device)

 private:
  std::vector<uint8_t> bytes_;
  RegistryRef info_;
};

// Host checks for machines without a GPU; every pointer is a host pointer.
// decode_host: A_hat (r x n) and B_hat (m x r) of module `index`, through the descriptors.
void decode_host(const RegistryRef& host, uint32_t index, float* A_hat, float* B_hat);
// emulate_*: the launchers with the kernels' own source run on the CPU (emulate.cpp): x
// and y are fp32 arrays, rounded to `dtype` on the way in and out; the workspace is
// internal and NaN-filled. Slow (one OS thread per CUDA thread): for small tests.
void emulate_apply_one(const RegistryRef& host, int32_t adapter, const float* x, float* y,
                       uint32_t tokens, DType dtype);
void emulate_bgmv(const RegistryRef& host, const int32_t* idx, const float* x, float* y,
                  uint32_t tokens, DType dtype);
void emulate_sgmv(const RegistryRef& host, const int32_t* seg_start, const int32_t* seg_adapter,
                  uint32_t segments, uint32_t max_seg_len, const float* x, float* y,
                  uint32_t tokens, DType dtype);

// Bytes of fp32 workspace a launch over `tokens` tokens needs (0 when tokens is 0).
size_t workspace_bytes(const RegistryRef& reg, uint32_t tokens);

// ---- device: only in builds with CUDA (build_info()["cuda"]) ----------------------

// Devices the runtime sees; 0 without a driver or device (never throws).
int device_count();

// The launchers validate shapes and throw std::invalid_argument (naming m, n, r) or
// std::runtime_error (a CUDA error). x, y, idx, seg_* and workspace are device pointers.
void apply_one(const RegistryRef& reg, int32_t adapter, const void* x, void* y,
               uint32_t tokens, DType dtype, void* workspace, Stream stream);
void bgmv(const RegistryRef& reg, const int32_t* idx, const void* x, void* y, uint32_t tokens,
          DType dtype, void* workspace, Stream stream);
void sgmv(const RegistryRef& reg, const int32_t* seg_start, const int32_t* seg_adapter,
          uint32_t segments, uint32_t max_seg_len, const void* x, void* y, uint32_t tokens,
          DType dtype, void* workspace, Stream stream);

// A registry uploaded with cudaMemcpyAsync on `stream`; frees its memory when destroyed.
class DeviceRegistry {
 public:
  DeviceRegistry(const Registry& host, Stream stream);
  ~DeviceRegistry();
  DeviceRegistry(const DeviceRegistry&) = delete;
  DeviceRegistry& operator=(const DeviceRegistry&) = delete;
  const RegistryRef& ref() const { return ref_; }

 private:
  RegistryRef ref_;
  uint8_t* device_ = nullptr;
};

}  // namespace cuda
}  // namespace loraquant

#endif
