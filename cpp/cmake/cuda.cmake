# CUDA kernels (cpp/cuda): the target loraquant_cuda, built when LORAQUANT_CUDA is ON, or
# AUTO (the default) and CMake finds a CUDA compiler. Included by cpp/CMakeLists.txt after
# the core target and before build_config.h is generated.
#
# The host half of the device registry (cuda/registry.cpp) and the host emulation of the
# kernels (cuda/emulate.cpp) are plain C++ and always part of the core, so CI tests the
# kernels' logic on machines without a GPU. The runtime is linked
# statically: importing loraquant._core needs no libcudart.so, and without a driver
# cuda_device_count() answers 0.

target_sources(loraquant PRIVATE cuda/registry.cpp cuda/emulate.cpp)
if(NOT MSVC)  # the kernels' `#pragma unroll` means nothing to a host compiler
  set_source_files_properties(cuda/emulate.cpp PROPERTIES COMPILE_OPTIONS -Wno-unknown-pragmas)
endif()

set(LORAQUANT_WITH_CUDA OFF)
set(LORAQUANT_CUDA_COMPILER_FOUND "")
string(TOUPPER "${LORAQUANT_CUDA}" _lq_cuda)
if(NOT _lq_cuda MATCHES "^(AUTO|ON|OFF)$")
  message(FATAL_ERROR "LORAQUANT_CUDA must be AUTO, ON or OFF, got '${LORAQUANT_CUDA}'")
endif()

if(NOT _lq_cuda STREQUAL "OFF")
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    set(LORAQUANT_WITH_CUDA ON)
    set(LORAQUANT_CUDA_COMPILER_FOUND "${CMAKE_CUDA_COMPILER}")
  elseif(_lq_cuda STREQUAL "ON")
    message(FATAL_ERROR "LORAQUANT_CUDA=ON but CMake found no CUDA compiler: put nvcc on PATH "
                        "or pass -DCMAKE_CUDA_COMPILER=/path/to/nvcc")
  endif()
endif()

if(LORAQUANT_WITH_CUDA)
  # Ampere, Ada, and Hopper with its arch-specific features; PTX of sm_90 for later chips.
  set(LORAQUANT_CUDA_ARCHS_DEFAULT 0)
  if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES AND NOT DEFINED ENV{CUDAARCHS})
    set(CMAKE_CUDA_ARCHITECTURES "80-real;89-real;90a-real;90-virtual")
    set(LORAQUANT_CUDA_ARCHS_DEFAULT 1)
  endif()
  set(CMAKE_CUDA_STANDARD 17)
  set(CMAKE_CUDA_STANDARD_REQUIRED ON)
  set(CMAKE_CUDA_RUNTIME_LIBRARY Static)
  enable_language(CUDA)
  find_package(CUDAToolkit REQUIRED)

  add_library(loraquant_cuda STATIC cuda/shrink.cu cuda/expand.cu cuda/mma.cu cuda/launch.cu)
  add_library(loraquant::loraquant_cuda ALIAS loraquant_cuda)
  target_include_directories(loraquant_cuda PUBLIC
    $<BUILD_INTERFACE:${CMAKE_CURRENT_SOURCE_DIR}/include>
    $<INSTALL_INTERFACE:include>)
  target_link_libraries(loraquant_cuda PUBLIC CUDA::cudart_static)
  target_link_libraries(loraquant_cuda INTERFACE loraquant)  # Registry lives in the core
  target_compile_options(loraquant_cuda PRIVATE
    $<$<COMPILE_LANGUAGE:CUDA>:-lineinfo -Xcompiler=-Wall --Werror=all-warnings>)
  set_target_properties(loraquant_cuda PROPERTIES
    POSITION_INDEPENDENT_CODE ON
    CUDA_RUNTIME_LIBRARY Static)
  message(STATUS "loraquant: CUDA ${CMAKE_CUDA_COMPILER_VERSION} (${CMAKE_CUDA_COMPILER}), "
                 "architectures ${CMAKE_CUDA_ARCHITECTURES}")
else()
  message(STATUS "loraquant: CUDA kernels off (LORAQUANT_CUDA=${LORAQUANT_CUDA})")
endif()

string(REPLACE ";" "," _lq_cuda_archs "${CMAKE_CUDA_ARCHITECTURES}")
if(NOT LORAQUANT_WITH_CUDA)
  set(_lq_cuda_archs "")
endif()

# The CUDA half of the Python module: the registry and the launchers (bindings_cuda.cpp).
function(loraquant_cuda_bindings target)
  target_sources(${target} PRIVATE python/bindings_cuda.cpp)
  target_compile_definitions(${target} PRIVATE
    LORAQUANT_CUDA_BINDINGS=1
    LORAQUANT_CUDA_REQUEST="${LORAQUANT_CUDA}"
    LORAQUANT_CUDA_COMPILER_FOUND="${LORAQUANT_CUDA_COMPILER_FOUND}"
    LORAQUANT_CUDA_ARCHS="${_lq_cuda_archs}"
    LORAQUANT_CUDA_ARCHS_DEFAULT=$<BOOL:${LORAQUANT_CUDA_ARCHS_DEFAULT}>)
  if(LORAQUANT_WITH_CUDA)
    target_compile_definitions(${target} PRIVATE LORAQUANT_CUDA_KERNELS=1)
    target_link_libraries(${target} PRIVATE loraquant_cuda)
  endif()
endfunction()
