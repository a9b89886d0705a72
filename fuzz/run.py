"""Build the fuzz targets and run every fuzzer for a bounded time.

    python fuzz/run.py --seconds 600          # the long run (fuzz/README.md)
    python fuzz/run.py --seconds 20 --no-python

Builds the core with clang, AddressSanitizer, UBSan and libFuzzer coverage into
build/fuzz (once; later runs only rebuild what changed), writes the seeds
(fuzz/make_seeds.py), runs each libFuzzer target, then the Python mutation fuzzer
(fuzz/python/fuzz_load.py). Corpora grow in build/fuzz-corpus/<target> across runs;
a crashing input lands in build/fuzz-artifacts/. Exit status 1 if any fuzzer failed.
tests/test_fuzz_short.py and tests/test_sanitizers.py use the functions below.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "fuzz"
CORPUS = ROOT / "build" / "fuzz-corpus"
ARTIFACTS = ROOT / "build" / "fuzz-artifacts"
#: libFuzzer targets (fuzz/CMakeLists.txt) and the seed folder of each
TARGETS = {"adapter": "adapter", "blob": "blob", "compress": "compress"}
#: an input slower than this is reported as a hang
HANG_SECONDS = 10
RSS_LIMIT_MB = 2048
#: one allocation above this is a failure: inputs are a few KiB, and the targets decode
#: only modules of at most 2^20 dense entries (fuzz/cpp/check.cpp)
MALLOC_LIMIT_MB = 256
BUILD_TIMEOUT = 1200


def have_clang() -> bool:
    return shutil.which("clang++") is not None


def configure_args(build_dir: Path, clang: bool) -> list[str]:
    args = ["cmake", "-S", str(ROOT), "-B", str(build_dir), "-DLORAQUANT_SANITIZE=ON",
            "-DLORAQUANT_FUZZ=ON", "-DCMAKE_BUILD_TYPE=RelWithDebInfo",
            # -O1 compiles the Eigen-heavy core about twice as fast as -O2 and keeps
            # the sanitizers' stack traces exact
            "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g", "-DLORAQUANT_PYTHON=OFF",
            "-DLORAQUANT_CUDA=OFF", f"-DPython_EXECUTABLE={sys.executable}"]
    if clang:
        args += ["-DCMAKE_CXX_COMPILER=clang++", "-DCMAKE_C_COMPILER=clang",
                 "-DCMAKE_CXX_FLAGS=-fsanitize=fuzzer-no-link"]
    if (ROOT / "cpp" / "tests").is_dir():
        args.append("-DLORAQUANT_TESTS=ON")
    return args


def build(build_dir: Path = BUILD, clang: bool = True, jobs: int = 2) -> Path:
    """Configure and build (only what changed); returns the folder of the fuzz executables."""
    subprocess.run(configure_args(build_dir, clang), check=True, timeout=BUILD_TIMEOUT,
                   stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", str(build_dir), "-j", str(jobs)], check=True,
                   timeout=BUILD_TIMEOUT, stdout=subprocess.DEVNULL)
    return build_dir / "fuzz"


def write_seeds(out: Path) -> Path:
    subprocess.run([sys.executable, str(ROOT / "fuzz" / "make_seeds.py"), str(out)], check=True,
                   timeout=300)
    return out


def run_libfuzzer(exe: Path, seconds: int, corpus: Path, seeds: Path,
                  artifacts: Path = ARTIFACTS) -> subprocess.CompletedProcess:
    """One libFuzzer target for `seconds`; returncode 0 when nothing was found."""
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    cmd = [str(exe), f"-max_total_time={seconds}", f"-timeout={HANG_SECONDS}",
           f"-rss_limit_mb={RSS_LIMIT_MB}", f"-malloc_limit_mb={MALLOC_LIMIT_MB}",
           f"-artifact_prefix={artifacts}/{exe.name}-",
           "-print_final_stats=1", str(corpus), str(seeds)]
    words = ROOT / "fuzz" / f"{exe.name.replace('lq_fuzz_', '')}.dict"
    if words.exists():
        cmd.insert(1, f"-dict={words}")
    env = dict(os.environ, UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1",
               ASAN_OPTIONS="detect_leaks=1:abort_on_error=1")
    return subprocess.run(cmd, capture_output=True, text=True, env=env,
                          timeout=seconds + 4 * HANG_SECONDS + 60)


def run_python(seconds: int, seed: int, crashes: Path,
               c_library: Path | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "fuzz" / "python" / "fuzz_load.py"),
           f"--seconds={seconds}", f"--seed={seed}", f"--crashes={crashes}"]
    if c_library is not None:
        cmd.append(f"--c-library={c_library}")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=int, default=600, help="per fuzzer (default 600)")
    p.add_argument("--targets", nargs="*", default=list(TARGETS), choices=list(TARGETS))
    p.add_argument("--no-python", action="store_true", help="skip the Python fuzzer")
    p.add_argument("--seed", type=int, default=1, help="seed of the Python fuzzer")
    p.add_argument("--c-library", type=Path, help="a libloraquant_c.so without sanitizers "
                   "(e.g. build/cpp-tests/cpp/): the Python fuzzer checks the C++ reader "
                   "against loraquant.load")
    args = p.parse_args(argv)
    if not have_clang():
        sys.exit("clang++ not found: the libFuzzer targets need clang (apt-get install -y clang)")
    bin_dir = build()
    seeds = write_seeds(CORPUS / "seeds")
    failed = []
    for t in args.targets:
        res = run_libfuzzer(bin_dir / f"lq_fuzz_{t}", args.seconds, CORPUS / t, seeds / TARGETS[t])
        runs = re.search(r"stat::number_of_executed_units: (\d+)", res.stderr)
        print(f"lq_fuzz_{t}: exit {res.returncode}, {runs[1] if runs else '?'} inputs")
        if res.returncode != 0:
            print(res.stderr[-4000:], file=sys.stderr)
            failed.append(t)
    if not args.no_python:
        res = run_python(args.seconds, args.seed, ARTIFACTS / "python", args.c_library)
        print(res.stdout.strip() or res.stderr[-4000:])
        if res.returncode != 0:
            failed.append("python")
    print("failed: " + ", ".join(failed) if failed else "no fuzzer found anything")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
