"""Compression speed: loraquant against the full SVD of B @ A (the public code's first
step) and against the paper's scheme in plain torch on a thin SVD.

    python bench/compress_speed.py            # one 4096 x 4096 pair, then a 7B-shaped adapter
    python bench/compress_speed.py --quick    # smaller, for a smoke run

Everything is timed in the same run on the same pairs. The full SVD of all 224 pairs
of a 7B-shaped adapter would take most of an hour, so it is timed on one pair of each
shape (median of --svd-repeats) and multiplied by the number of pairs of that shape;
the table says so. The plain-torch baseline is what a careful user writes in an
afternoon: bench/paper_method.py's paper_method with svd="qr" (QR of both factors, an
r x r SVD, float64), rho 0.9, 2-bit min/max RTN head and sign tail in groups of 128,
no refinement. It and compress_adapter alternate, --adapter-repeats times each.
Medians, since this machine is noisy.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

import loraquant
from loraquant.synthetic import llama_adapter, make_pair
from paper_method import paper_method  # bench/, next to this file


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
    p.add_argument("--adapter-repeats", type=int, default=5,
                   help="timed runs of compress_adapter and of the plain-torch scheme")
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
    tpairs = [(torch.from_numpy(A), torch.from_numpy(B), sc) for A, B, sc in pairs.values()]

    def plain_torch():
        for A, B, sc in tpairs:
            paper_method(A, B, sc, rho=0.9, high_bits=2, refine=None, svd="qr")

    t_lq_runs, t_torch_runs = [], {1: [], 2: []}
    for _ in range(a.adapter_repeats):  # alternate, so that all see the same load
        for threads, runs in t_torch_runs.items():
            torch.set_num_threads(threads)
            runs.append(median_time(plain_torch, 1))
        torch.set_num_threads(2)
        t_lq_runs.append(median_time(lambda: loraquant.compress_adapter(pairs, bits=2.0), 1))
    # the baseline runs with 1 or 2 torch threads, whichever was faster (on a busy
    # machine a second thread can make small torch kernels much slower)
    t_adapter = statistics.median(t_lq_runs)
    torch_threads = min(t_torch_runs, key=lambda k: statistics.median(t_torch_runs[k]))
    t_torch = statistics.median(t_torch_runs[torch_threads])
    shapes: dict = {}
    for name, (A, B, _) in pairs.items():
        shapes.setdefault((B.shape[0], A.shape[1]), []).append(name)
    est = 0.0
    for (m, n), names in shapes.items():
        A, B, _ = pairs[names[0]]
        est += full_svd_time(A, B, a.svd_repeats) * len(names)
    print(f"\nadapter: {len(pairs)} pairs ({layers} layers, hidden {hidden}, ffn {ffn}, r = 16), "
          f"median of {a.adapter_repeats}")
    print(f"{'method':<52}{'seconds':>10}{'ratio':>10}")
    print(f"{'full SVD of every B @ A (est. from 1 per shape)':<52}{est:10.1f}{1.0:10.1f}")
    label = f"plain torch ({torch_threads} thr): paper scheme, thin SVD"
    print(f"{label:<52}{t_torch:10.2f}{est / t_torch:10.1f}x faster")
    print(f"{'loraquant.compress_adapter(bits=2)':<52}{t_adapter:10.2f}{est / t_adapter:10.1f}x faster")
    print(f"\nper pair: loraquant is {t_svd / t_lq:.0f}x faster than the full SVD (goal >= 1000x)")
    print(f"adapter: loraquant takes {t_adapter / t_torch:.2f}x the plain-torch time (goal <= 1.5x)")
    print(f"  runs, seconds: loraquant {' '.join(f'{t:.2f}' for t in t_lq_runs)}; "
          + "; ".join(f"plain torch {k} thr " + " ".join(f"{t:.2f}" for t in v)
                      for k, v in t_torch_runs.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
