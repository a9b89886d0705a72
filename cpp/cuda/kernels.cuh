// What dispatch.cuh needs of the kernel files: the argument block and the two paths.
#pragma once

#include "common.cuh"

#ifndef LQ_EMULATE
#include <cuda_runtime.h>
#endif

namespace loraquant {
namespace cuda {
namespace LQ_KERNEL_NS {

// Arguments of every shrink and expand kernel, passed by value.
template <typename T>
struct Args {
  Reg reg;
  TokenMap map;
  const T* x;          // tokens x n, row-major
  T* y;                // tokens x m, row-major; the kernels add to it
  float* part;         // workspace: part[splits][tokens][max_live], fp32
  uint32_t m, n;       // layer shape
  uint32_t splits;     // lq_cuda_splits(n)
  uint32_t split_len;  // lq_cuda_split_len(n)
};

// CUDA-core path: `units` tokens (per-token mode) or segments, in tiles of `tile`
// tokens (1 or kCoresTile) with `tiles` tiles per unit (shrink.cu, expand.cu).
template <typename T>
void launch_shrink_cores(const Args<T>& a, uint32_t units, uint32_t tile, uint32_t tiles,
                         cudaStream_t stream);
template <typename T>
void launch_expand_cores(const Args<T>& a, uint32_t units, uint32_t tile, uint32_t tiles,
                         cudaStream_t stream);

// Shrink, then expand, on `stream`.
template <typename T>
void run_cores(const Args<T>& a, uint32_t units, uint32_t tile, uint32_t tiles, cudaStream_t stream) {
  launch_shrink_cores(a, units, tile, tiles, stream);
  launch_expand_cores(a, units, tile, tiles, stream);
}

// Tensor-core path (T = __half or __nv_bfloat16): segments in tiles of 64 tokens.
template <typename T>
void run_mma(const Args<T>& a, uint32_t units, uint32_t tiles, cudaStream_t stream);

constexpr uint32_t kCoresTile = 8;    // tokens one CUDA-core block serves in segment mode
constexpr uint32_t kMmaTile = 64;     // tokens one tensor-core block serves
constexpr uint32_t kExpandLane = 8;   // outputs per lane in the CUDA-core expand
constexpr uint32_t kExpandBlock = kExpandLane * 32 * kWarps;  // outputs per block: 1024
constexpr uint32_t kMmaCols = 64;     // outputs per tensor-core expand block

}  // namespace LQ_KERNEL_NS
}  // namespace cuda
}  // namespace loraquant
