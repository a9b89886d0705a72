"""Embedding: the installed C++ package, found with find_package by a C++ and a C
consumer, the example's probe lines against Python's, and the C API through ctypes."""
from __future__ import annotations

import ctypes as C
import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import _capi as capi
import loraquant
from _cppbuild import REPO, configure_consumer, example, installed, run, tool  # noqa: F401
from _tools import require

# Python and C++ compute probe_norm with the same core function, so their 8-digit lines
# are identical. An independent float64 numpy computation agrees with it to PROBE_REL;
# a printed line carries 8 significant digits, so it is off by up to half a unit of the
# 8th digit: 5e-8 relative when the leading digit is 1.
PROBE_REL = 1e-10
PRINT_REL = 5e-8

# name: (m, n, r, scaling, input dtype): awkward shapes, both input dtypes.
MODULES = {
    "base_model.model.layers.0.self_attn.q_proj": (64, 48, 8, 2.0, np.float32),
    "base_model.model.layers.0.self_attn.v_proj": (3, 129, 4, 0.5, np.float64),
    "base_model.model.layers.0.mlp.down_proj": (129, 31, 16, -1.0, np.float32),
    "base_model.model.layers.1.mlp.up_proj": (1, 1000, 3, 1.0, np.float64),
}


def pairs(seed=0):
    rng = np.random.default_rng(seed)
    for name, (m, n, r, s, dt) in MODULES.items():
        A = rng.standard_normal((r, n)).astype(dt)
        B = (rng.standard_normal((m, r)) * 0.1).astype(dt)
        yield name, A, B, s


@pytest.fixture(scope="module")
def lib(installed):
    return capi.load(installed.c_library)


def inspect_probe(path: Path) -> list[str]:
    """`loraquant inspect FILE --probe`: Python's reader and Python's formatting."""
    return run([sys.executable, "-m", "loraquant", "inspect", path, "--probe"]).stdout.splitlines()


def probe_norm_numpy(q) -> float:
    """|dW_hat x|_2 for x_j = sin(j + 1), from the dequantized factors in float64."""
    A_hat, B_hat = q.core.dequantize()
    x = np.sin(np.arange(A_hat.shape[1], dtype=np.float64) + 1.0)
    return float(np.linalg.norm(B_hat.astype(np.float64) @ (A_hat.astype(np.float64) @ x)))


