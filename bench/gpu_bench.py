"""GPU bench of the packed adapter kernels (needs a CUDA build and a GPU; an H200 is the target).

    python bench/gpu_bench.py [--m 4096 --n 4096 --r 16 --bits 2 --reps 30]

Prints tables:
  1. HBM bandwidth measured here: a device-to-device copy (bytes read + written).
  2. apply_one (one adapter, decode batch): time, bytes that must be read (packed
     adapter + x + y read and written), GB/s and share of the measured bandwidth, and
     the time of cuBLAS fp16 on the dequantized adapter (x A^T B^T), with the ratio.
  3. bgmv at 1, 16, 64, 256 distinct adapters (256 tokens, token t uses t mod D):
     the same, against an fp16 BGMV-style baseline (gather A[idx], B[idx], then bmm).
  4. sgmv prefill (tensor cores): 4 segments, against cuBLAS fp16 per segment.
Times are medians over --reps replays of a CUDA graph, timed with CUDA events, so
Python overhead is not counted. The graph cycles over "layers": calls that read other
resident adapters (and other dequantized copies for the baselines), enough of them that
the adapter bytes of one replay exceed twice the L2 cache, so adapters come from HBM as
in a real decode step. x and y are shared by the layers (activations usually come from
L2); the bytes that must be read still count them.
"""
from __future__ import annotations

import argparse
import statistics
import sys

import numpy as np
import torch

import loraquant
from loraquant import _core, cuda_ops


