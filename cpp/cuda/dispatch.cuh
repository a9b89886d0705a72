// Host side of a launch, shared by launch.cu (the GPU) and emulate.cpp (the host
// emulation): validate the registry and the shapes, pick the path, size the grids.
// Errors name m, n and r. No CUDA API call here: the callers check for launch errors.
#pragma once

#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels.cuh"
#include "loraquant/cuda.h"

namespace loraquant {
namespace cuda {
namespace LQ_KERNEL_NS {

inline std::string shape(const RegistryRef& reg) {
  return "m=" + std::to_string(reg.m) + ", n=" + std::to_string(reg.n) +
         ", r=" + std::to_string(reg.max_live) + " (live components)";
}

[[noreturn]] inline void unsupported(const RegistryRef& reg, const std::string& why) {
  throw std::invalid_argument("loraquant CUDA: unsupported shape " + shape(reg) + ": " + why);
}

inline void check_registry(const RegistryRef& reg, const void* x, const void* y, uint32_t tokens,
                           const void* workspace) {
  if (!reg.data || reg.count == 0) unsupported(reg, "the registry is empty");
  if (reg.m == 0 || reg.n == 0) unsupported(reg, "m and n must be at least 1");
  if (reg.max_live > LQ_CUDA_MAX_LIVE)
    unsupported(reg, "more than " + std::to_string(LQ_CUDA_MAX_LIVE) + " live components");
  if (tokens && (!x || !y || (!workspace && reg.max_live)))
    unsupported(reg, "x, y and the workspace must be device pointers");
}

// The y-dimension of a grid is at most 65535 blocks.
inline uint32_t tiles_for(const RegistryRef& reg, uint64_t tokens, uint32_t tile) {
  const uint64_t tiles = (tokens + tile - 1) / tile;
  if (tiles > 65535) unsupported(reg, std::to_string(tokens) + " tokens in one segment exceed the grid");
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

inline TokenMap token_map(const int32_t* idx, const int32_t* seg_start, const int32_t* seg_adapter,
                          int32_t single, uint32_t tokens) {
  return TokenMap{idx, seg_start, seg_adapter, single, tokens, 0u, 0xffffffffu};
}

// Call f with a value of the element type that `dtype` names.
template <typename F>
void by_dtype(DType dtype, const RegistryRef& reg, F&& f) {
  switch (dtype) {
    case DType::f32: f(float{}); return;
    case DType::f16: f(__half{}); return;
    case DType::bf16: f(__nv_bfloat16{}); return;
  }
  unsupported(reg, "dtype " + std::to_string((int)dtype) + " is not fp32, fp16 or bf16");
}

inline void dispatch_apply_one(const RegistryRef& reg, int32_t adapter, const void* x, void* y,
                               uint32_t tokens, DType dtype, void* ws, cudaStream_t stream) {
  check_registry(reg, x, y, tokens, ws);
  if (adapter < 0 || (uint32_t)adapter >= reg.count)
    throw std::invalid_argument("loraquant CUDA: adapter " + std::to_string(adapter) +
                                " is not in a registry of " + std::to_string(reg.count));
  if (tokens == 0) return;
  const TokenMap map = token_map(nullptr, nullptr, nullptr, adapter, tokens);
  by_dtype(dtype, reg, [&](auto tag) {
    using T = decltype(tag);
    run_cores(args<T>(reg, map, x, y, ws), 1, kCoresTile, tiles_for(reg, tokens, kCoresTile), stream);
  });
}

inline void dispatch_bgmv(const RegistryRef& reg, const int32_t* idx, const void* x, void* y,
                          uint32_t tokens, DType dtype, void* ws, cudaStream_t stream) {
  check_registry(reg, x, y, tokens, ws);
  if (tokens == 0) return;
  if (!idx) unsupported(reg, "idx must be a device pointer");
  const TokenMap map = token_map(idx, nullptr, nullptr, -1, tokens);
  by_dtype(dtype, reg, [&](auto tag) {
    using T = decltype(tag);
    run_cores(args<T>(reg, map, x, y, ws), tokens, 1, 1, stream);
  });
}

// Segments: tensor cores for those of kMmaMinTokens or more when the dtype is fp16 or
// bf16, CUDA cores for the rest (each kernel skips the other's segments).
inline void dispatch_sgmv(const RegistryRef& reg, const int32_t* seg_start, const int32_t* seg_adapter,
                          uint32_t segs, uint32_t max_len, const void* x, void* y, uint32_t tokens,
                          DType dtype, void* ws, cudaStream_t stream) {
  check_registry(reg, x, y, tokens, ws);
  if (tokens == 0 || segs == 0 || max_len == 0) return;
  if (!seg_start || !seg_adapter) unsupported(reg, "seg_start and seg_adapter must be device pointers");
  const TokenMap map = token_map(nullptr, seg_start, seg_adapter, -1, tokens);
  const bool mma = dtype != DType::f32 && max_len >= kMmaMinTokens &&
                   (uint64_t)reg.m <= 65535ull * kMmaCols;
  by_dtype(dtype, reg, [&](auto tag) {
    using T = decltype(tag);
    TokenMap cores = map;
    cores.max_len = mma ? kMmaMinTokens - 1 : max_len;
    run_cores(args<T>(reg, cores, x, y, ws), segs, kCoresTile,
              tiles_for(reg, cores.max_len, kCoresTile), stream);
    if constexpr (!std::is_same<T, float>::value) {
      if (mma) {
        TokenMap long_map = map;
        long_map.min_len = kMmaMinTokens;
        run_mma(args<T>(reg, long_map, x, y, ws), segs, tiles_for(reg, max_len, kMmaTile), stream);
      }
    }
  });
}

}  // namespace LQ_KERNEL_NS
}  // namespace cuda
}  // namespace loraquant
