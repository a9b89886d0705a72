// Device helpers shared by the loraquant kernels: element types, reductions, and the
// mapping from a block to the tokens it serves and their adapter.
//
// The kernel files also compile as host C++ under LQ_EMULATE (emu/simt.h, emulate.cpp):
// then LQ_KERNEL_NS names their namespace, and the few CUDA spellings below that plain
// C++ lacks (launch syntax, dynamic shared memory) come from macros.
#pragma once

#include <stdint.h>

#ifndef LQ_EMULATE
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

#include "loraquant/cuda_desc.h"

#ifndef LQ_KERNEL_NS
#define LQ_KERNEL_NS detail  // loraquant::cuda::detail: the kernels the GPU runs
#endif

#ifdef LQ_EMULATE
#define LQ_LAUNCH(grid, block, smem, stream, ...) \
  (void)(stream), ::lq_emu::Launch(__VA_ARGS__, grid, block, smem)
#define LQ_DYNAMIC_SHARED(type, name) type* name = ::lq_emu::dynamic_shared<type>()
#else
#define LQ_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<grid, block, smem, stream>>>
#define LQ_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#endif

namespace loraquant {
namespace cuda {
namespace LQ_KERNEL_NS {

constexpr int kWarps = 4;             // warps per block of every kernel
constexpr int kThreads = 32 * kWarps;
// Blocks per SM that __launch_bounds__ asks for where it helps: at 128 registers ptxas
// allocates expand_cores<8> and shrink_mma without the spills it makes uncapped
// (shrink_cores<8> needs more than 128 and keeps no cap).
constexpr int kMinBlocks = 4;

// Activations are read and written in their own dtype and summed in fp32, so one
// kernel body serves fp32, fp16 and bf16 layers.
__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Butterfly sum: every lane ends with the warp's total, so any lane may store it.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// The registry as the kernels see it: the buffer and its two tables.
struct Reg {
  const uint8_t* data;
  const lq_cuda_module* modules;
  const lq_cuda_comp* comps;
  uint32_t count, max_live;
};

// Which tokens a block serves. Two modes share the kernels:
//   per token (idx != nullptr): block unit u is token u, adapter idx[u];
//   segments: unit u is segment u = tokens [seg_start[u], seg_start[u+1]) with adapter
//   seg_adapter[u]; seg_start == nullptr means one segment [0, tokens) with `single`.
// Segments shorter than min_len or longer than max_len belong to another kernel.
struct TokenMap {
  const int32_t* idx;
  const int32_t* seg_start;
  const int32_t* seg_adapter;
  int32_t single;
  uint32_t tokens;
  uint32_t min_len, max_len;
};

// The block's adapter and its tokens [tok0, tok0 + cnt), tile `tile` of `tile_len`
// tokens of its unit; false when the block has nothing to do (the whole block agrees,
// so it may return before any barrier).
__device__ __forceinline__ bool resolve(const TokenMap& map, const Reg& reg, uint32_t unit,
                                        uint32_t tile, uint32_t tile_len, int32_t* adapter,
                                        uint32_t* tok0, uint32_t* cnt) {
  int64_t begin, end;
  if (map.idx) {
    if (tile != 0) return false;
    begin = unit;
    end = unit + 1;
    *adapter = map.idx[unit];
  } else {
    begin = map.seg_start ? map.seg_start[unit] : 0;
    end = map.seg_start ? map.seg_start[unit + 1] : (int64_t)map.tokens;
    begin = begin < 0 ? 0 : begin;
    end = end > (int64_t)map.tokens ? (int64_t)map.tokens : end;
    const int64_t len = end - begin;
    if (len < (int64_t)map.min_len || len > (int64_t)map.max_len) return false;
    *adapter = map.seg_adapter ? map.seg_adapter[unit] : map.single;
  }
  const int64_t first = begin + (int64_t)tile * tile_len;
  if (*adapter < 0 || (uint32_t)*adapter >= reg.count || first >= end) return false;
  *tok0 = (uint32_t)first;
  *cnt = (uint32_t)(end - first < tile_len ? end - first : tile_len);
  return true;
}

// Sum of the slices' partial sums of t_c for one token: the shrink wrote each once.
__device__ __forceinline__ float gather_t(const float* part, uint32_t splits, uint32_t tokens,
                                          uint32_t tok, uint32_t max_live, uint32_t c) {
  float s = 0.0f;
  for (uint32_t k = 0; k < splits; ++k) s += part[lq_cuda_partial(k, tokens, tok, max_live, c)];
  return s;
}

}  // namespace LQ_KERNEL_NS
}  // namespace cuda
}  // namespace loraquant
