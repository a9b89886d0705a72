"""Synthetic LoRA adapters with realistic spectra, for the demo, tests and benchmarks.

A trained LoRA update B @ A has a few strong directions and a decaying tail, and its
factors are not orthogonal. make_pair builds such a pair: U diag(s) V^T with s_i
decaying as decay^i (times a power-law factor), then mixed by a random r x r matrix so
that B and A are not the SVD factors themselves.
"""
from __future__ import annotations

import numpy as np

#: (name, out features m, in features n) of one LLaMA-style decoder layer
LLAMA_MODULES = (("q_proj", "h", "h"), ("k_proj", "h", "h"), ("v_proj", "h", "h"),
                 ("o_proj", "h", "h"), ("gate_proj", "f", "h"), ("up_proj", "f", "h"),
                 ("down_proj", "h", "f"))


def make_pair(m: int, n: int, r: int, *, decay: float = 0.85, scale: float = 0.02,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(A (r, n), B (m, r)) in float32, as PEFT stores lora_A and lora_B."""
    rng = np.random.default_rng(seed)
    k = min(m, n, r)
    U, _ = np.linalg.qr(rng.standard_normal((m, k)))
    V, _ = np.linalg.qr(rng.standard_normal((n, k)))
    s = scale * decay ** np.arange(k) / np.sqrt(1 + np.arange(k))
    mix = rng.standard_normal((r, r)) / np.sqrt(r) + np.eye(r)
    core = np.zeros((r, r))
    core[:k, :k] = np.diag(s)
    B = np.zeros((m, r))
    B[:, :k] = U
    A = np.zeros((r, n))
    A[:k] = V.T
    B = B @ core @ mix
    A = np.linalg.solve(mix, A)
    return A.astype(np.float32), B.astype(np.float32)


def llama_adapter(layers: int = 32, hidden: int = 4096, ffn: int = 11008, r: int = 16,
                  seed: int = 0, alpha: float = 32.0) -> dict:
    """{name: (A, B, scaling)} for every linear of a LLaMA-shaped model (7B by default:
    32 layers x 7 modules = 224 pairs). Spectra differ by module and layer."""
    dims = {"h": hidden, "f": ffn}
    rng = np.random.default_rng(seed)
    out = {}
    for layer in range(layers):
        for k, (name, mo, mi) in enumerate(LLAMA_MODULES):
            decay = float(rng.uniform(0.7, 0.95))
            scale = float(rng.uniform(0.005, 0.03))
            A, B = make_pair(dims[mo], dims[mi], r, decay=decay, scale=scale,
                             seed=seed * 100003 + layer * 16 + k)
            out[f"model.layers.{layer}.{name}"] = (A, B, alpha / r)
    return out
