"""`loraquant demo`: compress a small synthetic LLaMA-shaped adapter and report.

Prints, for a few budgets, the honest bits per weight (every stored byte counted), the
size against fp16, the relative error of the weight update, and the time taken; then
checks that the packed CPU kernel agrees with the dequantized matrices.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from ._api import compress_adapter
from .synthetic import llama_adapter


def _relative_error(pairs, out) -> float:
    num = den = 0.0
    for name, (A, B, s) in pairs.items():
        norm2 = float(np.sum((s * (B.astype(np.float64) @ A.astype(np.float64))) ** 2))
        num += out[name].rel_error ** 2 * norm2
        den += norm2
    return (num / den) ** 0.5


def run(layers: int = 4, hidden: int = 1024, ffn: int = 2816, r: int = 16,
        budgets=(1.5, 2.0, 2.5, 3.0)) -> list[dict]:
    pairs = llama_adapter(layers=layers, hidden=hidden, ffn=ffn, r=r)
    weights = sum(A.size + B.size for A, B, _ in pairs.values())
    print(f"synthetic adapter: {len(pairs)} modules, {layers} layers, hidden {hidden}, "
          f"ffn {ffn}, r {r}: {weights:,} weights, {2 * weights / 2**20:.2f} MiB at fp16")
    rows = []
    header = f"{'mode':>12} {'bits/weight':>11} {'size KiB':>9} {'vs fp16':>8} {'rel error':>9} {'time s':>7}"
    print(header)
    print("-" * len(header))
    settings = [("budget", dict(bits=b)) for b in budgets] + [("paper 2@0.9", dict(rho=0.9))]
    for label, kw in settings:
        t0 = time.perf_counter()
        out = compress_adapter(pairs, **kw)
        dt = time.perf_counter() - t0
        nbytes = sum(q.nbytes for q in out.values())
        bits = 8 * nbytes / weights
        err = _relative_error(pairs, out)
        name = f"{label} {kw['bits']:g}" if "bits" in kw else label
        print(f"{name:>12} {bits:11.3f} {nbytes / 1024:9.1f} {2 * weights / nbytes:7.1f}x "
              f"{err:9.4f} {dt:7.2f}")
        rows.append(dict(mode=name, bits=bits, nbytes=nbytes, rel_error=err, seconds=dt))
    q = out[next(iter(out))]
    x = np.random.default_rng(0).standard_normal((4, q.shape[1])).astype(np.float32)
    A_hat, B_hat = q.dequantize()
    want = x @ (np.asarray(B_hat) @ np.asarray(A_hat)).T
    diff = float(np.abs(q.apply(x) - want).max() / np.abs(want).max())
    print(f"packed CPU kernel vs dequantized matmul: max relative difference {diff:.2e}")
    return rows


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layers", type=int, default=4, help="decoder layers (default 4)")
    p.add_argument("--hidden", type=int, default=1024, help="hidden size (default 1024)")
    p.add_argument("--ffn", type=int, default=2816, help="MLP size (default 2816)")
    p.add_argument("--rank", type=int, default=16, help="LoRA rank (default 16)")


def run_args(a) -> int:
    for key in ("layers", "hidden", "ffn", "rank"):
        if getattr(a, key) < 1:
            raise ValueError(f"--{key} must be at least 1, got {getattr(a, key)}")
    run(layers=a.layers, hidden=a.hidden, ffn=a.ffn, r=a.rank)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="loraquant demo", description=__doc__.splitlines()[0])
    add_arguments(p)
    return run_args(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
