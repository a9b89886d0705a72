// build_info(): read from the macros the compiler actually saw, not from wishes.
#include "loraquant/build_info.h"

#include <Eigen/Core>

#include "build_config.h"

namespace loraquant {

BuildInfo build_info() {
  BuildInfo b;
  b.version = LORAQUANT_VERSION_STRING;
#if defined(__clang__)
  b.compiler = "clang " __clang_version__;
#elif defined(__GNUC__)
  b.compiler = "gcc " __VERSION__;
#elif defined(_MSC_VER)
  b.compiler = "msvc " + std::to_string(_MSC_VER);
#else
  b.compiler = "unknown";
#endif
  b.eigen = std::to_string(EIGEN_WORLD_VERSION) + "." + std::to_string(EIGEN_MAJOR_VERSION) +
            "." + std::to_string(EIGEN_MINOR_VERSION) + " (" + LORAQUANT_EIGEN_SOURCE + ")";
#ifdef _OPENMP
  b.openmp = true;
#endif
  b.cuda = LORAQUANT_WITH_CUDA != 0;
  return b;
}

}  // namespace loraquant
