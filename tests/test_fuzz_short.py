"""A short run of every fuzzer (fuzz/README.md has the long one): each libFuzzer target
of the C++ core (clang, AddressSanitizer, UBSan) and the Python mutation fuzzer of
loraquant.load and QuantizedLoRA.from_bytes (checked against the C++ reader), each for
SECONDS.

The libFuzzer targets need clang: without it they skip, saying so, on a developer's
machine and fail under CI (tests/_tools.py); LORAQUANT_SKIP_FUZZ=1 skips them anywhere.
Nothing is installed here.
"""
import os
import re
import shutil

import pytest

from _cppbuild import installed  # noqa: F401  (a fixture: the session's C++ build)
from _hostile import fuzz_runner
from _tools import require

FUZZ = fuzz_runner()
SECONDS = int(os.environ.get("LORAQUANT_FUZZ_SECONDS", "15"))
# A run that executed fewer inputs than this did not really fuzz (it stalled or
# rejected its corpus); both fuzzers manage thousands per second here.
MIN_INPUTS = 500

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fuzz_bin():
    if os.environ.get("LORAQUANT_SKIP_FUZZ") == "1":
        pytest.skip("LORAQUANT_SKIP_FUZZ=1: the libFuzzer targets are not built or run")
    require("clang++", "the libFuzzer targets need clang (LORAQUANT_SKIP_FUZZ=1 skips them)")
    require("cmake", "the fuzz targets are a CMake build")
    return FUZZ.build()


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return FUZZ.write_seeds(tmp_path_factory.mktemp("seeds"))


@pytest.mark.parametrize("target", sorted(FUZZ.TARGETS))
def test_libfuzzer_target_finds_nothing(fuzz_bin, seeds, tmp_path, target):
    artifacts = FUZZ.ARTIFACTS / f"short-{target}"  # kept after a failure, for replay
    shutil.rmtree(artifacts, ignore_errors=True)
    res = FUZZ.run_libfuzzer(fuzz_bin / f"lq_fuzz_{target}", SECONDS, tmp_path / "corpus",
                             seeds / FUZZ.TARGETS[target], artifacts)
    assert res.returncode == 0, res.stderr[-4000:]
    assert list(artifacts.iterdir()) == []
    runs = re.search(r"stat::number_of_executed_units: (\d+)", res.stderr)
    assert runs and int(runs[1]) >= MIN_INPUTS, res.stderr[-2000:]


def test_python_fuzzer_finds_nothing(installed):  # noqa: F811
    """Differential too: the C++ reader of the session's build must agree on every file."""
    crashes = FUZZ.ARTIFACTS / "short-python"
    shutil.rmtree(crashes, ignore_errors=True)
    res = FUZZ.run_python(SECONDS, seed=1, crashes=crashes, c_library=installed.c_library)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    done = re.search(r"fuzz_load: (\d+) inputs, (\d+) rejected, (\d+) accepted", res.stdout)
    assert done and int(done[1]) >= MIN_INPUTS
    assert int(done[2]) > 0 and int(done[3]) > 0  # both outcomes were reached
