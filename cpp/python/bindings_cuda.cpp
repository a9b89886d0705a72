// loraquant._core, CUDA half: the device registry and the launchers of cuda.h.
// Launchers take device pointers and streams as Python ints (tensor.data_ptr(),
// torch.cuda.current_stream().cuda_stream); python/loraquant/cuda_ops.py checks dtypes,
// shapes and devices before it calls them. The registry functions are plain host code
// and exist in every build; the launchers raise RuntimeError in a build without CUDA.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "loraquant/cuda.h"
#include "loraquant/module.h"

namespace py = pybind11;
namespace lq = loraquant;
namespace lc = loraquant::cuda;

namespace {

// (count, m, n, max_live, comps_offset): what Python keeps of a registry.
using Info = std::tuple<uint32_t, uint32_t, uint32_t, uint32_t, uint64_t>;

Info info_of(const lc::RegistryRef& r) {
  return Info{r.count, r.m, r.n, r.max_live, r.comps_offset};
}

lc::RegistryRef ref_of(uintptr_t data, const Info& info) {
  lc::RegistryRef r;
  r.data = reinterpret_cast<const uint8_t*>(data);
  std::tie(r.count, r.m, r.n, r.max_live, r.comps_offset) = info;
  return r;
}

lc::Registry registry_of(const std::vector<const lq::Module*>& modules) {
  for (const lq::Module* m : modules)
    if (!m) throw std::invalid_argument("modules must be Module objects, not None");
  return lc::Registry(modules);
}

template <typename P>
P* ptr(uintptr_t p) {
  return reinterpret_cast<P*>(p);
}

lc::Stream stream_of(uintptr_t s) { return reinterpret_cast<lc::Stream>(s); }

lc::DType dtype_of(int d) {
  if (d < 0 || d > 2) throw std::invalid_argument("dtype must be 0 (fp32), 1 (fp16) or 2 (bf16)");
  return static_cast<lc::DType>(d);
}

using F32 = py::array_t<float, py::array::c_style | py::array::forcecast>;
using I32 = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;

// Shape checks, a registry of `modules`, and a copy of y that `f` updates without the GIL.
template <typename F>
py::array_t<float> emulate(const std::vector<const lq::Module*>& modules, const F32& x,
                           const F32& y, int dtype, F&& f) {
  lc::Registry reg = registry_of(modules);
  const lc::RegistryRef ref = reg.ref(reg.bytes().data());
  if (x.ndim() != 2 || (uint64_t)x.shape(1) != ref.n || y.ndim() != 2 ||
      y.shape(0) != x.shape(0) || (uint64_t)y.shape(1) != ref.m)
    throw std::invalid_argument("x must be (tokens, n=" + std::to_string(ref.n) +
                                ") and y (tokens, m=" + std::to_string(ref.m) + ")");
  const lc::DType dt = dtype_of(dtype);
  py::array_t<float> out({y.shape(0), y.shape(1)});
  std::memcpy(out.mutable_data(), y.data(), sizeof(float) * (size_t)y.size());
  const float* px = x.data();
  float* py_ = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    f(ref, px, py_, (uint32_t)x.shape(0), dt);
  }
  return out;
}

// LAUNCH(call): run a launcher without the GIL; in a build without CUDA, raise instead.
#ifdef LORAQUANT_CUDA_KERNELS
#define LAUNCH(call)                \
  do {                              \
    py::gil_scoped_release nogil;   \
    call;                           \
  } while (0)
#else
[[noreturn]] void no_cuda() {
  throw std::runtime_error("this build of loraquant has no CUDA kernels (no CUDA compiler was "
                           "found, or LORAQUANT_CUDA=OFF); rebuild with nvcc on PATH");
}
#define LAUNCH(call) no_cuda()
#endif

}  // namespace

