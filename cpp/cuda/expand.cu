// CUDA-core expand: y += B_hat t, decoding codes in registers, fp32 sums.
// (shrink.cu is the other half of the CUDA-core path.)
//
// Lane l of a warp owns outputs 32 k + l: each code word is read once per warp
// (broadcast), y accesses are coalesced, and every decoded entry serves up to 8 tokens.
#include "kernels.cuh"

namespace loraquant {
namespace cuda {
namespace LQ_KERNEL_NS {

namespace {

// Expand: y[tok] += sum_c b_c t_c for TT tokens; each block owns 1024 outputs.
// grid: x = unit, y = tile, z = chunk of m. Shared memory: t[TT][live], fp32.
template <typename T, int TT>
__global__ void __launch_bounds__(kThreads, kMinBlocks) expand_cores(Args<T> a) {
  LQ_DYNAMIC_SHARED(float, t_s);
  int32_t adapter;
  uint32_t tok0, cnt;
  if (!resolve(a.map, a.reg, blockIdx.x, blockIdx.y, TT, &adapter, &tok0, &cnt)) return;
  const lq_cuda_module mod = a.reg.modules[adapter];
  const uint32_t live = mod.live;

  // Phase 1: gather t (sum of the slices) for the block's tokens.
  for (uint32_t k = threadIdx.x; k < cnt * live; k += kThreads)
    t_s[k] = gather_t(a.part, a.splits, a.map.tokens, tok0 + k / live, a.reg.max_live, k % live);
  __syncthreads();

  // Phase 2: lane l owns outputs base + 32 e + l; decode each b entry once for TT tokens.
  const uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const uint32_t base = blockIdx.z * kExpandBlock + warp * (32 * kExpandLane);
  float acc[TT][kExpandLane];
#pragma unroll
  for (int t = 0; t < TT; ++t)
#pragma unroll
    for (uint32_t e = 0; e < kExpandLane; ++e) acc[t][e] = 0.0f;

  for (uint32_t c = 0; c < live; ++c) {
    const lq_cuda_comp comp = a.reg.comps[mod.comp_begin + c];
    const lq_cuda_vec v = lq_cuda_vector(a.reg.data, &mod, &comp, LQ_CUDA_B);
    lq_cuda_scale sc{0xffffffffu, 0.0f, 0.0f};
#pragma unroll
    for (uint32_t e = 0; e < kExpandLane; ++e) {
      const uint32_t j = base + 32 * e + lane;
      const float w = j < a.m ? lq_cuda_entry(&v, j / 32, lane, &sc) : 0.0f;
#pragma unroll
      for (int t = 0; t < TT; ++t)
        if ((uint32_t)t < cnt) acc[t][e] += w * t_s[t * live + c];
    }
  }

  // Phase 3: add to y in its dtype.
#pragma unroll
  for (int t = 0; t < TT; ++t) {
    if ((uint32_t)t >= cnt) continue;
    T* yr = a.y + (uint64_t)(tok0 + t) * a.m;
#pragma unroll
    for (uint32_t e = 0; e < kExpandLane; ++e) {
      const uint32_t j = base + 32 * e + lane;
      if (j < a.m) yr[j] = from_f<T>(to_f(yr[j]) + acc[t][e]);
    }
  }
}

}  // namespace

template <typename T>
void launch_expand_cores(const Args<T>& a, uint32_t units, uint32_t tile, uint32_t tiles,
                         cudaStream_t stream) {
  const dim3 grid(units, tiles, (a.m + kExpandBlock - 1) / kExpandBlock);
  const size_t smem = sizeof(float) * tile * a.reg.max_live;
  if (tile == 1)
    LQ_LAUNCH(grid, kThreads, smem, stream, expand_cores<T, 1>)(a);
  else
    LQ_LAUNCH(grid, kThreads, smem, stream, expand_cores<T, kCoresTile>)(a);
}

// The whitelist: fp32, fp16 and bf16 activations, 1 or 8 tokens per block.
template void launch_expand_cores<float>(const Args<float>&, uint32_t, uint32_t, uint32_t, cudaStream_t);
template void launch_expand_cores<__half>(const Args<__half>&, uint32_t, uint32_t, uint32_t, cudaStream_t);
template void launch_expand_cores<__nv_bfloat16>(const Args<__nv_bfloat16>&, uint32_t, uint32_t,
                                                 uint32_t, cudaStream_t);

}  // namespace LQ_KERNEL_NS
}  // namespace cuda
}  // namespace loraquant
