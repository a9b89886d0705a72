// The launchers of cuda.h: validate on the host, pick a path, launch, report errors.
#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels.cuh"
#include "loraquant/cuda.h"

namespace loraquant {
namespace cuda {

namespace {

using detail::Args;
using detail::TokenMap;

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    throw std::runtime_error(std::string("loraquant CUDA: ") + what + ": " + cudaGetErrorString(e));
}

std::string shape(const RegistryRef& reg) {
  return "m=" + std::to_string(reg.m) + ", n=" + std::to_string(reg.n) +
         ", r=" + std::to_string(reg.max_live) + " (live components)";
}

[[noreturn]] void unsupported(const RegistryRef& reg, const std::string& why) {
  throw std::invalid_argument("loraquant CUDA: unsupported shape " + shape(reg) + ": " + why);
}

void check_registry(const RegistryRef& reg, const void* x, const void* y, uint32_t tokens,
                    const void* workspace) {
  if (!reg.data || reg.count == 0) unsupported(reg, "the registry is empty");
  if (reg.m == 0 || reg.n == 0) unsupported(reg, "m and n must be at least 1");
  if (reg.max_live > LQ_CUDA_MAX_LIVE)
    unsupported(reg, "more than " + std::to_string(LQ_CUDA_MAX_LIVE) + " live components");
  if (tokens && (!x || !y || (!workspace && reg.max_live)))
    unsupported(reg, "x, y and the workspace must be device pointers");
}

// The y-dimension of a grid is at most 65535 blocks.
uint32_t tiles_for(const RegistryRef& reg, uint64_t tokens, uint32_t tile) {
  const uint64_t tiles = (tokens + tile - 1) / tile;
  if (tiles > 65535)
    unsupported(reg, std::to_string(tokens) + " tokens in one segment exceed the grid");
  return (uint32_t)(tiles ? tiles : 1);
}

template <typename T>
Args<T> args(const RegistryRef& reg, const TokenMap& map, const void* x, void* y, void* ws) {
  Args<T> a;
  a.reg.data = reg.data;
  a.reg.modules = reinterpret_cast<const lq_cuda_module*>(reg.data);
  a.reg.comps = reinterpret_cast<const lq_cuda_comp*>(reg.data + reg.comps_offset);
  a.reg.count = reg.count;
  a.reg.max_live = reg.max_live;
  a.map = map;
  a.x = static_cast<const T*>(x);
  a.y = static_cast<T*>(y);
  a.part = static_cast<float*>(ws);
  a.m = reg.m;
  a.n = reg.n;
  a.splits = lq_cuda_splits(reg.n);
  a.split_len = lq_cuda_split_len(reg.n);
  return a;
}

TokenMap token_map(const int32_t* idx, const int32_t* seg_start, const int32_t* seg_adapter,
                   int32_t single, uint32_t tokens) {
  return TokenMap{idx, seg_start, seg_adapter, single, tokens, 0u, 0xffffffffu};
}

// Segments: tensor cores for the long ones when the dtype allows, CUDA cores for the rest.
template <typename T>
void segments(const RegistryRef& reg, TokenMap map, uint32_t units, uint32_t max_len,
              const void* x, void* y, void* ws, cudaStream_t stream, bool tensor_cores) {
  const bool mma = tensor_cores && max_len >= kMmaMinTokens &&
                   (uint64_t)reg.m <= 65535ull * detail::kMmaCols;
  TokenMap cores = map;
  cores.max_len = mma ? kMmaMinTokens - 1 : max_len;
  const uint32_t short_len = mma ? kMmaMinTokens - 1 : max_len;
  detail::run_cores(args<T>(reg, cores, x, y, ws), units, detail::kCoresTile,
                    tiles_for(reg, short_len, detail::kCoresTile), stream);
  check(cudaGetLastError(), "CUDA-core kernels");
  if (!mma) return;
  TokenMap long_map = map;
  long_map.min_len = kMmaMinTokens;
  long_map.max_len = max_len;
  if constexpr (!std::is_same<T, float>::value) {
    detail::run_mma(args<T>(reg, long_map, x, y, ws), units,
                    tiles_for(reg, max_len, detail::kMmaTile), stream);
    check(cudaGetLastError(), "tensor-core kernels");
  }
}

template <typename F>
void by_dtype(DType dtype, const RegistryRef& reg, F&& f) {
  switch (dtype) {
    case DType::f32: f(float{}); return;
    case DType::f16: f(__half{}); return;
    case DType::bf16: f(__nv_bfloat16{}); return;
  }
  unsupported(reg, "dtype " + std::to_string((int)dtype) + " is not fp32, fp16 or bf16");
}

}  // namespace

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // clear it: no driver or no device is an answer, not an error
    return 0;
  }
  return n;
}

