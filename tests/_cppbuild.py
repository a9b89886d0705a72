"""Build, install and consume the plain CMake project, once per test session.

The C++ unit tests (ctest) and the embedding tests share one build with
LORAQUANT_TESTS=ON in build/cpp-tests (kept between runs, so a rerun only rebuilds
what changed) and one install into a temporary prefix. CMake is the `cmake` on PATH,
as in CI. Without CMake or a C/C++ compiler the tests that need the build skip (and
fail under CI: tests/_tools.py).
"""
from __future__ import annotations

import functools
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from _tools import require, require_compiler

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "build" / "cpp-tests"
JOBS = "2"  # the machines this runs on have two cores to share
WHY = "the C++ tests and the embedding tests build the plain CMake project"


def tool(name: str) -> str:
    """`cmake` or `ctest` from PATH; skips the test without it (fails under CI)."""
    return require(name, WHY)


def run(cmd, *, check=True, **kw) -> subprocess.CompletedProcess:
    """Run a command; with check, fail with its output if it exits non-zero."""
    cmd = [str(c) for c in cmd]
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {p.returncode}\n"
                             f"--- stdout\n{p.stdout[-6000:]}\n--- stderr\n{p.stderr[-6000:]}")
    return p


@dataclass(frozen=True)
class Installed:
    build: Path   # the build tree, with the C++ unit tests
    prefix: Path  # where `cmake --install` put the package

    @property
    def c_library(self) -> Path:
        libs = sorted(self.prefix.glob("lib*/libloraquant_c.so"))
        assert libs, f"libloraquant_c.so is not installed under {self.prefix}"
        return libs[0]


@functools.lru_cache(maxsize=None)
def build_and_install(prefix: Path) -> Installed:
    cmake = tool("cmake")
    # The interpreter running the tests finds Eigen (cmeel-eigen) for the build.
    run([cmake, "-S", REPO, "-B", BUILD, "-DCMAKE_BUILD_TYPE=Release", "-DLORAQUANT_TESTS=ON",
         "-DLORAQUANT_PYTHON=OFF", f"-DPython_EXECUTABLE={sys.executable}"])
    run([cmake, "--build", BUILD, "-j", JOBS])
    run([cmake, "--install", BUILD, "--prefix", prefix])
    return Installed(BUILD, prefix)


def configure_consumer(source: Path, build: Path, prefix: Path, *, check=True):
    """Configure a project that finds loraquant in `prefix` with find_package."""
    return run([tool("cmake"), "-S", source, "-B", build, "-DCMAKE_BUILD_TYPE=Release",
                f"-DCMAKE_PREFIX_PATH={prefix}"], check=check)


@functools.lru_cache(maxsize=None)
def build_example(prefix: Path, build: Path) -> Path:
    """examples/cpp built against the installed package; returns the executable."""
    configure_consumer(REPO / "examples" / "cpp", build, prefix)
    run([tool("cmake"), "--build", build, "-j", JOBS])
    exe = build / "loraquant_probe"
    assert exe.is_file(), f"the example did not produce {exe}"
    return exe


@pytest.fixture(scope="session")
def installed(tmp_path_factory) -> Installed:
    tool("cmake")
    require_compiler("CXX", WHY)
    require_compiler("C", WHY + " (its C API test is a C program)")
    return build_and_install(tmp_path_factory.getbasetemp() / "loraquant-prefix")


@pytest.fixture(scope="session")
def example(installed, tmp_path_factory) -> Path:
    return build_example(installed.prefix, tmp_path_factory.getbasetemp() / "example-build")
