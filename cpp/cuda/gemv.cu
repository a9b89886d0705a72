// CUDA-core path: decode codes in registers, one warp per component, fp32 sums.
//
// Lane l of a warp decodes entries 32 k + l of a vector: the warp reads each code word
// once (broadcast), x and y accesses are coalesced, and a lane's bit position inside a
// run of 32 entries is the same for every run.
#include "kernels.cuh"

namespace loraquant {
namespace cuda {
namespace detail {

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

// Expand: y[tok] += sum_c b_c t_c for TT tokens; each block owns 1024 outputs.
// grid: x = unit, y = tile, z = chunk of m. Shared memory: t[TT][live], fp32.
template <typename T, int TT>
__global__ void __launch_bounds__(kThreads, kMinBlocks) expand_cores(Args<T> a) {
  extern __shared__ float t_s[];
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

template <typename T, int TT>
void launch(const Args<T>& a, uint32_t units, uint32_t tiles, cudaStream_t stream) {
  const size_t smem = sizeof(float) * TT * a.reg.max_live;
  shrink_cores<T, TT><<<dim3(units, tiles, a.splits), kThreads, 0, stream>>>(a);
  const uint32_t chunks = (a.m + kExpandBlock - 1) / kExpandBlock;
  expand_cores<T, TT><<<dim3(units, tiles, chunks), kThreads, smem, stream>>>(a);
}

}  // namespace

template <typename T>
void run_cores(const Args<T>& a, uint32_t units, uint32_t tile, uint32_t tiles, cudaStream_t stream) {
  if (tile == 1)
    launch<T, 1>(a, units, tiles, stream);
  else
    launch<T, kCoresTile>(a, units, tiles, stream);
}

// The whitelist: fp32, fp16 and bf16 activations.
template void run_cores<float>(const Args<float>&, uint32_t, uint32_t, uint32_t, cudaStream_t);
template void run_cores<__half>(const Args<__half>&, uint32_t, uint32_t, uint32_t, cudaStream_t);
template void run_cores<__nv_bfloat16>(const Args<__nv_bfloat16>&, uint32_t, uint32_t, uint32_t,
                                       cudaStream_t);

}  // namespace detail
}  // namespace cuda
}  // namespace loraquant
