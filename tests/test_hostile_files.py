"""Hostile adapter files: what the fuzzers found (one regression each), and declared
sizes that must never be allocated."""
import struct
import subprocess
import sys
import time
import tracemalloc
import zlib

import numpy as np
import pytest

import loraquant
from loraquant import FormatError
from _hostile import (HUGE_PLACES, HUGE_SIZES, adapter_bytes, first_sigma, huge_size_files, join,
                      rewrite, set_scaling, split, version)

# Before its fix, the 200,000-dimension shape below took minutes (the product of its
# dimensions has millions of digits); a check of the sizes takes milliseconds.
HANG_SECONDS = 10
# Peak Python allocation while a hostile file is rejected: the file is a few KiB,
# reading it whole is allowed, anything near a declared size is not.
PEAK_BYTES = 4 << 20
# Address space a subprocess may add while it loads every hostile file.
ADDRESS_SPACE_SLACK = 512 << 20


@pytest.fixture(scope="module", params=["2", "1"], ids=["v2", "v1"])
def seed(request, tmp_path_factory):
    """A valid file of each format version."""
    return adapter_bytes(tmp_path_factory.mktemp("seed"), request.param)


def _set_meta(key, text):
    def edit(head):
        head["__metadata__"][key] = text
    return edit


def _nan_sigma(head, rest):
    begin = first_sigma(head)
    rest[begin:begin + 4] = struct.pack("<f", float("nan"))


DEEP = "[" * 100_000 + "]" * 100_000

#: what each fuzzer finding did before its fix, and the error it gets now
REGRESSIONS = {
    "header nested 100000 deep (RecursionError)": (
        lambda d: join(DEEP.encode(), b""), "JSON header nests too deeply"),
    "metadata modules nested 100000 deep (RecursionError)": (
        lambda d: rewrite(d, header=_set_meta("modules", DEEP)), "'modules' nests too deeply"),
    "5000-digit integer (ValueError of int())": (
        lambda d: join(b'{"a": ' + b"9" * 5000 + b"}", b""),
        "JSON header contains the 5000-character integer 99999999999999999999..., beyond"),
    "200000 dimensions of 2^60 (minutes of big-integer products)": (
        lambda d: rewrite(d, header=lambda h: h["w"].update(shape=[2 ** 60] * 200_000)),
        "shape overflows 64-bit strides"),
    "scaling 10^400 (OverflowError)": (
        lambda d: rewrite(d, meta=("modules", lambda ms: set_scaling(ms, 10 ** 400))),
        "'modules' contains the 401-character integer"),
    "dtype a list (TypeError: unhashable)": (
        lambda d: rewrite(d, header=lambda h: h["w"].update(dtype=[])), "unknown dtype"),
    "1e999 in peft_config (accepted, then unsavable)": (
        lambda d: rewrite(d, header=_set_meta("peft_config", '{"r": 1e999}')),
        "beyond the range of a float"),
    "NaN singular value (RuntimeWarning in the cast)": (
        lambda d: rewrite(d, body=_nan_sigma), "sigma holds 1 values that are not finite"),
    "empty extra of shape [0, 2^64] (TypeError from torch)": (
        lambda d: rewrite(d, header=lambda h: h["empty"].update(shape=[0, 2 ** 64])),
        "shape must be a list of integers in 0..2\\^63-1"),
    "empty extra of shape [0, 2^62, 4] (RuntimeError from torch)": (
        lambda d: rewrite(d, header=lambda h: h["empty"].update(shape=[0, 2 ** 62, 4])),
        "shape overflows 64-bit strides"),
}


@pytest.mark.parametrize("case", sorted(REGRESSIONS))
def test_fuzzer_finding_is_a_format_error(tmp_path, seed, case):
    make, match = REGRESSIONS[case]
    path = tmp_path / "bad.lqa"
    path.write_bytes(make(seed))
    start = time.monotonic()
    with pytest.raises(FormatError, match=match) as info:
        loraquant.load(path)
    assert time.monotonic() - start < HANG_SECONDS
    assert str(info.value).startswith(f"{path}: ")