def run_example(example: Path, path: Path) -> list[str]:
    p = subprocess.run([str(example), str(path)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return p.stdout.splitlines()


def write_with_c_api(lib, path: Path, **opts) -> None:
    """The MODULES, compressed and written through the C API."""
    mods = [capi.compress(lib, name, A, B, s, capi.options(lib, **opts)) for name, A, B, s in pairs()]
    try:
        capi.write_file(lib, path, mods, '{"peft_type": "LORA"}')
    finally:
        for m in mods:
            lib.lq_module_free(m)


# ---- the installed package -------------------------------------------------------------

def test_install_layout(installed):
    inc = installed.prefix / "include" / "loraquant"
    for h in ["module.h", "compress.h", "svd.h", "build_info.h", "format.h", "adapter_file.h", "c_api.h"]:
        assert (inc / h).is_file(), f"{h} is not installed"
    for h in inc.glob("*.h"):  # consumers need no Eigen
        assert "#include <Eigen" not in h.read_text(), f"{h.name} includes Eigen"
    cfg = next(installed.prefix.glob("lib*/cmake/loraquant"))
    for f in ["loraquantConfig.cmake", "loraquantConfigVersion.cmake", "loraquantTargets.cmake",
              "loraquantCTargets.cmake"]:
        assert (cfg / f).is_file(), f"{f} is not installed"
    assert next(installed.prefix.glob("lib*/libloraquant.a"), None) is not None
    assert installed.c_library.is_file()


def test_c_library_exports_only_the_c_api(installed):
    nm = require("nm", "it lists the symbols the C library exports")
    out = run([nm, "-D", "--defined-only", installed.c_library]).stdout
    exported = [line.split()[-1] for line in out.splitlines() if line.strip()]
    assert exported and all(s.startswith("lq_") for s in exported), exported


def consumer(tmp_path: Path, body: str, languages: str = "CXX") -> Path:
    src = tmp_path / "src"
    src.mkdir(parents=True)
    (src / "CMakeLists.txt").write_text(
        f"cmake_minimum_required(VERSION 3.18)\nproject(consumer LANGUAGES {languages})\n{body}\n")
    return src


def test_find_package_checks_the_version(installed, tmp_path):
    ok = consumer(tmp_path / "ok", "find_package(loraquant 0.1 CONFIG REQUIRED)\n"
                  "message(STATUS \"found loraquant ${loraquant_VERSION}, C API ${loraquant_HAS_C_API}\")")
    p = configure_consumer(ok, tmp_path / "ok" / "b", installed.prefix)
    assert f"found loraquant {loraquant.__version__}, C API ON" in p.stdout
    newer = consumer(tmp_path / "newer", "find_package(loraquant 0.2 CONFIG REQUIRED)")
    p = configure_consumer(newer, tmp_path / "newer" / "b", installed.prefix, check=False)
    assert p.returncode != 0 and '"0.2"' in p.stderr and "compatible" in p.stderr, p.stderr


def test_c_only_consumer(installed, tmp_path):
    """A C project (no C++ enabled) links loraquant::loraquant_c and runs the C check."""
    src = consumer(tmp_path, "find_package(loraquant CONFIG REQUIRED)\n"
                   f"add_executable(c_check \"{REPO / 'cpp' / 'tests' / 'c_api_from_c.c'}\")\n"
                   "target_link_libraries(c_check PRIVATE loraquant::loraquant_c m)", languages="C")
    configure_consumer(src, tmp_path / "b", installed.prefix)
    run([tool("cmake"), "--build", tmp_path / "b"])
    p = run([tmp_path / "b" / "c_check"])
    assert "c_api_from_c: ok" in p.stdout


# ---- one format, two implementations ------------------------------------------------------

def test_example_matches_inspect_on_a_python_file(example, tmp_path):
    """The issue's check: a file from loraquant.save (with extras and a PEFT config),
    the example's lines against `loraquant inspect FILE --probe`."""
    torch = pytest.importorskip("torch")
    adapter = loraquant.compress_adapter({n: (A, B, s) for n, A, B, s in pairs(seed=2)}, bits=2.0)
    path = tmp_path / "saved.lqa"
    loraquant.save(path, adapter, peft_config={"peft_type": "LORA", "r": 16, "note": "caf\u00e9"},
                   scalings={n: s for n, _, _, s in pairs(seed=2)},
                   extras={"base_model.model.score.weight": torch.arange(6.0).reshape(2, 3),
                           "base_model.model.layers.0.mlp.down_proj.lora_B.bias":
                               torch.ones(129, dtype=torch.bfloat16)})
    lines = run_example(example, path)
    assert [ln.split(" ")[0] for ln in lines] == list(MODULES)  # file order
    assert lines == inspect_probe(path)


def test_example_matches_inspect_on_a_c_api_file(lib, example, tmp_path):
    path = tmp_path / "adapter.lqa"
    write_with_c_api(lib, path, bits=3.0, group_size=32)
    lines = run_example(example, path)
    assert [ln.split(" ")[0] for ln in lines] == list(MODULES)
    assert lines == inspect_probe(path)
    adapter = loraquant.load(path)
    for line in lines:
        name, norm = line.split(" ")
        want = probe_norm_numpy(adapter[name])
        assert want > 0 and abs(float(norm) - want) <= (PRINT_REL + PROBE_REL) * want, line


def test_python_reads_what_the_c_api_wrote(lib, tmp_path):
    """loraquant.load gets back every module exactly, with its widths, singular values
    and scaling, and the PEFT config."""
    path = tmp_path / "adapter.lqa"
    mods = {name: capi.compress(lib, name, A, B, s, capi.options(lib, bits=2.5)) for name, A, B, s in pairs(3)}
    try:
        capi.write_file(lib, path, list(mods.values()), '{"peft_type": "LORA", "r": [1, 2]}')
        adapter = loraquant.load(path)
        assert list(adapter) == list(mods)
        assert adapter.peft_config == {"peft_type": "LORA", "r": [1, 2]}
        for (name, h), (_, _, _, s) in zip(mods.items(), pairs(3)):
            q = adapter[name]
            assert q.to_bytes() == capi.to_bytes(lib, h)
            assert q.widths == capi.widths(lib, h)
            np.testing.assert_array_equal(q.singular_values, capi.sigma(lib, h).astype(np.float64))
            assert adapter.scalings[name] == s
    finally:
        for h in mods.values():
            lib.lq_module_free(h)


def test_c_api_file_is_plain_safetensors(lib, tmp_path):
    """Common tools can list the file: the safetensors package opens it."""
    safe_open = pytest.importorskip("safetensors", reason="needs the safetensors package").safe_open
    path = tmp_path / "adapter.lqa"
    write_with_c_api(lib, path)
    with safe_open(str(path), framework="numpy") as f:
        assert f.metadata()["format"] == "loraquant-adapter"
        assert set(f.keys()) == {"lq.blobs", "lq.sigma"}
        first_size = json.loads(f.metadata()["modules"])[0][1]
        blob = f.get_tensor("lq.blobs")[:first_size].tobytes()
    assert loraquant.QuantizedLoRA.from_bytes(blob).shape == MODULES[next(iter(MODULES))][:2]


def test_example_reports_bad_files(lib, example, tmp_path):
    path = tmp_path / "adapter.lqa"
    write_with_c_api(lib, path)
    data = path.read_bytes()
    short = tmp_path / "short.lqa"
    for cut in [0, 7, 8, 100, len(data) // 2, len(data) - 1]:
        short.write_bytes(data[:cut])
        p = subprocess.run([str(example), str(short)], capture_output=True, text=True)
        assert p.returncode == 1 and p.stdout == "", (cut, p.returncode, p.stderr)
        assert p.stderr.startswith("error: ") and str(short) in p.stderr and p.stderr.count("\n") == 1
    p = subprocess.run([str(example), str(tmp_path / "missing.lqa")], capture_output=True, text=True)
    assert p.returncode == 1 and "cannot open" in p.stderr


# ---- the C API through ctypes ------------------------------------------------------------

def test_c_api_matches_python(lib):
    """Same float64 pair and options: the C API's blob is Python's blob, byte for byte."""
    name, A, B, s = next(p for p in pairs() if p[1].dtype == np.float64)
    h = capi.compress(lib, name, A, B, s, capi.options(lib, bits=2.0, group_size=128))
    try:
        q = loraquant.compress(A, B, bits=2.0, scaling=s)
        assert capi.to_bytes(lib, h) == q.to_bytes()
        norm, bits = C.c_double(), C.c_double()
        capi.call(lib, "lq_module_probe_norm", h, C.byref(norm))
        capi.call(lib, "lq_module_avg_bits", h, C.byref(bits))
        assert norm.value == q.core.probe_norm() and bits.value == q.avg_bits
        x = np.random.default_rng(5).standard_normal((7, A.shape[1])).astype(np.float32)
        y = np.empty((7, B.shape[0]), dtype=np.float32)
        capi.call(lib, "lq_module_apply", h, capi.f32(x), 7, A.shape[1], capi.f32(y), B.shape[0])
        np.testing.assert_array_equal(y, q.apply(x))
    finally:
        lib.lq_module_free(h)


def expect_error(lib, code: int, needle: str, fn: str, *args) -> None:
    with pytest.raises(capi.CApiError) as e:
        capi.call(lib, fn, *args)
    assert e.value.code == code, e.value
    assert needle in e.value.message, e.value


def test_c_api_error_paths(lib, tmp_path):
    ad, mod, size = capi.Adapter(), capi.Module(), C.c_size_t()
    # Files: missing, truncated, garbage.
    expect_error(lib, capi.E_IO, "missing.lqa", "lq_adapter_open",
                 str(tmp_path / "missing.lqa").encode(), C.byref(ad))
    path = tmp_path / "good.lqa"
    write_with_c_api(lib, path)
    data = path.read_bytes()
    (tmp_path / "short.lqa").write_bytes(data[: len(data) // 3])
    expect_error(lib, capi.E_FORMAT, "short.lqa", "lq_adapter_open",
                 str(tmp_path / "short.lqa").encode(), C.byref(ad))
    flipped = bytearray(data)
    flipped[-5] ^= 0x10
    expect_error(lib, capi.E_FORMAT, "data_crc32 mismatch", "lq_adapter_from_memory",
                 capi.u8(bytes(flipped)), len(flipped), C.byref(ad))
    expect_error(lib, capi.E_FORMAT, "bad magic", "lq_module_from_bytes", b"x",
                 capi.u8(b"\0" * 64), 64, C.byref(mod))
    # NULL handles and pointers.
    expect_error(lib, capi.E_INVALID_ARGUMENT, "adapter is NULL", "lq_adapter_module_count", None, C.byref(size))
    expect_error(lib, capi.E_INVALID_ARGUMENT, "module is NULL", "lq_module_probe_norm", None, C.byref(C.c_double()))
    expect_error(lib, capi.E_INVALID_ARGUMENT, "path is NULL", "lq_adapter_open", None, C.byref(ad))
    expect_error(lib, capi.E_INVALID_ARGUMENT, "out is NULL", "lq_adapter_open", str(path).encode(), None)
    lib.lq_module_free(None)
    lib.lq_adapter_free(None)

    capi.call(lib, "lq_adapter_open", str(path).encode(), C.byref(ad))
    try:
        capi.call(lib, "lq_adapter_module_count", ad, C.byref(size))
        assert size.value == len(MODULES)
        expect_error(lib, capi.E_INVALID_ARGUMENT, "out of range", "lq_adapter_module", ad, 99, C.byref(mod))
        capi.call(lib, "lq_adapter_module", ad, 0, C.byref(mod))
    finally:
        lib.lq_adapter_free(ad)
    try:  # the module outlives its adapter
        m, n = C.c_uint32(), C.c_uint32()
        capi.call(lib, "lq_module_shape", mod, C.byref(m), C.byref(n))
        x = np.ones((2, n.value), dtype=np.float32)
        y = np.empty((2, m.value), dtype=np.float32)
        # Bad shapes.
        expect_error(lib, capi.E_INVALID_ARGUMENT, f"expects n = {n.value}", "lq_module_apply",
                     mod, capi.f32(x), 2, n.value - 1, capi.f32(y), m.value)
        expect_error(lib, capi.E_INVALID_ARGUMENT, f"gives m = {m.value}", "lq_module_apply",
                     mod, capi.f32(x), 2, n.value, capi.f32(y), m.value + 1)
        expect_error(lib, capi.E_INVALID_ARGUMENT, "x is NULL", "lq_module_apply",
                     mod, None, 2, n.value, capi.f32(y), m.value)
        capi.call(lib, "lq_module_apply", mod, capi.f32(x), 2, n.value, capi.f32(y), m.value)
        assert np.isfinite(y).all()
        expect_error(lib, capi.E_INVALID_ARGUMENT, "the blob needs", "lq_module_to_bytes",
                     mod, (C.c_uint8 * 4)(), 4, C.byref(size))
    finally:
        lib.lq_module_free(mod)

    # Compressing: NaN, bad shapes, bad options, a bad dtype.
    A, B = np.ones((4, 10)), np.ones((6, 4))
    nan_a = A.copy()
    nan_a[1, 2] = np.nan
    opts, mod = capi.options(lib), capi.Module()
    expect_error(lib, capi.E_INVALID_ARGUMENT, "NaN", "lq_compress", b"x", capi.FLOAT64,
                 nan_a.ctypes.data, B.ctypes.data, 6, 10, 4, 1.0, C.byref(opts), C.byref(mod))
    expect_error(lib, capi.E_INVALID_ARGUMENT, "out of range", "lq_compress", b"x", capi.FLOAT64,
                 A.ctypes.data, B.ctypes.data, 0, 10, 4, 1.0, C.byref(opts), C.byref(mod))
    expect_error(lib, capi.E_INVALID_ARGUMENT, "dtype 5", "lq_compress", b"x", 5,
                 A.ctypes.data, B.ctypes.data, 6, 10, 4, 1.0, C.byref(opts), C.byref(mod))
    bad = capi.options(lib, group_size=0)
    expect_error(lib, capi.E_INVALID_ARGUMENT, "group_size", "lq_compress", b"x", capi.FLOAT64,
                 A.ctypes.data, B.ctypes.data, 6, 10, 4, 1.0, C.byref(bad), C.byref(mod))
    expect_error(lib, capi.E_INVALID_ARGUMENT, "A is NULL", "lq_compress", b"x", capi.FLOAT64,
                 None, B.ctypes.data, 6, 10, 4, 1.0, C.byref(opts), C.byref(mod))
    assert not mod.value  # a failed call leaves its out-parameter alone
    # Writing: nothing to write, nowhere to write it.
    expect_error(lib, capi.E_INVALID_ARGUMENT, "at least one module", "lq_write_adapter_file",
                 str(tmp_path / "empty.lqa").encode(), None, 0, None)
    h = capi.compress(lib, "m", A, B, 1.0, opts)
    try:
        expect_error(lib, capi.E_IO, "cannot write", "lq_write_adapter_file",
                     str(tmp_path / "no" / "dir.lqa").encode(), (capi.Module * 1)(h), 1, None)
        assert capi.last_error(lib).startswith("lq_write_adapter_file: ")
    finally:
        lib.lq_module_free(h)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.lqa", "short.lqa"]  # nothing left behind


def test_c_api_last_error_is_per_thread(lib, tmp_path):
    ad = capi.Adapter()
    assert lib.lq_adapter_open(str(tmp_path / "main.lqa").encode(), C.byref(ad)) == capi.E_IO
    seen = {}

    def other():
        seen["before"] = capi.last_error(lib)
        lib.lq_adapter_open(str(tmp_path / "thread.lqa").encode(), C.byref(capi.Adapter()))
        seen["after"] = capi.last_error(lib)

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert seen["before"] == "" and "thread.lqa" in seen["after"]
    assert "main.lqa" in capi.last_error(lib)
    assert lib.lq_version().decode() == loraquant.__version__