void bind_cuda(py::module_& m) {
  m.def("cuda_build", [] {
    py::dict d;
#ifdef LORAQUANT_CUDA_KERNELS
    d["kernels"] = true;
#else
    d["kernels"] = false;
#endif
    d["request"] = LORAQUANT_CUDA_REQUEST;
    d["compiler"] = LORAQUANT_CUDA_COMPILER_FOUND;
    d["archs"] = LORAQUANT_CUDA_ARCHS;
    d["archs_default"] = LORAQUANT_CUDA_ARCHS_DEFAULT != 0;
    return d;
  }, "How the CUDA part was configured: kernels built, LORAQUANT_CUDA, nvcc found, archs "
     "(and whether they are the project's default)");

  m.def("cuda_device_count", [] {
#ifdef LORAQUANT_CUDA_KERNELS
    return lc::device_count();
#else
    return 0;
#endif
  }, "CUDA devices the runtime sees: 0 without CUDA kernels, a driver or a device");

  m.def("cuda_registry", [](const std::vector<const lq::Module*>& modules) {
    lc::Registry reg = registry_of(modules);
    py::array_t<uint8_t> buf((py::ssize_t)reg.bytes().size());
    std::memcpy(buf.mutable_data(), reg.bytes().data(), reg.bytes().size());
    return py::make_tuple(buf, info_of(reg.ref(nullptr)));
  }, py::arg("modules"),
     "(buffer uint8, info): one layer's modules laid out for the device (cuda_desc.h); "
     "info = (count, m, n, max_live, comps_offset)");

  m.def("cuda_registry_decode", [](const std::vector<const lq::Module*>& modules, uint32_t index) {
    lc::Registry reg = registry_of(modules);
    if (index >= modules.size())
      throw std::invalid_argument("index " + std::to_string(index) + " is not below " +
                                  std::to_string(modules.size()));
    const lq::Module& mod = *modules[index];
    py::array_t<float> A({(py::ssize_t)mod.r(), (py::ssize_t)mod.n()});
    py::array_t<float> B({(py::ssize_t)mod.m(), (py::ssize_t)mod.r()});
    lc::decode_host(reg.ref(reg.bytes().data()), index, A.mutable_data(), B.mutable_data());
    return py::make_tuple(A, B);
  }, py::arg("modules"), py::arg("index"),
     "Host emulation: (A_hat, B_hat) of module `index` decoded through the descriptors");

  // Host emulation of the launchers: x (tokens, n) and y (tokens, m) as float32, a new y
  // returned. Index arrays are int32 host arrays.
  m.def("cuda_emulate_apply_one", [](const std::vector<const lq::Module*>& modules, int32_t adapter,
                                     const F32& x, const F32& y, int dtype) {
    return emulate(modules, x, y, dtype, [&](const lc::RegistryRef& ref, const float* px, float* py,
                                             uint32_t tokens, lc::DType dt) {
      lc::emulate_apply_one(ref, adapter, px, py, tokens, dt);
    });
  }, py::arg("modules"), py::arg("adapter"), py::arg("x"), py::arg("y"), py::arg("dtype"));

  m.def("cuda_emulate_bgmv", [](const std::vector<const lq::Module*>& modules, const I32& idx,
                                const F32& x, const F32& y, int dtype) {
    if (idx.ndim() != 1 || idx.shape(0) != x.shape(0))
      throw std::invalid_argument("idx must have one entry per row of x");
    return emulate(modules, x, y, dtype, [&](const lc::RegistryRef& ref, const float* px, float* py,
                                             uint32_t tokens, lc::DType dt) {
      lc::emulate_bgmv(ref, idx.data(), px, py, tokens, dt);
    });
  }, py::arg("modules"), py::arg("idx"), py::arg("x"), py::arg("y"), py::arg("dtype"));

  m.def("cuda_emulate_sgmv", [](const std::vector<const lq::Module*>& modules, const I32& seg_start,
                                const I32& seg_adapter, uint32_t max_seg_len, const F32& x,
                                const F32& y, int dtype) {
    if (seg_adapter.ndim() != 1 || seg_start.ndim() != 1 || seg_start.shape(0) != seg_adapter.shape(0) + 1)
      throw std::invalid_argument("seg_start must have one entry more than seg_adapter");
    for (py::ssize_t s = 0; s <= seg_adapter.shape(0); ++s)
      if (seg_start.data()[s] < 0 || seg_start.data()[s] > x.shape(0))
        throw std::invalid_argument("seg_start entries must lie in [0, tokens]");
    return emulate(modules, x, y, dtype, [&](const lc::RegistryRef& ref, const float* px, float* py,
                                             uint32_t tokens, lc::DType dt) {
      lc::emulate_sgmv(ref, seg_start.data(), seg_adapter.data(), (uint32_t)seg_adapter.shape(0),
                       max_seg_len, px, py, tokens, dt);
    });
  }, py::arg("modules"), py::arg("seg_start"), py::arg("seg_adapter"), py::arg("max_seg_len"),
     py::arg("x"), py::arg("y"), py::arg("dtype"));

  m.def("cuda_workspace_bytes", [](const Info& info, uint32_t tokens) {
    return lc::workspace_bytes(ref_of(0, info), tokens);
  }, py::arg("info"), py::arg("tokens"));

  m.def("cuda_apply_one", [](uintptr_t registry, const Info& info, int32_t adapter, uintptr_t x,
                             uintptr_t y, uint32_t tokens, int dtype, uintptr_t workspace,
                             uintptr_t stream) {
    const lc::RegistryRef ref = ref_of(registry, info);
    const lc::DType dt = dtype_of(dtype);
    LAUNCH(lc::apply_one(ref, adapter, ptr<const void>(x), ptr<void>(y), tokens, dt,
                         ptr<void>(workspace), stream_of(stream)));
  }, py::arg("registry"), py::arg("info"), py::arg("adapter"), py::arg("x"), py::arg("y"),
     py::arg("tokens"), py::arg("dtype"), py::arg("workspace"), py::arg("stream"),
     "y += B_hat (A_hat x) with one adapter for all tokens (device pointers as ints)");

  m.def("cuda_bgmv", [](uintptr_t registry, const Info& info, uintptr_t idx, uintptr_t x,
                        uintptr_t y, uint32_t tokens, int dtype, uintptr_t workspace,
                        uintptr_t stream) {
    const lc::RegistryRef ref = ref_of(registry, info);
    const lc::DType dt = dtype_of(dtype);
    LAUNCH(lc::bgmv(ref, ptr<const int32_t>(idx), ptr<const void>(x), ptr<void>(y), tokens, dt,
                    ptr<void>(workspace), stream_of(stream)));
  }, py::arg("registry"), py::arg("info"), py::arg("idx"), py::arg("x"), py::arg("y"),
     py::arg("tokens"), py::arg("dtype"), py::arg("workspace"), py::arg("stream"),
     "y[t] += B_hat A_hat x[t] with adapter idx[t] per token (int32, -1: none)");

  m.def("cuda_sgmv", [](uintptr_t registry, const Info& info, uintptr_t seg_start,
                        uintptr_t seg_adapter, uint32_t segments, uint32_t max_seg_len,
                        uintptr_t x, uintptr_t y, uint32_t tokens, int dtype, uintptr_t workspace,
                        uintptr_t stream) {
    const lc::RegistryRef ref = ref_of(registry, info);
    const lc::DType dt = dtype_of(dtype);
    LAUNCH(lc::sgmv(ref, ptr<const int32_t>(seg_start), ptr<const int32_t>(seg_adapter), segments,
                    max_seg_len, ptr<const void>(x), ptr<void>(y), tokens, dt,
                    ptr<void>(workspace), stream_of(stream)));
  }, py::arg("registry"), py::arg("info"), py::arg("seg_start"), py::arg("seg_adapter"),
     py::arg("segments"), py::arg("max_seg_len"), py::arg("x"), py::arg("y"), py::arg("tokens"),
     py::arg("dtype"), py::arg("workspace"), py::arg("stream"),
     "y += B_hat A_hat x per segment [seg_start[s], seg_start[s+1]) with seg_adapter[s]");
}
