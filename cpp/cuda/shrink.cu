// CUDA-core shrink: t = A_hat x, decoding codes in registers, one warp per component,
// fp32 sums. (expand.cu is the other half of the CUDA-core path.)
//
// Lane l of a warp decodes entries 32 k + l of a vector: the warp reads each code word
// once (broadcast), x accesses are coalesced, and a lane's bit position inside a run of
// 32 entries is the same for every run.
#include "kernels.cuh"

namespace loraquant {
namespace cuda {
namespace LQ_KERNEL_NS {

namespace {

constexpr uint32_t kShrinkSteps = LQ_CUDA_SPLIT_UNIT / 32;  // entries per lane per pass: 16

// Shrink: part[s][tok][c] = a_c . x[tok] over slice s of n, for TT tokens at once.
// grid: x = unit (token or segment), y = tile of TT tokens, z = slice s.
// A warp takes components warp, warp + 4, ...; each pass decodes 16 entries per lane
// once and uses them for all TT tokens.
template <typename T, int TT>
__global__ void __launch_bounds__(kThreads) shrink_cores(Args<T> a) {
  int32_t adapter;
  uint32_t tok0, cnt;
  if (!resolve(a.map, a.reg, blockIdx.x, blockIdx.y, TT, &adapter, &tok0, &cnt)) return;
  const lq_cuda_module mod = a.reg.modules[adapter];
  const uint32_t s = blockIdx.z, beg = s * a.split_len;
  const uint32_t end = min(a.n, beg + a.split_len);
  const uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32;

  for (uint32_t c = warp; c < mod.live; c += kWarps) {
    const lq_cuda_comp comp = a.reg.comps[mod.comp_begin + c];
    const lq_cuda_vec v = lq_cuda_vector(a.reg.data, &mod, &comp, LQ_CUDA_A);
    lq_cuda_scale sc{0xffffffffu, 0.0f, 0.0f};
    float acc[TT];
#pragma unroll
    for (int t = 0; t < TT; ++t) acc[t] = 0.0f;

    for (uint32_t pass = beg; pass < end; pass += LQ_CUDA_SPLIT_UNIT) {
      float w[kShrinkSteps];
#pragma unroll
      for (uint32_t e = 0; e < kShrinkSteps; ++e) {
        const uint32_t j = pass + 32 * e + lane;
        w[e] = j < end ? lq_cuda_entry(&v, j / 32, lane, &sc) : 0.0f;
      }
#pragma unroll
      for (int t = 0; t < TT; ++t) {
        if ((uint32_t)t < cnt) {
          const T* xr = a.x + (uint64_t)(tok0 + t) * a.n;
#pragma unroll
          for (uint32_t e = 0; e < kShrinkSteps; ++e) {
            const uint32_t j = pass + 32 * e + lane;
            if (j < end) acc[t] += to_f(xr[j]) * w[e];
          }
        }
      }
    }
#pragma unroll
    for (int t = 0; t < TT; ++t) {
      const float total = warp_sum(acc[t]);
      if (lane == 0 && (uint32_t)t < cnt)
        a.part[lq_cuda_partial(s, a.map.tokens, tok0 + t, a.reg.max_live, c)] = total;
    }
  }
}

}  // namespace

template <typename T>
void launch_shrink_cores(const Args<T>& a, uint32_t units, uint32_t tile, uint32_t tiles,
                         cudaStream_t stream) {
  const dim3 grid(units, tiles, a.splits);
  if (tile == 1)
    LQ_LAUNCH(grid, kThreads, 0, stream, shrink_cores<T, 1>)(a);
  else
    LQ_LAUNCH(grid, kThreads, 0, stream, shrink_cores<T, kCoresTile>)(a);
}

// The whitelist: fp32, fp16 and bf16 activations, 1 or 8 tokens per block.
template void launch_shrink_cores<float>(const Args<float>&, uint32_t, uint32_t, uint32_t, cudaStream_t);
template void launch_shrink_cores<__half>(const Args<__half>&, uint32_t, uint32_t, uint32_t, cudaStream_t);
template void launch_shrink_cores<__nv_bfloat16>(const Args<__nv_bfloat16>&, uint32_t, uint32_t,
                                                 uint32_t, cudaStream_t);

}  // namespace LQ_KERNEL_NS
}  // namespace cuda
}  // namespace loraquant
