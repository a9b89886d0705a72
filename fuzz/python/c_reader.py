"""The C++ reader of the adapter file, through the C API (cpp/include/loraquant/c_api.h),
for differential fuzzing: loraquant.load and parse_adapter must accept the same files
and read the same modules from them."""
from __future__ import annotations

import ctypes as C

_u8p, _szp = C.POINTER(C.c_uint8), C.POINTER(C.c_size_t)
_SIGNATURES = {
    "lq_last_error": (C.c_char_p, []),
    "lq_adapter_from_memory": (C.c_int, [_u8p, C.c_size_t, C.POINTER(C.c_void_p)]),
    "lq_adapter_free": (None, [C.c_void_p]),
    "lq_adapter_module_count": (C.c_int, [C.c_void_p, _szp]),
    "lq_adapter_module": (C.c_int, [C.c_void_p, C.c_size_t, C.POINTER(C.c_void_p)]),
    "lq_module_free": (None, [C.c_void_p]),
    "lq_module_name": (C.c_int, [C.c_void_p, C.POINTER(C.c_char_p)]),
    "lq_module_scaling": (C.c_int, [C.c_void_p, C.POINTER(C.c_double)]),
    "lq_module_to_bytes": (C.c_int, [C.c_void_p, _u8p, C.c_size_t, _szp]),
    "lq_module_sigma": (C.c_int, [C.c_void_p, C.POINTER(C.c_float), C.c_size_t, _szp]),
}


class CReader:
    def __init__(self, path):
        self.lib = C.CDLL(str(path))
        for name, (res, args) in _SIGNATURES.items():
            getattr(self.lib, name).restype = res
            getattr(self.lib, name).argtypes = args

    def _ok(self, code: int) -> None:
        if code != 0:
            raise RuntimeError(f"C API error {code}: {self.lib.lq_last_error().decode()}")

    def read(self, data: bytes):
        """[(name, scaling, module bytes, singular values as float32 bytes)] in file
        order, or the error message (a str) if the file is refused."""
        buf = (C.c_uint8 * max(1, len(data))).from_buffer_copy(data or b"\0")
        adapter = C.c_void_p()
        if self.lib.lq_adapter_from_memory(buf, len(data), C.byref(adapter)) != 0:
            return self.lib.lq_last_error().decode()
        try:
            count = C.c_size_t()
            self._ok(self.lib.lq_adapter_module_count(adapter, C.byref(count)))
            return [self._module(adapter, k) for k in range(count.value)]
        finally:
            self.lib.lq_adapter_free(adapter)

    def _module(self, adapter, k: int):
        mod = C.c_void_p()
        self._ok(self.lib.lq_adapter_module(adapter, k, C.byref(mod)))
        try:
            name, scaling, size = C.c_char_p(), C.c_double(), C.c_size_t()
            self._ok(self.lib.lq_module_name(mod, C.byref(name)))
            self._ok(self.lib.lq_module_scaling(mod, C.byref(scaling)))
            self._ok(self.lib.lq_module_to_bytes(mod, None, 0, C.byref(size)))
            out = (C.c_uint8 * size.value)()
            self._ok(self.lib.lq_module_to_bytes(mod, out, size.value, C.byref(size)))
            count = C.c_size_t()
            self._ok(self.lib.lq_module_sigma(mod, None, 0, C.byref(count)))
            sigma = (C.c_float * count.value)()
            self._ok(self.lib.lq_module_sigma(mod, sigma, count.value, C.byref(count)))
            return name.value.decode(), scaling.value, bytes(out), bytes(sigma)
        finally:
            self.lib.lq_module_free(mod)
