// One libFuzzer executable per target: LQ_FUZZ_TARGET names the function (CMake).
#include "targets.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  lq_fuzz::LQ_FUZZ_TARGET(data, size);
  return 0;
}
