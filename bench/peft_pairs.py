"""LoRA pairs (A, B, scaling) in and out of PEFT: a live model or a saved adapter folder."""
from __future__ import annotations

import json
import math
from contextlib import contextmanager
from pathlib import Path

import torch

ADAPTER = "default"
LORA_A = ".lora_A.weight"
LORA_B = ".lora_B.weight"


def lora_modules(model) -> dict:
    """{module name: PEFT LoRA layer} of every layer that holds the default adapter."""
    return {name: mod for name, mod in model.named_modules()
            if hasattr(mod, "lora_A") and ADAPTER in getattr(mod, "lora_A", {})}


def pairs_from_model(model) -> dict:
    """{module name: (A (r, n), B (m, r), scaling)} as float32 CPU copies."""
    return {name: (mod.lora_A[ADAPTER].weight.detach().float().clone(),
                   mod.lora_B[ADAPTER].weight.detach().float().clone(),
                   float(mod.scaling[ADAPTER]))
            for name, mod in lora_modules(model).items()}


@contextmanager
def swapped_factors(model, factors: dict):
    """Inside the block, each module computes B_hat @ A_hat (scaling folded, so the
    module's scaling is set to 1); `factors` maps module name -> (A_hat, B_hat).
    The original weights and scalings come back on exit."""
    mods = lora_modules(model)
    missing = set(mods) - set(factors)
    if missing:
        raise KeyError(f"no factors for {len(missing)} modules, e.g. {sorted(missing)[0]}")
    saved = {}
    try:
        for name, (A_hat, B_hat) in factors.items():
            mod = mods[name]
            wa, wb = mod.lora_A[ADAPTER].weight, mod.lora_B[ADAPTER].weight
            saved[name] = (wa.data.clone(), wb.data.clone(), mod.scaling[ADAPTER])
            wa.data.copy_(torch.as_tensor(A_hat, dtype=wa.dtype))
            wb.data.copy_(torch.as_tensor(B_hat, dtype=wb.dtype))
            mod.scaling[ADAPTER] = 1.0
        yield model
    finally:
        for name, (wa, wb, s) in saved.items():
            mod = mods[name]
            mod.lora_A[ADAPTER].weight.data.copy_(wa)
            mod.lora_B[ADAPTER].weight.data.copy_(wb)
            mod.scaling[ADAPTER] = s


def pairs_from_dir(folder) -> dict:
    """{module name: (A, B, scaling)} from a folder written by save_pretrained
    (adapter_config.json and adapter_model.safetensors)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    for key in ("rank_pattern", "alpha_pattern"):
        if cfg.get(key):
            raise NotImplementedError(f"{folder}: {key} is not supported by this reader")
    r, alpha = cfg["r"], cfg["lora_alpha"]
    scaling = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    pairs = {}
    for key in sorted(tensors):
        if key.endswith(LORA_A):
            name = key[: -len(LORA_A)]
            pairs[name] = (tensors[key].float(), tensors[name + LORA_B].float(), scaling)
    return pairs


def adapter_dirs(root) -> list[Path]:
    """Every saved adapter folder below root, sorted."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.parent for p in root.rglob("adapter_config.json"))
