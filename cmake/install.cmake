# Installs the C++ package: public headers, libloraquant (static), libloraquant_c
# (shared, the C API), and a CMake package config so that a consumer needs only
#   find_package(loraquant CONFIG REQUIRED)
#   target_link_libraries(app PRIVATE loraquant::loraquant)      # C++ API
#   target_link_libraries(app PRIVATE loraquant::loraquant_c)    # C API
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(LORAQUANT_CMAKE_DIR "${CMAKE_INSTALL_LIBDIR}/cmake/loraquant")

# Public headers only: they include no Eigen, so consumers need none.
install(DIRECTORY "${PROJECT_SOURCE_DIR}/cpp/include/loraquant"
        DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}"
        FILES_MATCHING PATTERN "*.h")

# Two export sets: the C++ targets (static core, CUDA launchers), which need a C++
# consumer with OpenMP, and the shared C API, which needs nothing: a C-only project
# can use it.
set(_lq_targets loraquant)

# ---- CUDA launchers: installed where CUDA was built --------------------------------
# cpp/cuda/ defines the target `loraquant_cuda` when CUDA is built (LORAQUANT_CUDA). It
# joins the same export set, so consumers link loraquant::loraquant_cuda, and the
# package config then finds CUDAToolkit for them. Its public headers belong in
# cpp/include/loraquant/ (installed above); its include directories must use
# $<BUILD_INTERFACE:...>/$<INSTALL_INTERFACE:include> as loraquant's do.
if(TARGET loraquant_cuda)
  list(APPEND _lq_targets loraquant_cuda)
  set(LORAQUANT_PACKAGE_CUDA ON)
else()
  set(LORAQUANT_PACKAGE_CUDA OFF)
endif()
# ---- end of the CUDA launchers' place ----------------------------------------------

install(TARGETS ${_lq_targets}
        EXPORT loraquantTargets
        ARCHIVE DESTINATION "${CMAKE_INSTALL_LIBDIR}"
        LIBRARY DESTINATION "${CMAKE_INSTALL_LIBDIR}"
        RUNTIME DESTINATION "${CMAKE_INSTALL_BINDIR}")
install(EXPORT loraquantTargets
        NAMESPACE loraquant::
        DESTINATION "${LORAQUANT_CMAKE_DIR}")
if(TARGET loraquant_c)
  install(TARGETS loraquant_c
          EXPORT loraquantCTargets
          LIBRARY DESTINATION "${CMAKE_INSTALL_LIBDIR}"
          RUNTIME DESTINATION "${CMAKE_INSTALL_BINDIR}"
          ARCHIVE DESTINATION "${CMAKE_INSTALL_LIBDIR}")
  install(EXPORT loraquantCTargets
          NAMESPACE loraquant::
          DESTINATION "${LORAQUANT_CMAKE_DIR}")
endif()

# What the package config must find again for consumers: OpenMP, when the static
# core links it (read from the target itself, not from a wish).
get_target_property(_lq_links loraquant INTERFACE_LINK_LIBRARIES)
if("OpenMP::OpenMP_CXX" IN_LIST _lq_links)
  set(LORAQUANT_PACKAGE_OPENMP ON)
else()
  set(LORAQUANT_PACKAGE_OPENMP OFF)
endif()
configure_package_config_file(
  "${CMAKE_CURRENT_LIST_DIR}/loraquantConfig.cmake.in"
  "${PROJECT_BINARY_DIR}/loraquantConfig.cmake"
  INSTALL_DESTINATION "${LORAQUANT_CMAKE_DIR}")
# 0.x: a minor release may change the API, so only the same minor version matches.
write_basic_package_version_file(
  "${PROJECT_BINARY_DIR}/loraquantConfigVersion.cmake"
  VERSION "${PROJECT_VERSION}"
  COMPATIBILITY SameMinorVersion)
install(FILES "${PROJECT_BINARY_DIR}/loraquantConfig.cmake"
              "${PROJECT_BINARY_DIR}/loraquantConfigVersion.cmake"
        DESTINATION "${LORAQUANT_CMAKE_DIR}")
