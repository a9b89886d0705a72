// Host emulation of the CUDA launchers: the kernel sources (shrink.cu, expand.cu,
// mma.cu) compiled as C++ over emu/simt.h and dispatched by dispatch.cuh exactly as
// launch.cu does on the GPU. Plain C++, in every build, so CI runs the kernels' own
// indexing and synchronisation without a GPU (slowly: one OS thread per CUDA thread,
// one at a time).
#define LQ_EMULATE 1
#define LQ_KERNEL_NS emu
#include "emu/simt.h"

#include "shrink.cu"
#include "expand.cu"
#include "mma.cu"
#include "dispatch.cuh"

namespace loraquant {
namespace cuda {

namespace {

// x and y to the element type, a NaN-filled workspace (a partial sum that no shrink
// wrote shows up in y), the launch, y back to fp32.
template <typename Launch>
void run(const RegistryRef& host, const float* x, float* y, uint32_t tokens, DType dtype,
         Launch&& launch) {
  emu::by_dtype(dtype, host, [&](auto tag) {
    using T = decltype(tag);
    std::vector<T> xt((size_t)tokens * host.n), yt((size_t)tokens * host.m);
    for (size_t k = 0; k < xt.size(); ++k) xt[k] = emu::from_f<T>(x[k]);
    for (size_t k = 0; k < yt.size(); ++k) yt[k] = emu::from_f<T>(y[k]);
    std::vector<float> ws(workspace_bytes(host, tokens) / sizeof(float) + 1, __builtin_nanf(""));
    lq_emu::stall_flag() = false;
    launch(xt.data(), yt.data(), ws.data());
    if (lq_emu::stall_flag())
      throw std::runtime_error("emulated kernel stalled at a barrier: not every thread reached it");
    for (size_t k = 0; k < yt.size(); ++k) y[k] = emu::to_f(yt[k]);
  });
}

}  // namespace

void emulate_apply_one(const RegistryRef& host, int32_t adapter, const float* x, float* y,
                       uint32_t tokens, DType dtype) {
  run(host, x, y, tokens, dtype, [&](const void* xt, void* yt, float* ws) {
    emu::dispatch_apply_one(host, adapter, xt, yt, tokens, dtype, ws, nullptr);
  });
}

void emulate_bgmv(const RegistryRef& host, const int32_t* idx, const float* x, float* y,
                  uint32_t tokens, DType dtype) {
  run(host, x, y, tokens, dtype, [&](const void* xt, void* yt, float* ws) {
    emu::dispatch_bgmv(host, idx, xt, yt, tokens, dtype, ws, nullptr);
  });
}

void emulate_sgmv(const RegistryRef& host, const int32_t* seg_start, const int32_t* seg_adapter,
                  uint32_t segments, uint32_t max_seg_len, const float* x, float* y,
                  uint32_t tokens, DType dtype) {
  run(host, x, y, tokens, dtype, [&](const void* xt, void* yt, float* ws) {
    emu::dispatch_sgmv(host, seg_start, seg_adapter, segments, max_seg_len, xt, yt, tokens, dtype,
                       ws, nullptr);
  });
}

}  // namespace cuda
}  // namespace loraquant
