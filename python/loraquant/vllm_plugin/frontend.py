"""Checks in vLLM's front end, before a request reaches the engine.

In vLLM's offline LLM a LoRA adapter that fails to load in the engine process stops
the engine for every request. So the front end checks a .lqa file first: that it
loads (sizes, CRC-32, every field), and that its modules fit the base model's
weights, read from the checkpoint's safetensors headers (no tensor is read). A bad
file then fails its own request with loraquant's one-line message.
"""
from __future__ import annotations

import functools
import glob
import os

from ..peft_io import PREFIX
from .loader import is_packed_path, not_packed_error, packed_only, read_adapter


@functools.lru_cache(maxsize=8)
def base_weight_shapes(model_dir: str) -> dict | None:
    """name -> shape of every tensor in the checkpoint at model_dir (None: not local
    safetensors, so the engine's own check is the only one)."""
    if not os.path.isdir(model_dir):
        return None
    files = sorted(glob.glob(os.path.join(model_dir, "*.safetensors")))
    if not files:
        return None
    from safetensors import safe_open
    shapes = {}
    for f in files:
        with safe_open(f, framework="pt") as st:
            for key in st.keys():
                shapes[key] = tuple(st.get_slice(key).get_shape())
    return shapes


def check_fits_base(adapter, shapes: dict, where: str) -> None:
    """Raise ValueError when a module's update does not fit the base weight it targets."""
    transposed = bool(adapter.peft_config.get("fan_in_fan_out"))
    found = 0
    for name, q in adapter.items():
        key = (name[len(PREFIX):] if name.startswith(PREFIX) else name) + ".weight"
        shape = shapes.get(key)
        if shape is None:
            continue
        found += 1
        want = tuple(q.shape)[::-1] if transposed else tuple(q.shape)
        if tuple(shape) != want:
            raise ValueError(
                f"{where}: module {name!r} is an update of shape {tuple(q.shape)} (out, in) "
                f"but the base model's {key!r} is {tuple(shape)}: is this adapter for "
                f"another base model?")
    if found == 0:
        first = next(iter(adapter))
        raise ValueError(f"{where}: none of its {len(adapter)} modules ({first!r}, ...) names "
                         f"a weight of the base model: is this adapter for another base model?")


@functools.lru_cache(maxsize=256)
def _check(path: str, size: int, mtime_ns: int, model_dir: str | None) -> str | None:
    try:
        adapter = read_adapter(path)
        shapes = base_weight_shapes(model_dir) if model_dir else None
        if shapes is not None:
            check_fits_base(adapter, shapes, f"loraquant: cannot serve {path}")
    except ValueError as e:
        return str(e)
    return None


def check_request_path(path, model_dir: str | None = None) -> None:
    """Raise ValueError with loraquant's message if `path` is a .lqa file that this
    base model cannot serve; directories (vLLM's own adapters) pass through, except
    in packed-only mode."""
    if not is_packed_path(path):
        if packed_only():
            raise not_packed_error(path)
        return
    full = os.path.abspath(os.path.expanduser(path))
    st = os.stat(full)
    err = _check(full, st.st_size, st.st_mtime_ns, model_dir)
    if err is not None:
        raise ValueError(err)