void apply_one(const RegistryRef& reg, int32_t adapter, const void* x, void* y, uint32_t tokens,
               DType dtype, void* workspace, Stream stream) {
  check_registry(reg, x, y, tokens, workspace);
  if (adapter < 0 || (uint32_t)adapter >= reg.count)
    throw std::invalid_argument("loraquant CUDA: adapter " + std::to_string(adapter) +
                                " is not in a registry of " + std::to_string(reg.count));
  if (tokens == 0) return;
  const TokenMap map = token_map(nullptr, nullptr, nullptr, adapter, tokens);
  by_dtype(dtype, reg, [&](auto tag) {
    using T = decltype(tag);
    detail::run_cores(args<T>(reg, map, x, y, workspace), 1, detail::kCoresTile,
                      tiles_for(reg, tokens, detail::kCoresTile), stream);
  });
  check(cudaGetLastError(), "apply_one");
}

void bgmv(const RegistryRef& reg, const int32_t* idx, const void* x, void* y, uint32_t tokens,
          DType dtype, void* workspace, Stream stream) {
  check_registry(reg, x, y, tokens, workspace);
  if (tokens == 0) return;
  if (!idx) unsupported(reg, "idx must be a device pointer");
  const TokenMap map = token_map(idx, nullptr, nullptr, -1, tokens);
  by_dtype(dtype, reg, [&](auto tag) {
    using T = decltype(tag);
    detail::run_cores(args<T>(reg, map, x, y, workspace), tokens, 1, 1, stream);
  });
  check(cudaGetLastError(), "bgmv");
}

void sgmv(const RegistryRef& reg, const int32_t* seg_start, const int32_t* seg_adapter,
          uint32_t segs, uint32_t max_seg_len, const void* x, void* y, uint32_t tokens,
          DType dtype, void* workspace, Stream stream) {
  check_registry(reg, x, y, tokens, workspace);
  if (tokens == 0 || segs == 0 || max_seg_len == 0) return;
  if (!seg_start || !seg_adapter) unsupported(reg, "seg_start and seg_adapter must be device pointers");
  const TokenMap map = token_map(nullptr, seg_start, seg_adapter, -1, tokens);
  by_dtype(dtype, reg, [&](auto tag) {
    using T = decltype(tag);
    segments<T>(reg, map, segs, max_seg_len, x, y, workspace, stream, dtype != DType::f32);
  });
}

DeviceRegistry::DeviceRegistry(const Registry& host, Stream stream) {
  const auto& bytes = host.bytes();
  check(cudaMalloc(&device_, bytes.size()), "cudaMalloc of the registry");
  const cudaError_t e = cudaMemcpyAsync(device_, bytes.data(), bytes.size(),
                                        cudaMemcpyHostToDevice, stream);
  // Wait, so that the host bytes may go away once the constructor returns.
  const cudaError_t s = e == cudaSuccess ? cudaStreamSynchronize(stream) : e;
  if (s != cudaSuccess) {
    cudaFree(device_);
    check(s, "upload of the registry");
  }
  ref_ = host.ref(device_);
}

DeviceRegistry::~DeviceRegistry() { cudaFree(device_); }

}  // namespace cuda
}  // namespace loraquant
