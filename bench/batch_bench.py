"""Batch compression (`loraquant batch`): seconds per adapter and bytes before/after.

    python bench/batch_bench.py                  # 16 small adapters, every mode, 3 runs each
    python bench/batch_bench.py --quick          # 4 adapters, 1 run each: a smoke run
    python bench/batch_bench.py --shape 7b -n 2 --modes 1-worker --repeats 1

The adapters are synthetic PEFT folders (loraquant.synthetic.llama_adapter: float16
lora_A/lora_B, r = 16, the 7 linear modules of every layer, adapter_config.json),
nested two levels deep. Modes:

  1-worker     compress_many(workers=1): one adapter after another
  2-threads    compress_many(workers=2): two adapters at once on threads, one thread each
  2-processes  the same jobs (batch.run_job) on a spawned pool of 2 processes, for
               comparison: what compress_many would cost with processes
  ray-local    compress_many(ray="local", workers=2): Ray tasks on a local cluster of
               2 CPUs, started and stopped inside the timed run; the start and stop
               alone are timed too, and the table also gives the cost without them
  resume       compress_many over an OUT where every output is up to date: what a
               rerun pays per adapter to check (load and CRC) and skip

Every mode but resume writes into a fresh OUT, so each adapter is compressed. Times
are medians of --repeats runs (this machine is shared and noisy).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from safetensors.torch import save_file

import loraquant
from loraquant import batch
from loraquant.synthetic import LLAMA_MODULES, llama_adapter

SHAPES = {  # name -> (layers, hidden, ffn)
    "small": (4, 1024, 2816),
    "7b": (32, 4096, 11008),
}
MODES = ("1-worker", "2-threads", "2-processes", "ray-local", "resume")
RANK, ALPHA = 16, 32


def write_hub(root: Path, n: int, shape: str) -> None:
    """n PEFT adapter folders under root: root/team<k>/adapter<i>."""
    layers, hidden, ffn = SHAPES[shape]
    config = {"peft_type": "LORA", "r": RANK, "lora_alpha": ALPHA,
              "target_modules": [m for m, _, _ in LLAMA_MODULES],
              "base_model_name_or_path": f"synthetic-llama-{shape}"}
    for i in range(n):
        folder = root / f"team{i % 4}" / f"adapter{i}"
        folder.mkdir(parents=True)
        pairs = llama_adapter(layers=layers, hidden=hidden, ffn=ffn, r=RANK, seed=i,
                              alpha=ALPHA)
        tensors = {}
        for name, (A, B, _) in pairs.items():
            key = f"base_model.model.{name}"
            tensors[f"{key}.lora_A.weight"] = torch.from_numpy(A).half()
            tensors[f"{key}.lora_B.weight"] = torch.from_numpy(B).half()
        save_file(tensors, str(folder / "adapter_model.safetensors"))
        (folder / "adapter_config.json").write_text(json.dumps(config))


def on_processes(hub: Path, out: Path, workers: int) -> loraquant.BatchReport:
    jobs = batch.plan(hub, out, threads=max(1, batch.cpus() // workers))
    out.mkdir(parents=True, exist_ok=True)
    report = loraquant.BatchReport()
    ctx = multiprocessing.get_context("spawn")  # fork after torch and OpenMP is unsafe
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        for outcome in pool.map(batch.run_job, jobs):
            report.add(outcome)
    return report


def run_mode(mode: str, hub: Path, out: Path) -> loraquant.BatchReport:
    if mode == "1-worker" or mode == "resume":
        return loraquant.compress_many(hub, out, workers=1)
    if mode == "2-threads":
        return loraquant.compress_many(hub, out, workers=2)
    if mode == "2-processes":
        return on_processes(hub, out, 2)
    if mode == "ray-local":
        return loraquant.compress_many(hub, out, ray="local", workers=2)
    raise ValueError(mode)


def ray_overhead(repeats: int) -> float:
    """Seconds to start and stop the local cluster that ray-local uses, median."""
    import ray

    from loraquant import ray_batch

    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        ray_batch.connect(ray, ray_batch.LOCAL, 2)
        ray.shutdown()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def timed(mode: str, hub: Path, work: Path, repeats: int, n: int):
    """(median seconds, the last report)."""
    times, report = [], None
    for k in range(repeats):
        out = work / "out-resume" if mode == "resume" else work / f"out-{mode}-{k}"
        t0 = time.perf_counter()
        report = run_mode(mode, hub, out)
        times.append(time.perf_counter() - t0)
        expected = report.skipped if mode == "resume" else report.done
        if len(expected) != n or report.failed:
            raise RuntimeError(f"{mode}: {len(report.done)} done, {len(report.skipped)} "
                               f"skipped, {[o.error for o in report.failed]} failed")
        if mode != "resume":
            shutil.rmtree(out)
    return statistics.median(times), report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=16, help="adapters (default 16)")
    p.add_argument("--shape", choices=sorted(SHAPES), default="small")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {MODES}")
    p.add_argument("--quick", action="store_true", help="4 adapters, 1 run each")
    a = p.parse_args(argv)
    if a.quick:
        a.n, a.repeats = 4, 1
    modes = a.modes.split(",")
    layers, hidden, ffn = SHAPES[a.shape]
    print(f"{a.n} adapters: {layers} layers x 7 modules, hidden {hidden}, ffn {ffn}, r = "
          f"{RANK}, float16; {batch.cpus()} CPUs; median of {a.repeats}; "
          f"loraquant {loraquant.__version__}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="lq-batch-bench-") as tmp:
        work = Path(tmp)
        hub = work / "hub"
        write_hub(hub, a.n, a.shape)
        if "resume" in modes:
            loraquant.compress_many(hub, work / "out-resume")
        for mode in modes:
            seconds, report = timed(mode, hub, work, a.repeats, a.n)
            rows.append((mode, seconds, report))
            if mode == "ray-local":
                overhead = ray_overhead(a.repeats)
                rows.append(("ray-local minus start/stop", seconds - overhead, report))
    print(f"\n{'mode':<28}{'wall s':>9}{'s/adapter':>11}{'before MiB':>12}{'after MiB':>11}"
          f"{'ratio':>8}")
    for mode, seconds, report in rows:
        before, after = report.bytes_before / 2 ** 20, report.bytes_after / 2 ** 20
        print(f"{mode:<28}{seconds:9.2f}{seconds / a.n:11.3f}{before:12.2f}{after:11.2f}"
              f"{before / after:8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
