# How loraquant finds Eigen (header-only; never committed here). In order:
#   1. EIGEN3_INCLUDE_DIR, if set by the user (-DEIGEN3_INCLUDE_DIR=/path/to/eigen3).
#   2. The cmeel-eigen PyPI package: a build requirement in pyproject.toml. It installs
#      Eigen under <site-packages>/cmeel.prefix/ (include/eigen3, share/eigen3/cmake).
#      Every sys.path entry of the Python interpreter that runs the build is searched.
#   3. A system Eigen3 (find_package(Eigen3 CONFIG), CMAKE_PREFIX_PATH is honoured),
#      then a plain search for eigen3/Eigen/Dense.
# Eigen is a private build detail: only .cpp files include it, consumers never do.

set(_lq_eigen "")
if(EIGEN3_INCLUDE_DIR AND EXISTS "${EIGEN3_INCLUDE_DIR}/Eigen/Dense")
  set(_lq_eigen "${EIGEN3_INCLUDE_DIR}")
  set(_lq_eigen_from "EIGEN3_INCLUDE_DIR")
endif()

if(NOT _lq_eigen)
  find_package(Python COMPONENTS Interpreter QUIET)
  if(Python_EXECUTABLE)
    execute_process(
      COMMAND "${Python_EXECUTABLE}" -c
        "import os, sys\nfor p in sys.path:\n    d = os.path.join(p or '.', 'cmeel.prefix', 'include', 'eigen3')\n    if os.path.isfile(os.path.join(d, 'Eigen', 'Dense')):\n        print(d)\n        break"
      OUTPUT_VARIABLE _lq_cmeel OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
    if(_lq_cmeel)
      set(_lq_eigen "${_lq_cmeel}")
      set(_lq_eigen_from "cmeel-eigen")
    endif()
  endif()
endif()

if(NOT _lq_eigen)
  find_package(Eigen3 3.3 CONFIG QUIET)
  if(TARGET Eigen3::Eigen)
    get_target_property(_lq_eigen Eigen3::Eigen INTERFACE_INCLUDE_DIRECTORIES)
    set(_lq_eigen_from "Eigen3 CMake package")
  endif()
endif()

if(NOT _lq_eigen)
  find_path(_lq_eigen_path Eigen/Dense PATH_SUFFIXES eigen3)
  if(_lq_eigen_path)
    set(_lq_eigen "${_lq_eigen_path}")
    set(_lq_eigen_from "system headers")
  endif()
endif()

if(NOT _lq_eigen)
  message(FATAL_ERROR
    "loraquant needs Eigen 3.3+ and found none. Install the PyPI package cmeel-eigen "
    "(pip install cmeel-eigen), or Debian's libeigen3-dev, or pass "
    "-DEIGEN3_INCLUDE_DIR=/path/to/eigen3 or -DCMAKE_PREFIX_PATH=<Eigen3 prefix>.")
endif()
set(LORAQUANT_EIGEN_INCLUDE_DIR "${_lq_eigen}")
message(STATUS "loraquant: Eigen from ${_lq_eigen_from}: ${_lq_eigen}")
