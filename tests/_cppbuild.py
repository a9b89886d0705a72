"""Build, install and consume the plain CMake project, once per test session.

The C++ unit tests (ctest) and the embedding tests share one build with
LORAQUANT_TESTS=ON in build/cpp-tests (kept between runs, so a rerun only rebuilds
what changed) and one install into a temporary prefix. CMake is the `cmake` on PATH,
as in CI.
"""
from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "build" / "cpp-tests"
JOBS = "2"  # the machines this runs on have two cores to share


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"`{name}` is not on PATH; the C++ tests need CMake "
                           "(pip install cmake) and a C/C++ compiler")
    return path


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
    return build_and_install(tmp_path_factory.getbasetemp() / "loraquant-prefix")


@pytest.fixture(scope="session")
def example(installed, tmp_path_factory) -> Path:
    return build_example(installed.prefix, tmp_path_factory.getbasetemp() / "example-build")
