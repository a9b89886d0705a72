"""The C++ core under AddressSanitizer and UBSan, in a build of its own under build/
(LORAQUANT_SANITIZE=ON, no recovery: the first finding aborts).

lq_sanitize_check runs Module::from_bytes, to_bytes, dequantize, apply and compress on
valid blobs of several shapes, on every truncation, byte flip and hostile 32-bit value
of them, on pseudo-random pairs of extreme magnitude, and on every input a fuzzer once
failed on. Where the C++ unit tests exist (cpp/tests), they run in the same build.

Needs CMake and a compiler with the sanitizer runtimes (clang, or GCC with libasan and
libubsan): without them the tests skip, saying so, and fail under CI (tests/_tools.py).
"""
import subprocess

import pytest

from _hostile import ROOT, fuzz_runner
from _tools import require, require_compiler, require_sanitizer_runtime

FUZZ = fuzz_runner()
# clang builds the libFuzzer targets in the same tree; without it, the default
# compiler builds the sanitizer check alone.
BUILD = FUZZ.BUILD if FUZZ.have_clang() else ROOT / "build" / "sanitize"
SANITIZE_FLAGS = ("-fsanitize=address,undefined", "-fno-sanitize-recover=all")
WHY = "the sanitizer build compiles the core with -fsanitize=address,undefined"
UB_CANARY = "#include <climits>\nint main(int argc, char**) { int x = INT_MAX - 1 + argc; return x + argc > 0 ? 0 : 1; }\n"


@pytest.fixture(scope="module")
def bin_dir(tmp_path_factory):
    require("cmake", WHY)
    cxx = require("clang++", WHY) if FUZZ.have_clang() else require_compiler("CXX", WHY)
    if (ROOT / "cpp" / "tests").is_dir():
        require_compiler("C", WHY + ", with the C API test, a C program")
    require_sanitizer_runtime(cxx, SANITIZE_FLAGS, tmp_path_factory.mktemp("probe"), WHY)
    return FUZZ.build(BUILD, clang=FUZZ.have_clang())


def test_the_core_is_compiled_with_the_sanitizers(bin_dir):
    flags = (BUILD / "cpp" / "CMakeFiles" / "loraquant.dir" / "flags.make").read_text()
    for flag in SANITIZE_FLAGS:
        assert flag in flags


def test_a_ubsan_finding_fails_the_program(bin_dir, tmp_path):
    """The same compiler and flags on a program with a signed overflow: it must abort."""
    cache = (BUILD / "CMakeCache.txt").read_text().splitlines()
    cxx = next(line.split("=", 1)[1] for line in cache if line.startswith("CMAKE_CXX_COMPILER:"))
    (tmp_path / "ub.cpp").write_text(UB_CANARY)
    subprocess.run([cxx, *SANITIZE_FLAGS, str(tmp_path / "ub.cpp"), "-o", str(tmp_path / "ub")],
                   check=True, timeout=300)
    res = subprocess.run([str(tmp_path / "ub")], capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and "runtime error" in res.stderr


def test_sanitize_check_finds_nothing(bin_dir):
    res = subprocess.run([str(bin_dir / "lq_sanitize_check")], capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "no failure" in res.stdout


@pytest.mark.skipif(not (ROOT / "cpp" / "tests").is_dir(), reason="no C++ unit tests (cpp/tests) yet")
def test_cpp_unit_tests_under_the_sanitizers(bin_dir):
    res = subprocess.run([require("ctest", WHY), "--output-on-failure"], cwd=BUILD, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-4000:]
