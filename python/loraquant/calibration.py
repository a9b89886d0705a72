"""Calibration statistics of a base model: the second moment of every linear layer's input.

A served LoRA module sees the base model's hidden states x, and the error that reaches
its output is |(s B A - B_hat A_hat) x|. Over a calibration set that is
|(s B A - B_hat A_hat) L|_F with L L^T = H = E[x x^T]. calibrate() measures H once per
base model; compress_adapter / compress_peft(calibration=...) then split, allocate and
re-fit in that metric, for every adapter of that base. The packed format is unchanged.

File (.lqc): a safetensors container. Each module holds one F32 tensor named
"H.<module path>" of shape (n, n), H = sum(x x^T) / tokens, accumulated in float64.
__metadata__ (all strings):
  format          "loraquant-calibration"
  format_version  "1"
  modules         JSON list of {"name": PEFT module path, "n": in features, "tokens": int}
  base            the base model's name or path (informational)
  data_crc32      CRC-32 of the whole data section, 8 lowercase hex digits
Anything else is a FormatError (a ValueError) naming the problem.
"""
from __future__ import annotations

import json
import os
import zlib

import numpy as np

from . import _safetensors_file as st
from ._core import FormatError

FORMAT = "loraquant-calibration"
FORMAT_VERSION = "1"
#: PEFT wraps the base model twice: PeftModel.base_model (LoraModel) .model (the base)
PEFT_PREFIX = "base_model.model."
TENSOR_PREFIX = "H."


def _base_name(name: str) -> str:
    return name[len(PEFT_PREFIX):] if name.startswith(PEFT_PREFIX) else name


class Calibration:
    """Per module (PEFT path, e.g. "base_model.model.model.layers.0.self_attn.q_proj"):
    the n x n second moment of its input, and the token count behind it."""

    def __init__(self, moments: dict, tokens: dict, base: str = ""):
        self.moments = {}
        self.tokens = {}
        for name, h in moments.items():
            h = np.ascontiguousarray(np.asarray(h, dtype=np.float32))
            if h.ndim != 2 or h.shape[0] != h.shape[1] or h.shape[0] == 0:
                raise ValueError(f"module {name!r}: second moment must be n x n, got {h.shape}")
            key = PEFT_PREFIX + _base_name(name)
            self.moments[key] = h
            self.tokens[key] = int(tokens[name])
        self.base = str(base)

    def __len__(self) -> int:
        return len(self.moments)

    def __repr__(self) -> str:
        return f"Calibration({len(self)} modules, base={self.base!r})"

    def moment(self, name: str):
        """H (float64, n x n) of the module at PEFT path `name` (or its base-model
        path), or None when the statistics do not cover it."""
        h = self.moments.get(PEFT_PREFIX + _base_name(name))
        return None if h is None else h.astype(np.float64)

    # --- file --------------------------------------------------------------------
    def save(self, path) -> None:
        """Write the .lqc file atomically (temporary file, fsync, rename)."""
        from .adapter_file import _atomic_write
        tensors = [st.Tensor(TENSOR_PREFIX + name, "F32", h.shape, h.astype("<f4").tobytes(), 4)
                   for name, h in self.moments.items()]
        ordered = st.layout(tensors)
        crc = 0
        for t in ordered:
            crc = zlib.crc32(t.data, crc)
        modules = [{"name": name, "n": int(h.shape[0]), "tokens": self.tokens[name]}
                   for name, h in self.moments.items()]
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "base": self.base,
                "modules": json.dumps(modules), "data_crc32": f"{crc:08x}"}
        _atomic_write(os.fspath(path), [st.encode_header(ordered, meta)] + [t.data for t in ordered])

    @classmethod
    def load(cls, path) -> "Calibration":
        """Read a .lqc file; FormatError (naming the file and the problem) if it is bad."""
        from .adapter_file import _open_regular_file
        path = os.fspath(path)
        with _open_regular_file(path) as f:
            size = os.fstat(f.fileno()).st_size
            try:
                return cls._read(f, size)
            except FormatError as e:
                raise FormatError(f"{path}: {e}") from None

    @classmethod
    def _read(cls, f, size: int) -> "Calibration":
        entries, meta, data_start = st.read_header(f, size)
        if meta.get("format") != FORMAT:
            raise FormatError(f"not a loraquant calibration file: metadata 'format' is "
                              f"{meta.get('format')!r}, expected {FORMAT!r}")
        if meta.get("format_version") != FORMAT_VERSION:
            raise FormatError(f"format_version {meta.get('format_version')!r} is not supported; "
                              f"this loraquant reads version {FORMAT_VERSION!r}")
        from .adapter_file import _crc_text
        crc_text = _crc_text(meta, "data_crc32")
        modules = st.parse_json(meta.get("modules", ""), "metadata 'modules'")
        if not isinstance(modules, list) or not modules:
            raise FormatError("metadata 'modules' must be a non-empty JSON list")
        data = st.read_data(f, size, data_start, crc_text)
        moments, tokens, seen = {}, {}, set()
        for k, m in enumerate(modules):
            if (not isinstance(m, dict) or not isinstance(m.get("name"), str)
                    or not _count(m.get("n")) or not _count(m.get("tokens"))):
                raise FormatError(f"metadata 'modules' entry {k} must be "
                                  f"{{name: str, n: int > 0, tokens: int > 0}}")
            name, n = m["name"], m["n"]
            e = entries.get(TENSOR_PREFIX + name)
            if e is None or e.dtype != "F32" or tuple(e.shape) != (n, n):
                raise FormatError(f"module {name!r}: expected an F32 tensor "
                                  f"{TENSOR_PREFIX + name!r} of shape ({n}, {n})")
            h = np.frombuffer(data, dtype="<f4", count=n * n, offset=e.begin).reshape(n, n)
            if not np.isfinite(h).all():
                raise FormatError(f"module {name!r}: second moment holds NaN or Inf")
            moments[name], tokens[name] = h.astype(np.float32), m["tokens"]
            seen.add(TENSOR_PREFIX + name)
        extra = sorted(set(entries) - seen)
        if extra:
            raise FormatError(f"tensors {extra[:3]} belong to no listed module")
        return cls(moments, tokens, base=meta.get("base", ""))