def graph_time_us(fn, calls: int, reps: int) -> float:
    """Median microseconds per call of fn(k), k = 0..calls-1, replayed from one CUDA graph."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for k in range(min(calls, 3)):
            fn(k)  # warm-up, outside the graph
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for k in range(calls):
            fn(k)
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1000.0 / calls)
    return statistics.median(times)


def copy_bandwidth(reps: int) -> float:
    """GB/s of a 2 GiB device-to-device copy, bytes read plus bytes written."""
    src = torch.empty(2 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    us = graph_time_us(lambda k: dst.copy_(src), 1, reps)
    del src, dst
    return 2 * (2 << 30) / (us * 1e-6) / 1e9


def table(title, header, rows):
    print(f"\n{title}")
    widths = [max(len(str(h)), *(len(str(r[k])) for r in rows)) for k, h in enumerate(header)]
    print("  ".join(str(h).rjust(w) for h, w in zip(header, widths)))
    for r in rows:
        print("  ".join(str(v).rjust(w) for v, w in zip(r, widths)))


def make_adapters(args, distinct: int):
    """`distinct` compressed modules of one layer (m, n, r), different random pairs."""
    rng = np.random.default_rng(0)
    pairs = {f"a{k}": (rng.standard_normal((args.r, args.n)) / np.sqrt(args.n),
                       rng.standard_normal((args.m, args.r)), 1.0) for k in range(distinct)}
    return list(loraquant.compress_adapter(pairs, bits=args.bits).values())


def dense(base, copies, dtype):
    """Dequantized A (copies, r_max, n) and B (copies, m, r_max) on the GPU, copy k being
    base[k % len(base)] (zero-padded to r_max), each in its own memory."""
    r = max(q.rank for q in base)
    A = torch.zeros(len(base), r, base[0].shape[1])
    B = torch.zeros(len(base), base[0].shape[0], r)
    for k, q in enumerate(base):
        a, b = q.dequantize()
        A[k, :q.rank] = a
        B[k, :, :q.rank] = b
    pick = torch.arange(copies, device="cuda") % len(base)
    return A.to("cuda", dtype)[pick], B.to("cuda", dtype)[pick]


def layers_for(per_call_bytes: int, l2: int, most: int) -> int:
    """Calls per replay so that the adapters read exceed twice the L2 cache."""
    return max(1, min(most, -(-2 * l2 // max(per_call_bytes, 1))))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--m", type=int, default=4096)
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--r", type=int, default=16)
    p.add_argument("--bits", type=float, default=2.0)
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--copies", type=int, default=4096, help="resident adapters (cycled copies)")
    args = p.parse_args()
    reason = cuda_ops.why_unavailable()
    if reason:
        print(f"gpu_bench: cannot run: {reason}")
        return 1
    dt, es = torch.float16, 2  # activations and baselines in fp16, bytes per element
    m, n = args.m, args.n
    props = torch.cuda.get_device_properties(0)
    l2 = props.L2_cache_size
    print(f"loraquant {loraquant.__version__}, build {loraquant.build_info()}, cuda build {_core.cuda_build()}")
    print(f"device {props.name}, {props.multi_processor_count} SMs, L2 {l2 / 2**20:.0f} MiB, "
          f"torch {torch.__version__}; layer m={m} n={n} r={args.r} bits={args.bits}; "
          f"medians of {args.reps} graph replays")

    bw = copy_bandwidth(args.reps)
    table("1. HBM bandwidth (device-to-device copy)", ["GB/s"], [[f"{bw:.0f}"]])

    base = make_adapters(args, 16)
    qs = [base[k % len(base)] for k in range(args.copies)]  # distinct memory per copy
    reg = cuda_ops.DeviceRegistry(qs)
    A, B = dense(base, args.copies, dt)
    size = round(np.mean([q.nbytes for q in base]))  # packed bytes of one adapter
    dense_size = 2 * args.r * (m + n)
    print(f"\nadapter: {size} packed bytes ({qs[0].avg_bits:.2f} bits/weight), fp16 {dense_size} bytes; "
          f"{args.copies} resident: registry {reg.buffer.numel() / 2**20:.0f} MiB, "
          f"fp16 copies {(A.numel() + B.numel()) * es / 2**20:.0f} MiB")

    # Agreement check, so that the timings are of right answers.
    x = torch.randn(64, n, device="cuda", dtype=dt)
    got = cuda_ops.apply_one(torch.zeros(64, m, device="cuda", dtype=dt), x, reg, 0).float()
    want = (x.float() @ A[0].float().T) @ B[0].float().T
    print(f"max |apply_one - dense| / max |dense| = {(got - want).abs().max().item() / want.abs().max().item():.2e}")

    rows = []
    for tokens in (1, 4, 16, 64):
        x = torch.randn(tokens, n, device="cuda", dtype=dt)
        y = torch.zeros(tokens, m, device="cuda", dtype=dt)
        calls = layers_for(size, l2, args.copies)
        us = graph_time_us(lambda k: cuda_ops.apply_one(y, x, reg, k), calls, args.reps)
        calls_ref = layers_for(dense_size, l2, args.copies)
        us_ref = graph_time_us(lambda k: y.addmm_(x @ A[k].T, B[k].T), calls_ref, args.reps)
        must = size + tokens * n * es + 2 * tokens * m * es
        gbs = must / (us * 1e-6) / 1e9
        rows.append([tokens, calls, f"{us:.2f}", must, f"{gbs:.0f}", f"{100 * gbs / bw:.1f}%",
                     f"{us_ref:.2f}", f"{us_ref / us:.2f}"])
    table("2. apply_one (a): one adapter, decode batch, fp16",
          ["tokens", "layers", "us", "bytes", "GB/s", "of HBM", "cuBLAS fp16 us", "speed-up"], rows)

    rows = []
    tokens = 256
    x = torch.randn(tokens, n, device="cuda", dtype=dt)
    y = torch.zeros(tokens, m, device="cuda", dtype=dt)
    for distinct in (1, 16, 64, 256):
        most = args.copies // distinct
        calls = layers_for(distinct * size, l2, most)
        idxs = [(torch.arange(tokens, device="cuda") % distinct + k * distinct).to(torch.int32)
                for k in range(max(calls, layers_for(distinct * dense_size, l2, most)))]
        us = graph_time_us(lambda k: cuda_ops.bgmv(y, x, reg, idxs[k]), calls, args.reps)
        must = distinct * size + tokens * n * es + 2 * tokens * m * es

        def gather_bmm(k):
            t = torch.bmm(A[idxs[k]], x.unsqueeze(2))
            y.add_(torch.bmm(B[idxs[k]], t).squeeze(2))

        us_ref = graph_time_us(gather_bmm, layers_for(distinct * dense_size, l2, most), args.reps)
        ref_bytes = distinct * dense_size + tokens * n * es + 2 * tokens * m * es
        gbs = must / (us * 1e-6) / 1e9
        rows.append([distinct, calls, f"{us:.2f}", must, f"{gbs:.0f}", f"{100 * gbs / bw:.1f}%",
                     f"{us_ref:.2f}", ref_bytes, f"{us_ref / us:.2f}"])
    table(f"3. bgmv (b): {tokens} tokens, token t uses adapter t mod D, fp16",
          ["D", "layers", "us", "bytes", "GB/s", "of HBM", "gather+bmm fp16 us", "its bytes", "speed-up"], rows)

    rows = []
    segs = 4
    for seg in (64, 512):
        tokens = seg * segs
        x = torch.randn(tokens, n, device="cuda", dtype=dt)
        y = torch.zeros(tokens, m, device="cuda", dtype=dt)
        starts = torch.arange(0, tokens + 1, seg, device="cuda", dtype=torch.int32)
        calls = min(64, args.copies // segs)
        ads = [torch.arange(k * segs, (k + 1) * segs, device="cuda", dtype=torch.int32) for k in range(calls)]
        us = graph_time_us(lambda k: cuda_ops.sgmv(y, x, reg, starts, ads[k], seg), calls, args.reps)

        def per_segment(k):
            for s in range(segs):
                sl = slice(s * seg, (s + 1) * seg)
                y[sl].addmm_(x[sl] @ A[k * segs + s].T, B[k * segs + s].T)

        us_ref = graph_time_us(per_segment, calls, args.reps)
        rows.append([segs, seg, f"{us:.2f}", f"{us_ref:.2f}", f"{us_ref / us:.2f}"])
    table("4. sgmv (c): prefill segments, fp16 (tensor cores from 32 tokens)",
          ["segments", "tokens each", "us", "cuBLAS fp16 us", "speed-up"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
