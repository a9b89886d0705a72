// A host emulation of the CUDA features the loraquant kernels use, so that their source
// runs on a CPU in tests (emulate.cpp). Each CUDA thread of a block is an OS thread:
// __syncthreads and warp shuffles are real barriers, so a kernel that reaches a barrier
// with only some of its threads stalls, and the launch reports it. Blocks run one after
// another. WMMA fragments hold whole 16x16 tiles in fp32; loads convert from the
// operand type, products are fp32. fp16 and bf16 round to nearest even, via half.h.
//
// What this cannot show: timing, memory coalescing, bank conflicts, alignment faults,
// the register fragment layouts of real tensor cores, or races that need real hardware
// interleavings. It shows the indexing, the control flow and the synchronisation.
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

#include "loraquant/half.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) alignas(n)

// The CUDA names the kernels use, mapped to emulation types of their own, so that this
// translation unit shares no definition with the CUDA ones linked beside it.
#define dim3 lq_emu_dim3
#define threadIdx lq_emu_thread_idx
#define blockIdx lq_emu_block_idx
#define __half lq_emu_half
#define __nv_bfloat16 lq_emu_bfloat16
#define __half2float lq_emu_half2float
#define __float2half_rn lq_emu_float2half_rn
#define __bfloat162float lq_emu_bfloat162float
#define __float2bfloat16_rn lq_emu_float2bfloat16_rn
#define __syncthreads lq_emu_syncthreads
#define __shfl_xor_sync lq_emu_shfl_xor_sync
#define cudaStream_t lq_emu_stream
#define nvcuda lq_emu_nvcuda

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
using cudaStream_t = void*;

inline thread_local dim3 threadIdx, blockIdx;

struct __half {
  uint16_t bits;
};
struct __nv_bfloat16 {
  uint16_t bits;
};
inline float __half2float(__half h) { return lq_half_to_float(h.bits); }
inline __half __float2half_rn(float f) { return __half{lq_float_to_half(f)}; }
inline float __bfloat162float(__nv_bfloat16 b) { return lq_bits_f32((uint32_t)b.bits << 16); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  uint32_t u = lq_f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16{0x7fc0};  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return __nv_bfloat16{(uint16_t)(u >> 16)};
}

#ifdef LQ_KERNEL_NS
namespace loraquant {
namespace cuda {
namespace LQ_KERNEL_NS {
inline uint32_t min(uint32_t a, uint32_t b) { return a < b ? a : b; }
}  // namespace LQ_KERNEL_NS
}  // namespace cuda
}  // namespace loraquant
#endif

namespace lq_emu {

// A reusable barrier for n threads; after 20 s without all of them it gives up and
// records the stall, so a broken kernel fails a test instead of hanging it.
class Barrier {
 public:
  explicit Barrier(int n) : n_(n) {}
  bool wait() {
    std::unique_lock<std::mutex> lock(m_);
    const uint64_t gen = gen_;
    if (++waiting_ == n_) {
      waiting_ = 0;
      ++gen_;
      cv_.notify_all();
      return true;
    }
    return cv_.wait_for(lock, std::chrono::seconds(20), [&] { return gen_ != gen; });
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  int n_, waiting_ = 0;
  uint64_t gen_ = 0;
};

struct Block {
  explicit Block(unsigned threads, size_t smem)
      : sync(threads), dyn((smem + 15) / 16 * 4 + 4), warps(threads / 32) {}
  Barrier sync;
  std::vector<float> dyn;  // dynamic shared memory, NaN-filled per block
  struct Warp {
    Warp() : bar(32) {}
    Barrier bar;
    float slot[32];
  };
  std::vector<Warp> warps;
};

inline thread_local Block* current = nullptr;

template <typename T>
T* dynamic_shared() {
  return reinterpret_cast<T*>(current->dyn.data());
}

// Run kernel(args) over the grid: blocks in order, each with its threads at once.
template <typename... P>
struct Launch {
  void (*kernel)(P...);
  dim3 grid, block;
  size_t smem;
  Launch(void (*k)(P...), dim3 g, dim3 b, size_t s) : kernel(k), grid(g), block(b), smem(s) {}

  template <typename... A>
  void operator()(const A&... args) {
    const unsigned threads = block.x * block.y * block.z;
    for (unsigned z = 0; z < grid.z; ++z)
      for (unsigned y = 0; y < grid.y; ++y)
        for (unsigned x = 0; x < grid.x; ++x) {
          Block b(threads, smem);
          std::fill(b.dyn.begin(), b.dyn.end(), __builtin_nanf(""));
          std::vector<std::thread> pool;
          for (unsigned t = 0; t < threads; ++t)
            pool.emplace_back([&, t] {
              current = &b;
              threadIdx = dim3(t);
              blockIdx = dim3(x, y, z);
              kernel(args...);
            });
          for (auto& th : pool) th.join();
        }
  }
};

// True once any emulated launch stalled at a barrier (a divergent __syncthreads).
inline bool& stall_flag() {
  static bool s = false;
  return s;
}

}  // namespace lq_emu

inline void __syncthreads() {
  if (!lq_emu::current->sync.wait()) lq_emu::stall_flag() = true;
}

inline float __shfl_xor_sync(unsigned, float v, int mask) {
  const unsigned lane = threadIdx.x % 32;
  auto& w = lq_emu::current->warps[threadIdx.x / 32];
  w.slot[lane] = v;
  if (!w.bar.wait()) lq_emu::stall_flag() = true;
  const float r = w.slot[lane ^ (unsigned)mask];
  if (!w.bar.wait()) lq_emu::stall_flag() = true;
  return r;
}

// WMMA, 16x16x16 only: each thread of the warp holds and computes the whole tile.
namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  float v[16][16];
};

inline float to_float(float v) { return v; }
inline float to_float(__half v) { return __half2float(v); }
inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename Use, typename T, typename Layout>
void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout>& f, const T* p, unsigned ldm) {
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j)
      f.v[i][j] = to_float(std::is_same<Layout, row_major>::value ? p[i * ldm + j] : p[j * ldm + i]);
}

template <typename T>
void fill_fragment(fragment<accumulator, 16, 16, 16, float>& f, T value) {
  for (auto& row : f.v)
    for (float& e : row) e = (float)value;
}

template <typename T, typename LA, typename LB>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, T, LA>& a,
              const fragment<matrix_b, 16, 16, 16, T, LB>& b,
              const fragment<accumulator, 16, 16, 16, float>& c) {
  fragment<accumulator, 16, 16, 16, float> out;
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) {
      float s = c.v[i][j];
      for (int k = 0; k < 16; ++k) s += a.v[i][k] * b.v[k][j];
      out.v[i][j] = s;
    }
  d = out;
}

// One lane writes, as the warp's collective store writes each element once.
inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f,
                              unsigned ldm, layout_t layout) {
  if (threadIdx.x % 32 != 0) return;
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) (layout == mem_row_major ? p[i * ldm + j] : p[j * ldm + i]) = f.v[i][j];
}
}  // namespace wmma
}  // namespace nvcuda
