"""Checks of user input at the Python boundary, with errors that name the problem.

Everything that enters the C++ core passes through here first: tensors and arrays
become C-contiguous float64 numpy matrices, options become plain numbers.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

_FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


def _is_torch_tensor(x) -> bool:
    mod = type(x).__module__
    return mod.startswith("torch") and hasattr(x, "detach") and hasattr(x, "dtype")


def to_numpy_f64(x, name: str) -> np.ndarray:
    """Any supported tensor or array -> numpy float64 (a copy where needed)."""
    if _is_torch_tensor(x):
        dt = str(x.dtype).replace("torch.", "")
        if dt not in _FLOAT_DTYPES:
            raise TypeError(f"{name} has unsupported dtype torch.{dt}; "
                            f"use one of {', '.join(_FLOAT_DTYPES)}")
        return x.detach().to(device="cpu").double().numpy()
    if isinstance(x, np.ndarray):
        if x.dtype.name not in _FLOAT_DTYPES:
            raise TypeError(f"{name} has unsupported dtype {x.dtype}; "
                            f"use one of float16, float32, float64")
        return x.astype(np.float64, copy=False)
    raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, "
                    f"got {type(x).__name__}")


def as_matrix(x, name: str) -> np.ndarray:
    """A finite, non-empty 2-D float64 C-contiguous matrix."""
    a = to_numpy_f64(x, name)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(a.shape)}")
    if a.size == 0:
        raise ValueError(f"{name} is empty (shape {tuple(a.shape)})")
    check_finite(a, name)
    return np.ascontiguousarray(a)


def check_finite(a: np.ndarray, name: str) -> None:
    if not np.isfinite(a).all():
        nan = int(np.isnan(a).sum())
        inf = int(np.isinf(a).sum())
        raise ValueError(f"{name} contains {nan} NaN and {inf} Inf values")


def lora_pair(A, B) -> tuple[np.ndarray, np.ndarray]:
    """PEFT's lora_A.weight (r, n) and lora_B.weight (m, r)."""
    a = as_matrix(A, "A")
    b = as_matrix(B, "B")
    if b.shape[1] != a.shape[0]:
        raise ValueError(f"shapes do not chain: B is {tuple(b.shape)} and A is "
                         f"{tuple(a.shape)}; B's columns (rank) must equal A's rows")
    return a, b


def real(x, name: str, lo: float, hi: float, lo_open=True) -> float:
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(x).__name__}")
    v = float(x)
    ok = (v > lo if lo_open else v >= lo) and v <= hi
    if not math.isfinite(v) or not ok:
        left = "(" if lo_open else "["
        raise ValueError(f"{name} must be in {left}{lo:g}, {hi:g}], got {x!r}")
    return v


def integer(x, name: str, lo: int, hi: int) -> int:
    if isinstance(x, bool) or not isinstance(x, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(x).__name__}")
    v = int(x)
    if not lo <= v <= hi:
        raise ValueError(f"{name} must be in {lo}..{hi}, got {v}")
    return v


def finite(x, name: str) -> float:
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(x).__name__}")
    v = float(x)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {x!r}")
    return v
