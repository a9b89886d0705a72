// Tensor-core path for long segments (prefill): decode a tile of A_hat or B_hat into
// shared memory as fp16/bf16, then 16x16x16 WMMA products with fp32 accumulators.
// Each block serves 64 tokens of one segment, so every decoded code is used 64 times.
#include "kernels.cuh"

#ifndef LQ_EMULATE
#include <mma.h>
#endif

namespace loraquant {
namespace cuda {
namespace LQ_KERNEL_NS {

namespace {

namespace wmma = nvcuda::wmma;

constexpr int kK = 32;        // reduction depth of one shared-memory tile
constexpr int kLd = kK + 8;   // tile row stride in elements: 80 bytes keeps rows 16-byte aligned
constexpr int kRows = 64;     // tile rows: tokens, components (shrink) or outputs (expand)
constexpr int kCLd = 64 + 4;  // fp32 result tile stride

template <typename T>
using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major>;
template <typename T>
using FragB = wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major>;
using FragC = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

// A block's shared memory: two operand tiles and the fp32 result tile (27 KB), aligned
// to 32 bytes as WMMA loads and stores require.
template <typename T>
struct Tiles {
  __align__(32) T a[kRows][kLd];       // left operand: tokens x depth
  __align__(32) T b[kRows][kLd];       // right operand, stored as B^T: columns x depth
  __align__(32) float c[kRows][kCLd];  // products, before they go to global memory
};

// Load x[tok0 + row][k0 + col] into a tile, zero outside the segment and the slice,
// so that padded rows and columns add nothing to the products.
template <typename T>
__device__ __forceinline__ void load_x(T (*xs)[kLd], const Args<T>& a, uint32_t tok0,
                                       uint32_t cnt, uint32_t k0, uint32_t end) {
  for (uint32_t e = threadIdx.x; e < kRows * kK; e += kThreads) {
    const uint32_t row = e / kK, col = e % kK, k = k0 + col;
    xs[row][col] = (row < cnt && k < end) ? a.x[(uint64_t)(tok0 + row) * a.n + k] : from_f<T>(0.0f);
  }
}

// One warp's 16 rows against `nf` 16-column fragments of a col-major tile (b[col][k]):
// the tile is read straight as B^T, so no transpose is written.
template <typename T>
__device__ __forceinline__ void mma_tile(FragC (&acc)[4], T (*as)[kLd], T (*bs)[kLd], uint32_t warp,
                                         uint32_t nf) {
#pragma unroll
  for (int kk = 0; kk < kK; kk += 16) {
    FragA<T> fa;
    wmma::load_matrix_sync(fa, &as[warp * 16][kk], kLd);
#pragma unroll
    for (int f = 0; f < 4; ++f) {
      if ((uint32_t)f < nf) {
        FragB<T> fb;
        wmma::load_matrix_sync(fb, &bs[f * 16][kk], kLd);
        wmma::mma_sync(acc[f], fa, fb, acc[f]);
      }
    }
  }
}

// Shrink: part[s][tok][c] = a_c . x[tok] over slice s, 64 tokens x 64 components a pass.
// grid: x = segment, y = tile of 64 tokens, z = slice s. Warp w owns tokens 16w..16w+15.
template <typename T>
__global__ void __launch_bounds__(kThreads, kMinBlocks) shrink_mma(Args<T> a) {
  __shared__ Tiles<T> sm;
  auto& xs = sm.a;
  auto& ws = sm.b;
  auto& cs = sm.c;
  int32_t adapter;
  uint32_t tok0, cnt;
  if (!resolve(a.map, a.reg, blockIdx.x, blockIdx.y, kMmaTile, &adapter, &tok0, &cnt)) return;
  const lq_cuda_module mod = a.reg.modules[adapter];
  const uint32_t s = blockIdx.z, beg = s * a.split_len, end = min(a.n, beg + a.split_len);
  const uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32;

  for (uint32_t c0 = 0; c0 < mod.live; c0 += kRows) {
    const uint32_t rows = min((uint32_t)kRows, mod.live - c0), nf = (rows + 15) / 16;
    FragC acc[4];
#pragma unroll
    for (int f = 0; f < 4; ++f) wmma::fill_fragment(acc[f], 0.0f);

    for (uint32_t k0 = beg; k0 < end; k0 += kK) {
      load_x(xs, a, tok0, cnt, k0, end);
      // Warp w decodes components w, w + 4, ...: lane l takes entry k0 + l (k0 % 32 == 0).
      for (uint32_t row = warp; row < kRows; row += kWarps) {
        float w = 0.0f;
        if (row < rows && k0 + lane < end) {
          const lq_cuda_comp comp = a.reg.comps[mod.comp_begin + c0 + row];
          const lq_cuda_vec v = lq_cuda_vector(a.reg.data, &mod, &comp, LQ_CUDA_A);
          lq_cuda_scale sc{0xffffffffu, 0.0f, 0.0f};
          w = lq_cuda_entry(&v, k0 / 32, lane, &sc);
        }
        ws[row][lane] = from_f<T>(w);
      }
      __syncthreads();
      mma_tile(acc, xs, ws, warp, nf);
      __syncthreads();
    }
#pragma unroll
    for (int f = 0; f < 4; ++f)
      if ((uint32_t)f < nf) wmma::store_matrix_sync(&cs[warp * 16][f * 16], acc[f], kCLd, wmma::mem_row_major);
    __syncthreads();
    for (uint32_t e = threadIdx.x; e < kRows * kRows; e += kThreads) {
      const uint32_t row = e / kRows, col = e % kRows;
      if (row < cnt && col < rows)
        a.part[lq_cuda_partial(s, a.map.tokens, tok0 + row, a.reg.max_live, c0 + col)] = cs[row][col];
    }
    __syncthreads();
  }
}

// Expand: y[tok][j0 + col] += sum_c t_c b_c[j0 + col], 64 tokens x 64 outputs a block.
// grid: x = segment, y = tile of 64 tokens, z = chunk of 64 outputs.
template <typename T>
__global__ void __launch_bounds__(kThreads, kMinBlocks) expand_mma(Args<T> a) {
  __shared__ Tiles<T> sm;
  auto& ts = sm.a;
  auto& bs = sm.b;
  auto& cs = sm.c;
  int32_t adapter;
  uint32_t tok0, cnt;
  if (!resolve(a.map, a.reg, blockIdx.x, blockIdx.y, kMmaTile, &adapter, &tok0, &cnt)) return;
  const lq_cuda_module mod = a.reg.modules[adapter];
  const uint32_t j0 = blockIdx.z * kMmaCols, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  FragC acc[4];
#pragma unroll
  for (int f = 0; f < 4; ++f) wmma::fill_fragment(acc[f], 0.0f);

  for (uint32_t c0 = 0; c0 < mod.live; c0 += kK) {
    // t tile: ts[row][k] = t_{c0 + k} of token tok0 + row (the slices summed).
    for (uint32_t e = threadIdx.x; e < kRows * kK; e += kThreads) {
      const uint32_t row = e / kK, k = e % kK;
      float t = 0.0f;
      if (row < cnt && c0 + k < mod.live)
        t = gather_t(a.part, a.splits, a.map.tokens, tok0 + row, a.reg.max_live, c0 + k);
      ts[row][k] = from_f<T>(t);
    }
    // b tile: bs[jj][k] = B_hat[j0 + jj][c0 + k]; warp w decodes components w, w + 4, ...
    // over two runs of 32 outputs (j0 % 32 == 0).
    for (uint32_t k = warp; k < kK; k += kWarps) {
      const bool on = c0 + k < mod.live;
      lq_cuda_vec v{};
      if (on) {
        const lq_cuda_comp comp = a.reg.comps[mod.comp_begin + c0 + k];
        v = lq_cuda_vector(a.reg.data, &mod, &comp, LQ_CUDA_B);
      }
      lq_cuda_scale sc{0xffffffffu, 0.0f, 0.0f};
#pragma unroll
      for (uint32_t half = 0; half < kMmaCols / 32; ++half) {
        const uint32_t j = j0 + 32 * half + lane;
        const float w = (on && j < a.m) ? lq_cuda_entry(&v, j / 32, lane, &sc) : 0.0f;
        bs[32 * half + lane][k] = from_f<T>(w);
      }
    }
    __syncthreads();
    mma_tile(acc, ts, bs, warp, 4);
    __syncthreads();
  }
#pragma unroll
  for (int f = 0; f < 4; ++f)
    wmma::store_matrix_sync(&cs[warp * 16][f * 16], acc[f], kCLd, wmma::mem_row_major);
  __syncthreads();
  for (uint32_t e = threadIdx.x; e < kRows * kMmaCols; e += kThreads) {
    const uint32_t row = e / kMmaCols, col = e % kMmaCols, j = j0 + col;
    if (row < cnt && j < a.m) {
      T* yp = a.y + (uint64_t)(tok0 + row) * a.m + j;
      *yp = from_f<T>(to_f(*yp) + cs[row][col]);
    }
  }
}

}  // namespace

template <typename T>
void run_mma(const Args<T>& a, uint32_t units, uint32_t tiles, cudaStream_t stream) {
  LQ_LAUNCH(dim3(units, tiles, a.splits), kThreads, 0, stream, shrink_mma<T>)(a);
  const uint32_t chunks = (a.m + kMmaCols - 1) / kMmaCols;
  LQ_LAUNCH(dim3(units, tiles, chunks), kThreads, 0, stream, expand_mma<T>)(a);
}

// The whitelist: tensor cores take fp16 and bf16 operands.
template void run_mma<__half>(const Args<__half>&, uint32_t, uint32_t, cudaStream_t);
template void run_mma<__nv_bfloat16>(const Args<__nv_bfloat16>&, uint32_t, uint32_t, cudaStream_t);

}  // namespace LQ_KERNEL_NS
}  // namespace cuda
}  // namespace loraquant
