// A host emulation of the CUDA features the loraquant kernels use, so that their source
// runs on a CPU in tests (emulate.cpp). Each CUDA thread of a block is an OS thread, but
// only one runs at a time (Block, below): deterministic, and a missing barrier shows up
// as a wrong result; a barrier not every thread reaches is reported. Blocks run one
// after another. WMMA fragments hold whole 16x16 tiles in fp32; loads convert from the
// operand type, products are fp32. fp16 and bf16 round to nearest even, via half.h.
//
// What this cannot show: timing, memory coalescing, bank conflicts, alignment faults,
// the register fragment layouts of real tensor cores, or races between blocks (they run
// in order). It shows the indexing, the control flow and the synchronisation in a block.
#pragma once

#include <array>
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

// One block's threads, scheduled one at a time: a thread runs until it reaches a
// barrier (__syncthreads, or a warp shuffle for its warp) or returns, then hands the
// baton to the highest-numbered runnable thread. So between two barriers every thread
// runs alone and in a fixed, adversarial order: a barrier missing between a write to
// shared memory and another thread's read of it leaves the read stale, and the result
// wrong. A barrier that some thread can never pass (it returned, or waits at another)
// is a stall: it is recorded, and the waiting threads are released so the launch ends.
class Block {
 public:
  Block(unsigned threads, size_t smem)
      : dyn((smem + 15) / 16 * 4 + 4, __builtin_nanf("")), slots(threads / 32),
        n_(threads), state_(threads, kRunnable), bar_(threads, 0), arrived_(threads / 32 + 1, 0),
        running_(threads - 1), cv_(threads) {}

  std::vector<float> dyn;                     // dynamic shared memory, NaN at the start
  std::vector<std::array<float, 32>> slots;   // warp shuffle exchange, one row per warp
  bool stalled = false;

  void start(unsigned t) {
    std::unique_lock<std::mutex> lock(m_);
    cv_[t].wait(lock, [&] { return running_ == t; });
  }
  // Barrier `bar`: kBlock, or 1 + warp for a warp's shuffle.
  void arrive(unsigned t, unsigned bar) {
    std::unique_lock<std::mutex> lock(m_);
    state_[t] = kWaiting;
    bar_[t] = bar;
    const unsigned need = bar == kBlock ? n_ : 32;
    if (++arrived_[bar] == need) {
      arrived_[bar] = 0;
      for (unsigned u = 0; u < n_; ++u)
        if (state_[u] == kWaiting && bar_[u] == bar) state_[u] = kRunnable;
    }
    hand_on();
    cv_[t].wait(lock, [&] { return running_ == t; });
  }
  void finish(unsigned t) {
    std::unique_lock<std::mutex> lock(m_);
    state_[t] = kDone;
    hand_on();
  }

  static constexpr unsigned kBlock = 0;

 private:
  enum { kRunnable, kWaiting, kDone };
  void hand_on() {
    for (int pass = 0; pass < 2; ++pass) {
      for (unsigned u = n_; u-- > 0;)
        if (state_[u] == kRunnable) {
          running_ = u;
          cv_[u].notify_one();
          return;
        }
      bool waiting = false;
      for (unsigned u = 0; u < n_; ++u)
        if (state_[u] == kWaiting) {
          state_[u] = kRunnable;  // a stall: let everyone finish
          waiting = true;
        }
      if (!waiting) break;
      stalled = true;
    }
    running_ = n_;  // all done
  }

  std::mutex m_;
  unsigned n_;
  std::vector<int> state_;
  std::vector<unsigned> bar_, arrived_;
  unsigned running_;
  std::vector<std::condition_variable> cv_;  // one per thread: wake only the next one
};

inline thread_local Block* current = nullptr;

template <typename T>
T* dynamic_shared() {
  return reinterpret_cast<T*>(current->dyn.data());
}

// True once any emulated launch stalled at a barrier (a divergent __syncthreads).
inline bool& stall_flag() {
  static bool s = false;
  return s;
}

// Run kernel(args) over the grid: blocks in order, each with its threads scheduled as
// Block says.
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
          std::vector<std::thread> pool;
          for (unsigned t = 0; t < threads; ++t)
            pool.emplace_back([&, t] {
              current = &b;
              threadIdx = dim3(t);
              blockIdx = dim3(x, y, z);
              b.start(t);
              kernel(args...);
              b.finish(t);
            });
          for (auto& th : pool) th.join();
          if (b.stalled) stall_flag() = true;
        }
  }
};

}  // namespace lq_emu

inline void __syncthreads() { lq_emu::current->arrive(threadIdx.x, lq_emu::Block::kBlock); }

inline float __shfl_xor_sync(unsigned, float v, int mask) {
  const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  auto& slot = lq_emu::current->slots[warp];
  slot[lane] = v;
  lq_emu::current->arrive(threadIdx.x, 1 + warp);
  const float r = slot[lane ^ (unsigned)mask];
  lq_emu::current->arrive(threadIdx.x, 1 + warp);
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
