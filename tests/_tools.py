"""Tools outside Python that some tests need (CMake, a C and C++ compiler, clang, nm).

On a developer's machine a missing tool skips the tests that need it, with a reason
naming the tool and how to install it, so that the README's `python -m pytest` passes
on a fresh machine. Under CI (the environment variable CI is "true" or "1", as CI
services set it and `.ci/run` exports it) every tool is installed on purpose, so a
missing one is a failure: nothing goes untested there without anyone noticing.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import NoReturn

import pytest

#: how to get each tool on Debian or Ubuntu (what .ci/run and the README assume)
INSTALL = {
    "cmake": "pip install cmake",
    "ctest": "pip install cmake",
    "clang++": "apt-get install -y clang",
    "c++": "apt-get install -y g++",
    "cc": "apt-get install -y gcc",
    "nm": "apt-get install -y binutils",
}
#: what CMake looks for when CXX or CC is not set, in its order
CXX_NAMES = ("c++", "g++", "clang++")
C_NAMES = ("cc", "gcc", "clang")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def missing(reason: str) -> NoReturn:
    """Skip the calling test or fixture with `reason`; under CI, fail it instead."""
    if in_ci():
        pytest.fail(f"{reason} [CI={os.environ['CI']}: a missing tool is a failure under CI]",
                    pytrace=False)
    pytest.skip(reason)


def require(name: str, why: str) -> str:
    """The path of the executable `name` on PATH, or skip (fail under CI) saying `why`
    it is needed and how to install it."""
    path = shutil.which(name)
    if path is None:
        missing(f"`{name}` is not on PATH: {why} (install: {INSTALL.get(name, name)})")
    return path


def require_compiler(language: str, why: str) -> str:
    """A C++ ("CXX") or C ("C") compiler as CMake would find it: $CXX / $CC, else the
    first of CXX_NAMES / C_NAMES on PATH."""
    env, names, hint = {"CXX": ("CXX", CXX_NAMES, "c++"), "C": ("CC", C_NAMES, "cc")}[language]
    if os.environ.get(env):
        candidates = [shlex.split(os.environ[env])[0]]
        where = f"${env} ({os.environ[env]})"
    else:
        candidates = list(names)
        where = "none of " + ", ".join(names)
    for c in candidates:
        path = shutil.which(c)
        if path is not None:
            return path
    missing(f"no {language} compiler: {where} is on PATH; {why} "
            f"(install: {INSTALL[hint]})")


def require_sanitizer_runtime(cxx: str, flags: tuple, workdir: Path, why: str) -> None:
    """Skip (fail under CI) unless `cxx` compiles and links a program with `flags`:
    GCC needs libasan and libubsan for that, which a compiler package may lack."""
    src = workdir / "probe.cpp"
    src.write_text("int main() { return 0; }\n")
    res = subprocess.run([cxx, *flags, str(src), "-o", str(workdir / "probe")],
                         capture_output=True, text=True, timeout=300)
    if res.returncode != 0:
        first = (res.stderr.strip().splitlines() or ["no output"])[0]
        missing(f"{cxx} cannot build with {' '.join(flags)} ({first}): {why} "
                f"(install: apt-get install -y clang, or libasan and libubsan for GCC)")
