"""Packed adapters on the GPU: torch custom ops over the CUDA kernels of loraquant._core.

    from loraquant import cuda_ops
    reg = cuda_ops.DeviceRegistry([q0, q1, q2])     # one layer's modules, packed on the GPU
    cuda_ops.bgmv(y, x, reg, idx)                   # y[t] += dW_hat[idx[t]] x[t]; -1: none
    cuda_ops.sgmv(y, x, reg, seg_start, seg_adapter, max_seg_len)
    delta = cuda_ops.apply(q, x)                    # == q.apply(x), on x's GPU

The ops `loraquant::bgmv_add`, `loraquant::sgmv_add` and `loraquant::apply_one_add`
mutate y in place and have fake implementations, so torch.compile traces them. They
are registered on import; importing works without CUDA, and calling them then raises
RuntimeError saying why. This file checks dtypes, shapes and devices once, here; the
C++ launchers take raw pointers.
"""
from __future__ import annotations

import functools
import weakref

import torch

from . import _core

__all__ = ["available", "why_unavailable", "DeviceRegistry", "apply", "apply_one", "bgmv", "sgmv"]

_DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


@functools.lru_cache(maxsize=None)
def why_unavailable() -> str | None:
    """None when the CUDA ops can run here, else the reason (asked once per process)."""
    if not _core.cuda_build()["kernels"]:
        return "this build of loraquant has no CUDA kernels (no nvcc at build time, or LORAQUANT_CUDA=OFF)"
    if not torch.cuda.is_available():
        return f"torch {torch.__version__} sees no CUDA device"
    if _core.cuda_device_count() == 0:
        return "the CUDA runtime in loraquant._core sees no device (driver missing or too old?)"
    return None


def available() -> bool:
    """True when the CUDA kernels are built and a device is visible."""
    return why_unavailable() is None


class DeviceRegistry:
    """One layer's compressed modules (same m and n), resident on a GPU in packed form.

    `modules` are QuantizedLoRA objects (or their `.core`); module k is adapter index k
    of bgmv/sgmv. `buffer` is one uint8 CUDA tensor: descriptors, then the payloads
    verbatim (cuda_desc.h). `info` = (count, m, n, max_live, comps_offset).
    """

    def __init__(self, modules, device=None):
        cores = [getattr(q, "core", q) for q in modules]
        if not cores:
            raise ValueError("DeviceRegistry needs at least one module")
        for k, c in enumerate(cores):
            if not isinstance(c, _core.Module):
                raise TypeError(f"module {k} is a {type(c).__name__}, not a QuantizedLoRA")
        buf, info = _core.cuda_registry(cores)
        self.info = tuple(int(v) for v in info)
        self.device = torch.device("cuda") if device is None else torch.device(device)
        if self.device.type != "cuda":
            raise ValueError(f"DeviceRegistry lives on a CUDA device, got {self.device}")
        self.buffer = torch.from_numpy(buf).to(self.device)

    count = property(lambda self: self.info[0])
    m = property(lambda self: self.info[1])
    n = property(lambda self: self.info[2])
    max_live = property(lambda self: self.info[3])

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return (f"DeviceRegistry(count={self.count}, m={self.m}, n={self.n}, "
                f"max_live={self.max_live}, bytes={self.buffer.numel()}, device={self.device})")


# --- checks at the boundary -------------------------------------------------------

def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def _check_common(y, x, registry, info) -> int:
    """Return the dtype code; raise naming the offending value otherwise."""
    reason = why_unavailable()
    if reason is not None:
        raise RuntimeError(f"loraquant CUDA ops unavailable: {reason}")
    count, m, n = info[0], info[1], info[2]
    for name, t in (("x", x), ("y", y), ("registry", registry)):
        _need(t.is_cuda, f"{name} must be a CUDA tensor, got device {t.device}")
        _need(t.device == x.device, f"{name} is on {t.device}, x on {x.device}")
        _need(t.is_contiguous(), f"{name} must be contiguous")
    _need(x.dtype in _DTYPE_CODE, f"x has dtype {x.dtype}; use float32, float16 or bfloat16")
    _need(y.dtype == x.dtype, f"y has dtype {y.dtype}, x has {x.dtype}: they must match")
    _need(registry.dtype == torch.uint8, f"registry must be uint8, got {registry.dtype}")
    _need(x.dim() == 2 and x.shape[1] == n, f"x has shape {tuple(x.shape)}; expected (tokens, n={n})")
    _need(y.dim() == 2 and y.shape == (x.shape[0], m),
          f"y has shape {tuple(y.shape)}; expected (tokens={x.shape[0]}, m={m})")
    _need(count > 0, "the registry is empty")
    return _DTYPE_CODE[x.dtype]


def _check_index(t, name, length, device) -> None:
    _need(t.is_cuda and t.device == device, f"{name} must be on {device}, got {t.device}")
    _need(t.dtype == torch.int32, f"{name} must be int32, got {t.dtype}")
    _need(t.dim() == 1 and t.shape[0] == length and t.is_contiguous(),
          f"{name} has shape {tuple(t.shape)}; expected ({length},), contiguous")


def _launch_env(x, info):
    """Token count, a workspace and x's current stream; the launch must also run with
    x's device current (the ops below wrap it in torch.cuda.device)."""
    tokens = x.shape[0]
    ws = torch.empty(max(_core.cuda_workspace_bytes(tuple(info), tokens), 4),
                     dtype=torch.uint8, device=x.device)
    return tokens, ws, torch.cuda.current_stream(x.device).cuda_stream


# --- the ops ------------------------------------------------------------------------

