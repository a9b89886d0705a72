"""Compression speed: loraquant against the full SVD of B @ A (the public code's first step).

    python bench/compress_speed.py            # one 4096 x 4096 pair, then a 7B-shaped adapter
    python bench/compress_speed.py --quick    # smaller, for a smoke run

Both are timed in the same run on the same pairs. The full SVD of all 224 pairs of a
7B-shaped adapter would take most of an hour, so it is timed on one pair of each
shape (median of --svd-repeats) and multiplied by the number of pairs of that shape;
the table says so. Medians, since this machine is noisy.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

import loraquant
from loraquant.synthetic import llama_adapter, make_pair


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def full_svd_time(A, B, repeats: int) -> float:
    """The faster of torch's and numpy's thin SVD of the m x n product (the baseline is
    then the most favourable to the full-SVD route)."""
    At, Bt = torch.from_numpy(A), torch.from_numpy(B)
    t_torch = median_time(lambda: torch.linalg.svd(Bt @ At, full_matrices=False), repeats)
    t_numpy = median_time(lambda: np.linalg.svd(B @ A, full_matrices=False), repeats)
    return min(t_torch, t_numpy)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small shapes, a few seconds")
    p.add_argument("--repeats", type=int, default=9, help="timed compressions per pair")
    p.add_argument("--svd-repeats", type=int, default=3)
    a = p.parse_args(argv)
    hidden, ffn, layers = (1024, 2816, 4) if a.quick else (4096, 11008, 32)
    torch.set_num_threads(2)
    print(f"threads: torch {torch.get_num_threads()}, loraquant build {loraquant.build_info()}")

    A, B = make_pair(hidden, hidden, 16, seed=1)
    loraquant.compress(A, B, bits=2.0)  # warm up
    t_lq = median_time(lambda: loraquant.compress(A, B, bits=2.0), a.repeats)
    t_svd = full_svd_time(A, B, a.svd_repeats)
    print(f"\none pair {hidden} x {hidden}, r = 16 (median of {a.repeats} / {a.svd_repeats})")
    print(f"{'method':<34}{'seconds':>10}{'ratio':>10}")
    print(f"{'full SVD of B @ A (torch/numpy)':<34}{t_svd:10.4f}{1.0:10.1f}")
    print(f"{'loraquant.compress(bits=2)':<34}{t_lq:10.4f}{t_svd / t_lq:10.1f}x faster")

    pairs = llama_adapter(layers=layers, hidden=hidden, ffn=ffn, r=16)
    t0 = time.perf_counter()
    loraquant.compress_adapter(pairs, bits=2.0)
    t_adapter = time.perf_counter() - t0
    shapes: dict = {}
    for name, (A, B, _) in pairs.items():
        shapes.setdefault((B.shape[0], A.shape[1]), []).append(name)
    est = 0.0
    for (m, n), names in shapes.items():
        A, B, _ = pairs[names[0]]
        est += full_svd_time(A, B, a.svd_repeats) * len(names)
    print(f"\nadapter: {len(pairs)} pairs ({layers} layers, hidden {hidden}, ffn {ffn}, r = 16)")
    print(f"{'method':<44}{'seconds':>10}{'ratio':>10}")
    print(f"{'full SVD of every B @ A (est. from 1 per shape)':<44}{est:10.1f}{1.0:10.1f}")
    print(f"{'loraquant.compress_adapter(bits=2)':<44}{t_adapter:10.2f}{est / t_adapter:10.1f}x faster")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
