// The launchers of cuda.h: dispatch (dispatch.cuh) on the GPU, then report CUDA errors.
#include <stdexcept>
#include <string>

#include "dispatch.cuh"

namespace loraquant {
namespace cuda {

namespace {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    throw std::runtime_error(std::string("loraquant CUDA: ") + what + ": " + cudaGetErrorString(e));
}

}  // namespace

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // clear it: no driver or no device is an answer, not an error
    return 0;
  }
  return n;
}

void apply_one(const RegistryRef& reg, int32_t adapter, const void* x, void* y, uint32_t tokens,
               DType dtype, void* workspace, Stream stream) {
  detail::dispatch_apply_one(reg, adapter, x, y, tokens, dtype, workspace, stream);
  check(cudaGetLastError(), "apply_one");
}

void bgmv(const RegistryRef& reg, const int32_t* idx, const void* x, void* y, uint32_t tokens,
          DType dtype, void* workspace, Stream stream) {
  detail::dispatch_bgmv(reg, idx, x, y, tokens, dtype, workspace, stream);
  check(cudaGetLastError(), "bgmv");
}

void sgmv(const RegistryRef& reg, const int32_t* seg_start, const int32_t* seg_adapter,
          uint32_t segs, uint32_t max_seg_len, const void* x, void* y, uint32_t tokens,
          DType dtype, void* workspace, Stream stream) {
  detail::dispatch_sgmv(reg, seg_start, seg_adapter, segs, max_seg_len, x, y, tokens, dtype,
                        workspace, stream);
  check(cudaGetLastError(), "sgmv");
}

DeviceRegistry::DeviceRegistry(const Registry& host, Stream stream) {
  const auto& bytes = host.bytes();
  check(cudaMalloc(&device_, bytes.size()), "cudaMalloc of the registry");
  const cudaError_t e = cudaMemcpyAsync(device_, bytes.data(), bytes.size(),
                                        cudaMemcpyHostToDevice, stream);
  // Wait, so that the host bytes may go away once the constructor returns.
  const cudaError_t s = e == cudaSuccess ? cudaStreamSynchronize(stream) : e;
  if (s != cudaSuccess) {
    cudaFree(device_);
    check(s, "upload of the registry");
  }
  ref_ = host.ref(device_);
}

DeviceRegistry::~DeviceRegistry() { cudaFree(device_); }

}  // namespace cuda
}  // namespace loraquant