# --- declared sizes ---------------------------------------------------------------

def test_huge_declared_sizes_are_refused_without_allocating(tmp_path, seed):
    files = list(huge_size_files(seed))
    assert len(files) == len(HUGE_SIZES) * HUGE_PLACES[version(split(seed)[0])]
    for what, data in files:
        path = tmp_path / "huge.lqa"
        path.write_bytes(data)
        tracemalloc.start()
        try:
            with pytest.raises(FormatError):
                loraquant.load(path)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < PEAK_BYTES, f"{what}: peak {peak} bytes"


LOAD_UNDER_LIMIT = """
import resource, sys, torch, loraquant
vm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize"))
resource.setrlimit(resource.RLIMIT_AS, (vm + int(sys.argv[1]), vm + int(sys.argv[1])))
for path in sys.argv[2:]:
    try:
        loraquant.load(path)
        print("loaded")
    except loraquant.FormatError:
        print("FormatError")
"""


def test_huge_declared_sizes_stay_within_an_address_space_limit(tmp_path, seed):
    """The C++ side allocates outside tracemalloc's view: a hard limit on the address
    space turns any large allocation into a MemoryError, which fails this test."""
    paths = []
    for k, (_, data) in enumerate(huge_size_files(seed)):
        paths.append(tmp_path / f"h{k}.lqa")
        paths[-1].write_bytes(data)
    res = subprocess.run([sys.executable, "-c", LOAD_UNDER_LIMIT, str(ADDRESS_SPACE_SLACK),
                          *map(str, paths)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["FormatError"] * len(paths)


@pytest.fixture(scope="module")
def widest(tmp_path_factory):
    """A file of one module with m = n = 2^24 and r = 4096, every component dropped:
    valid and 16 KiB, but its dense factors would take 512 GiB."""
    payload = bytes(4 * 4096) + struct.pack("<f", 1.0)
    head = b"LQM1" + struct.pack("<HHIIIIIIQ", 1, 48, 1 << 24, 1 << 24, 4096, 128, 0, 0,
                                 len(payload))
    crc = zlib.crc32(payload, zlib.crc32(head))
    q = loraquant.QuantizedLoRA.from_bytes(head + struct.pack("<II", crc, 0) + payload)
    q.singular_values = np.zeros(4096)  # else save() would take them from the dense update
    path = tmp_path_factory.mktemp("widest") / "wide.lqa"
    loraquant.save(path, {"m": q})
    return path


def test_a_tiny_file_declaring_the_largest_module_loads_without_allocating(widest):
    path = widest
    tracemalloc.start()
    try:
        back = loraquant.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert back["m"].shape == (1 << 24, 1 << 24) and back["m"].rank == 4096
    assert peak < PEAK_BYTES
    assert np.all(back["m"].singular_values == 0)


CLI_UNDER_LIMIT = """
import resource, sys
from loraquant import cli
vm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize"))
resource.setrlimit(resource.RLIMIT_AS, (vm + int(sys.argv[1]), vm + int(sys.argv[1])))
sys.exit(cli.main(sys.argv[2:]))
"""


def test_cli_on_a_file_too_large_to_decode_is_one_line(widest, tmp_path):
    """Exporting the widest module needs its dense factors: out of memory, said in one
    line (the address-space limit makes the failure certain on any machine). The
    probe needs O(m + n) memory and works."""
    def cli(*argv):
        return subprocess.run([sys.executable, "-c", CLI_UNDER_LIMIT, str(ADDRESS_SPACE_SLACK),
                               *map(str, argv)], capture_output=True, text=True, timeout=300)

    res = cli("export", widest, tmp_path / "out")
    assert res.returncode == 1
    assert res.stderr.startswith("loraquant export: error: out of memory")
    assert len(res.stderr.strip().splitlines()) == 1
    res = cli("inspect", widest, "--probe")
    assert res.returncode == 0 and res.stdout == "m 0\n"