def _count(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x > 0


# --- collecting ----------------------------------------------------------------------

def _linear_inputs(model):
    """(path, layer, in features) of every layer a LoRA can target: nn.Linear and
    transformers' Conv1D (GPT-2), whose weight is (in, out). In a model that already
    holds PEFT LoRA layers, the wrapped base layer counts under the wrapper's path and
    the LoRA factors' own Linear layers do not count (run it with the adapter disabled)."""
    import torch
    out = []
    for name, mod in model.named_modules():
        parts = name.split(".")
        if any(p.startswith("lora_") for p in parts):
            continue
        if parts[-1] == "base_layer":
            name = ".".join(parts[:-1])
        if isinstance(mod, torch.nn.Linear):
            out.append((name, mod, mod.in_features))
        elif type(mod).__name__ == "Conv1D" and getattr(mod, "weight", None) is not None \
                and mod.weight.ndim == 2:
            out.append((name, mod, mod.weight.shape[0]))
    return out


def calibrate(model, batches, *, progress=True, base="") -> Calibration:
    """Run the base model `model` (a torch module, e.g. a transformers model) on every
    batch of `batches` (LongTensor input_ids, or dicts of tensors passed as keyword
    arguments) and return the second moment of the input of each of its linear layers.
    Depends on the base model only: compute it once, use it for every adapter."""
    import torch
    layers = _linear_inputs(model)
    if not layers:
        raise ValueError("the model has no nn.Linear or Conv1D layer to calibrate")
    sums = {name: torch.zeros(n, n, dtype=torch.float64) for name, _, n in layers}
    counts = {name: 0 for name, _, _ in layers}

    def hook_for(name):
        def hook(_mod, args, kwargs=None):
            x = args[0] if args else next(iter((kwargs or {}).values()))
            x = x.detach().reshape(-1, x.shape[-1]).to("cpu", torch.float64)
            sums[name].addmm_(x.T, x)
            counts[name] += x.shape[0]
        return hook

    handles = [mod.register_forward_pre_hook(hook_for(name)) for name, mod, _ in layers]
    try:
        from ._api import _progress
        total = len(batches) if hasattr(batches, "__len__") else None
        bar = _progress(total, progress, desc="calibrating", unit="batch")
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for batch in batches:
                    if isinstance(batch, dict):
                        model(**batch)
                    else:
                        model(input_ids=batch)
                    bar.update(1)
        finally:
            bar.close()
            model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    seen = {name: sums[name] / counts[name] for name in sums if counts[name] > 0}
    if not seen:
        raise ValueError("no batch reached the model's linear layers (empty batches?)")
    if not base:
        base = getattr(getattr(model, "config", None), "_name_or_path", "") or ""
    return Calibration({k: v.numpy() for k, v in seen.items()},
                       {k: counts[k] for k in seen}, base=base)


def output_error(A, B, scaling, A_hat, B_hat, H) -> float:
    """|(s B A - B_hat A_hat) L|_F / |s B A L|_F with L L^T = H: the relative error that
    reaches the layer's output over the calibration inputs (float64, never forming m x n)."""
    A, B, Ah, Bh, H = (np.asarray(t, dtype=np.float64) for t in (A, B, A_hat, B_hat, H))
    P = np.concatenate([scaling * B, -Bh], axis=1)     # m x 2r
    Q = np.concatenate([A, Ah], axis=0)                # 2r x n
    G = (P.T @ P) * (Q @ H @ Q.T)
    r = A.shape[0]
    num = max(0.0, float(G.sum()))
    den = float(G[:r, :r].sum())
    return float(np.sqrt(num / den)) if den > 0 else (0.0 if num == 0 else float("inf"))
