"""ctypes declarations of the C API (cpp/include/loraquant/c_api.h), for the tests."""
from __future__ import annotations

import ctypes as C
from pathlib import Path

import numpy as np

OK, E_INVALID_ARGUMENT, E_FORMAT, E_IO, E_NO_MEMORY, E_INTERNAL = range(6)
FLOAT32, FLOAT64 = 0, 1


class Options(C.Structure):
    _fields_ = [("bits", C.c_double), ("rho", C.c_double), ("high_bits", C.c_uint32),
                ("group_size", C.c_uint32), ("range_search", C.c_int32),
                ("refit_rounds", C.c_uint32)]


Adapter = C.c_void_p  # lq_adapter*
Module = C.c_void_p   # lq_module*
_P = C.POINTER
_u8p, _f32p, _szp, _u32p, _dp = _P(C.c_uint8), _P(C.c_float), _P(C.c_size_t), _P(C.c_uint32), _P(C.c_double)

# name: (restype, argtypes)
_SIGNATURES = {
    "lq_last_error": (C.c_char_p, []),
    "lq_version": (C.c_char_p, []),
    "lq_options_init": (C.c_int, [_P(Options)]),
    "lq_adapter_open": (C.c_int, [C.c_char_p, _P(Adapter)]),
    "lq_adapter_from_memory": (C.c_int, [_u8p, C.c_size_t, _P(Adapter)]),
    "lq_adapter_free": (None, [Adapter]),
    "lq_adapter_module_count": (C.c_int, [Adapter, _szp]),
    "lq_adapter_module": (C.c_int, [Adapter, C.c_size_t, _P(Module)]),
    "lq_adapter_find_module": (C.c_int, [Adapter, C.c_char_p, _P(Module)]),
    "lq_adapter_peft_config": (C.c_int, [Adapter, _P(C.c_char_p)]),
    "lq_write_adapter_file": (C.c_int, [C.c_char_p, _P(Module), C.c_size_t, C.c_char_p]),
    "lq_compress": (C.c_int, [C.c_char_p, C.c_int, C.c_void_p, C.c_void_p, C.c_uint32,
                              C.c_uint32, C.c_uint32, C.c_double, _P(Options), _P(Module)]),
    "lq_module_free": (None, [Module]),
    "lq_module_name": (C.c_int, [Module, _P(C.c_char_p)]),
    "lq_module_shape": (C.c_int, [Module, _u32p, _u32p]),
    "lq_module_rank": (C.c_int, [Module, _u32p]),
    "lq_module_group_size": (C.c_int, [Module, _u32p]),
    "lq_module_widths": (C.c_int, [Module, _u8p, _u8p, C.c_size_t]),
    "lq_module_avg_bits": (C.c_int, [Module, _dp]),
    "lq_module_nbytes": (C.c_int, [Module, _szp]),
    "lq_module_scaling": (C.c_int, [Module, _dp]),
    "lq_module_sigma": (C.c_int, [Module, _f32p, C.c_size_t, _szp]),
    "lq_module_set_origin": (C.c_int, [Module, C.c_double, _f32p, C.c_size_t]),
    "lq_module_apply": (C.c_int, [Module, _f32p, C.c_size_t, C.c_size_t, _f32p, C.c_size_t]),
    "lq_module_dequantize": (C.c_int, [Module, _f32p, C.c_size_t, _f32p, C.c_size_t]),
    "lq_module_probe_norm": (C.c_int, [Module, _dp]),
    "lq_module_to_bytes": (C.c_int, [Module, _u8p, C.c_size_t, _szp]),
    "lq_module_from_bytes": (C.c_int, [C.c_char_p, _u8p, C.c_size_t, _P(Module)]),
}


class CApiError(Exception):
    def __init__(self, fn: str, code: int, message: str):
        super().__init__(f"{fn} returned {code}: {message}")
        self.code, self.message = code, message


def load(path: Path) -> C.CDLL:
    lib = C.CDLL(str(path))
    for name, (res, args) in _SIGNATURES.items():
        f = getattr(lib, name)
        f.restype, f.argtypes = res, args
    return lib


def last_error(lib) -> str:
    return lib.lq_last_error().decode()


def call(lib, fn: str, *args) -> None:
    """Call fn; raise CApiError (code and message) unless it returns LQ_OK."""
    code = getattr(lib, fn)(*args)
    if code != OK:
        raise CApiError(fn, code, last_error(lib))


def f32(a: np.ndarray):
    return a.ctypes.data_as(_f32p)


def u8(b: bytes):
    return C.cast(C.c_char_p(b), _u8p)


def options(lib, **kw) -> Options:
    o = Options()
    call(lib, "lq_options_init", C.byref(o))
    for k, v in kw.items():
        setattr(o, k, v)
    return o


def compress(lib, name: str, A: np.ndarray, B: np.ndarray, scaling: float, opts: Options) -> Module:
    """A (r, n) and B (m, r), float32 or float64, C-contiguous; returns an owned handle."""
    dtype = {np.dtype(np.float32): FLOAT32, np.dtype(np.float64): FLOAT64}[A.dtype]
    A, B = np.ascontiguousarray(A), np.ascontiguousarray(B)
    r, n = A.shape
    m = B.shape[0]
    out = Module()
    call(lib, "lq_compress", name.encode(), dtype, A.ctypes.data, B.ctypes.data, m, n, r,
         scaling, C.byref(opts), C.byref(out))
    return out


def widths(lib, mod: Module) -> list[tuple[int, int]]:
    r = C.c_uint32()
    call(lib, "lq_module_rank", mod, C.byref(r))
    b, a = (C.c_uint8 * r.value)(), (C.c_uint8 * r.value)()
    call(lib, "lq_module_widths", mod, b, a, r.value)
    return list(zip(b, a))


def sigma(lib, mod: Module) -> np.ndarray:
    count = C.c_size_t()
    call(lib, "lq_module_sigma", mod, None, 0, C.byref(count))
    out = np.empty(count.value, dtype=np.float32)
    call(lib, "lq_module_sigma", mod, f32(out), count.value, C.byref(count))
    return out


def to_bytes(lib, mod: Module) -> bytes:
    size = C.c_size_t()
    call(lib, "lq_module_to_bytes", mod, None, 0, C.byref(size))
    buf = (C.c_uint8 * size.value)()
    call(lib, "lq_module_to_bytes", mod, buf, size.value, C.byref(size))
    return bytes(buf)


def write_file(lib, path: Path, modules: list, peft_config: str | None = None) -> None:
    arr = (Module * len(modules))(*modules)
    call(lib, "lq_write_adapter_file", str(path).encode(), arr, len(modules),
         None if peft_config is None else peft_config.encode())
