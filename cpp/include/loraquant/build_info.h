// What this build of the library was compiled with.
#ifndef LORAQUANT_BUILD_INFO_H
#define LORAQUANT_BUILD_INFO_H

#include <string>

namespace loraquant {

struct BuildInfo {
  std::string version;   // library version, e.g. "0.1.0"
  std::string compiler;  // compiler name and version
  std::string eigen;     // Eigen version and where the build found it
  bool openmp = false;   // compiled with OpenMP (_OPENMP was defined)
  bool cuda = false;     // CUDA kernels compiled in
};

BuildInfo build_info();

}  // namespace loraquant

#endif