@torch.library.custom_op("loraquant::apply_one_add", mutates_args=("y",), device_types="cuda")
def _apply_one_add(y: torch.Tensor, x: torch.Tensor, registry: torch.Tensor, info: list[int],
                   adapter: int) -> None:
    code = _check_common(y, x, registry, info)
    with torch.cuda.device(x.device):
        tokens, ws, stream = _launch_env(x, info)
        _core.cuda_apply_one(registry.data_ptr(), tuple(info), adapter, x.data_ptr(), y.data_ptr(),
                             tokens, code, ws.data_ptr(), stream)


@torch.library.custom_op("loraquant::bgmv_add", mutates_args=("y",), device_types="cuda")
def _bgmv_add(y: torch.Tensor, x: torch.Tensor, registry: torch.Tensor, info: list[int],
              idx: torch.Tensor) -> None:
    code = _check_common(y, x, registry, info)
    _check_index(idx, "idx", x.shape[0], x.device)
    with torch.cuda.device(x.device):
        tokens, ws, stream = _launch_env(x, info)
        _core.cuda_bgmv(registry.data_ptr(), tuple(info), idx.data_ptr(), x.data_ptr(), y.data_ptr(),
                        tokens, code, ws.data_ptr(), stream)


@torch.library.custom_op("loraquant::sgmv_add", mutates_args=("y",), device_types="cuda")
def _sgmv_add(y: torch.Tensor, x: torch.Tensor, registry: torch.Tensor, info: list[int],
              seg_start: torch.Tensor, seg_adapter: torch.Tensor, max_seg_len: int) -> None:
    code = _check_common(y, x, registry, info)
    segments = seg_adapter.shape[0] if seg_adapter.dim() == 1 else -1
    _check_index(seg_adapter, "seg_adapter", segments, x.device)
    _check_index(seg_start, "seg_start", segments + 1, x.device)
    _need(max_seg_len >= 0, f"max_seg_len must be >= 0, got {max_seg_len}")
    with torch.cuda.device(x.device):
        tokens, ws, stream = _launch_env(x, info)
        _core.cuda_sgmv(registry.data_ptr(), tuple(info), seg_start.data_ptr(),
                        seg_adapter.data_ptr(), segments, max_seg_len, x.data_ptr(), y.data_ptr(),
                        tokens, code, ws.data_ptr(), stream)


@_apply_one_add.register_fake
def _(y, x, registry, info, adapter):
    return None


@_bgmv_add.register_fake
def _(y, x, registry, info, idx):
    return None


@_sgmv_add.register_fake
def _(y, x, registry, info, seg_start, seg_adapter, max_seg_len):
    return None


# --- the Python entry points ----------------------------------------------------------

def _need_cuda(x) -> None:
    if not (isinstance(x, torch.Tensor) and x.is_cuda):
        where = x.device if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a CUDA tensor, got {where}; off the GPU use QuantizedLoRA.apply")


def apply_one(y, x, registry: DeviceRegistry, adapter: int = 0):
    """y += x @ dW_hat[adapter]^T for every row of x (tokens, n); returns y."""
    _need_cuda(x)
    torch.ops.loraquant.apply_one_add(y, x, registry.buffer, list(registry.info), int(adapter))
    return y


def bgmv(y, x, registry: DeviceRegistry, idx):
    """y[t] += x[t] @ dW_hat[idx[t]]^T; idx[t] = -1 (or out of range) adds nothing."""
    _need_cuda(x)
    idx = idx.to(device=x.device, dtype=torch.int32).contiguous()
    torch.ops.loraquant.bgmv_add(y, x, registry.buffer, list(registry.info), idx)
    return y


def sgmv(y, x, registry: DeviceRegistry, seg_start, seg_adapter, max_seg_len: int):
    """Segment s = rows [seg_start[s], seg_start[s+1]) adds x @ dW_hat[seg_adapter[s]]^T.

    max_seg_len must be at least the longest segment (it sizes the grid); segments of
    kMmaMinTokens (32) or more rows in fp16/bf16 run on tensor cores. Segments must not
    overlap.
    """
    _need_cuda(x)
    seg_start = seg_start.to(device=x.device, dtype=torch.int32).contiguous()
    seg_adapter = seg_adapter.to(device=x.device, dtype=torch.int32).contiguous()
    torch.ops.loraquant.sgmv_add(y, x, registry.buffer, list(registry.info), seg_start,
                                 seg_adapter, int(max_seg_len))
    return y


_REGISTRIES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _registry_for(q, device) -> DeviceRegistry:
    per_device = _REGISTRIES.setdefault(q, {})
    reg = per_device.get(device)
    if reg is None:
        reg = per_device[device] = DeviceRegistry([q], device)
    return reg


def apply(q, x):
    """x @ dW_hat^T for x of shape (..., n): what q.apply(x) gives, computed on x's device.

    The hook for model integrations: CUDA tensors run the packed kernels (the module is
    uploaded once per device and cached), anything else falls back to q.apply.
    """
    if not (isinstance(x, torch.Tensor) and x.is_cuda):
        return q.apply(x)
    m, n = q.shape
    if x.dim() < 1 or x.shape[-1] != n:
        raise ValueError(f"x has shape {tuple(x.shape)}; its last dimension must be n = {n}")
    if x.dtype not in _DTYPE_CODE:
        raise TypeError(f"x has dtype {x.dtype}; use float32, float16 or bfloat16")
    x2 = x.reshape(-1, n).contiguous()
    y = torch.zeros(x2.shape[0], m, dtype=x.dtype, device=x.device)
    apply_one(y, x2, _registry_for(q, x.device), 0)
    return y.reshape(*x.shape[:-1], m)
