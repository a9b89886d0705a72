"""Seeded mutation fuzzing of the Python readers: loraquant.load and
QuantizedLoRA.from_bytes.

    python fuzz/python/fuzz_load.py [--seconds 60] [--seed 1] [--crashes DIR]

Seeds are the valid files and blobs of fuzz/make_seeds.py. For every mutated input:
  load          raises FormatError with a message, or returns an adapter; if the
                mutation kept the checksums, every module must equal the original
                (same bytes, and apply gives exactly the same output); otherwise the
                adapter must apply and survive save + load unchanged.
  from_bytes    raises FormatError, or returns a module whose to_bytes() is the input.
With --c-library, the C++ reader (through the C API) must accept exactly the same
files and read the same modules (names, scalings, blobs, singular values) from them.
Any other exception (warnings included), an input that takes over SLOW_SECONDS, or peak memory growing by
more than RSS_GROWTH_MB is a failure: the input goes to --crashes and the exit status
is 1. The same seed always replays the same inputs.
"""
from __future__ import annotations

import argparse
import random
import resource
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np

import loraquant
from loraquant import FormatError, QuantizedLoRA

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import c_reader  # noqa: E402
import make_seeds  # noqa: E402  (fuzz/make_seeds.py)
import mutate  # noqa: E402

SLOW_SECONDS = 2.0
RSS_GROWTH_MB = 256
MAX_DENSE = 1 << 20   # apply only modules with r * (m + n) at most this (as the C++ targets)


class Violation(Exception):
    """An input broke the contract."""


def probe(q: QuantizedLoRA) -> np.ndarray | None:
    m, n = q.shape
    if q.rank * (m + n) > MAX_DENSE or 2 * (m + n) > MAX_DENSE:
        return None
    x = np.sin(np.arange(2 * n, dtype=np.float32) + 0.5).reshape(2, n)
    return q.apply(x)


def same_modules(got, want) -> None:
    if list(got) != list(want):
        raise Violation(f"loaded modules {list(got)[:3]} differ from the original {list(want)[:3]}")
    for name, q in want.items():
        if got[name].to_bytes() != q.to_bytes():
            raise Violation(f"module {name!r} has other bytes than the original")
        if not np.array_equal(probe(got[name]), probe(q)):
            raise Violation(f"module {name!r} applies differently from the original")


def usable(adapter, scratch: Path) -> None:
    for q in adapter.values():
        y = probe(q)
        if y is not None and y.shape != (2, q.shape[0]):
            raise Violation(f"apply returned shape {y.shape}")
    loraquant.save(scratch, adapter)
    again = loraquant.load(scratch)
    for name, q in adapter.items():
        if again[name].to_bytes() != q.to_bytes():
            raise Violation(f"module {name!r} changed through save + load")


def agree(reader, data: bytes, got) -> None:
    """The C++ reader accepts the file exactly when load does, and reads the same."""
    theirs = reader.read(data)
    if isinstance(theirs, str) != (got is None):
        raise Violation("the readers disagree: loraquant.load " +
                        ("refuses the file" if got is None else "accepts the file") +
                        (f", the C++ reader refuses it: {theirs}" if isinstance(theirs, str)
                         else ", the C++ reader accepts it"))
    if got is not None:
        ours = [(name, got.scalings[name], q.to_bytes(), q.singular_values.astype("<f4").tobytes())
                for name, q in got.items()]
        if ours != theirs:
            raise Violation("the readers read different modules from the file")


def check_file(data: bytes, keeps: bool, original, path: Path, reader=None) -> str:
    path.write_bytes(data)
    try:
        got = loraquant.load(path)
    except FormatError as e:
        if str(path) not in str(e) or len(str(e)) <= len(str(path)) + 2:
            raise Violation(f"FormatError without a message naming the file: {e!r}") from None
        got = None
    if reader is not None:
        agree(reader, data, got)
    if got is None:
        return "rejected"
    if keeps:
        same_modules(got, original)
    else:
        usable(got, path.with_suffix(".again"))
    return "accepted"


def check_blob(data: bytes) -> str:
    try:
        q = QuantizedLoRA.from_bytes(data)
    except FormatError as e:
        if not str(e):
            raise Violation("FormatError without a message") from None
        return "rejected"
    if q.to_bytes() != data:
        raise Violation("an accepted blob does not serialise back to the same bytes")
    probe(q)
    return "accepted"


def seeds(directory: Path):
    """(file seeds: [(bytes, CompressedAdapter)], blob seeds: [bytes])."""
    make_seeds.write(directory)
    files = [(p.read_bytes(), loraquant.load(p)) for p in sorted((directory / "adapter").iterdir())]
    blobs = [p.read_bytes() for p in sorted((directory / "blob").iterdir())]
    return files, blobs


def run(seconds: float, seed: int, crashes: Path, c_library: Path | None = None) -> dict:
    warnings.simplefilter("error")  # as pytest runs: a warning is a failure too
    rng = random.Random(seed)
    reader = None if c_library is None else c_reader.CReader(c_library)
    counts = {"rejected": 0, "accepted": 0, "inputs": 0}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files, blobs = seeds(tmp / "seeds")
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if rng.random() < 0.75:
                base, original = rng.choice(files)
                data, desc, keeps = mutate.mutate_file(rng, base)
                target = lambda: check_file(data, keeps, original, tmp / "input.lqa",  # noqa: E731
                                            reader)
            else:
                data, desc, _ = mutate.mutate_blob(rng, rng.choice(blobs))
                target = lambda: check_blob(data)  # noqa: E731
            start = time.monotonic()
            try:
                counts[target()] += 1
                if time.monotonic() - start > SLOW_SECONDS:
                    raise Violation(f"took {time.monotonic() - start:.1f} s")
            except Exception as e:  # every other exception is the finding itself
                save_crash(crashes, counts["inputs"], data, desc, e)
                raise
            counts["inputs"] += 1
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
        if grown > RSS_GROWTH_MB:
            raise Violation(f"peak memory grew by {grown:.0f} MB while fuzzing")
    return counts


def save_crash(crashes: Path, k: int, data: bytes, desc: str, e: Exception) -> None:
    crashes.mkdir(parents=True, exist_ok=True)
    stem = crashes / f"input-{k}"
    stem.with_suffix(".bin").write_bytes(data)
    stem.with_suffix(".txt").write_text(f"mutation: {desc}\n\n{traceback.format_exc()}")
    print(f"FAILED on input {k} ({desc}): {type(e).__name__}: {e}\nsaved as {stem}.bin",
          file=sys.stderr)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--crashes", type=Path, default=Path("fuzz-crashes"))
    p.add_argument("--c-library", type=Path, help="libloraquant_c.so (without sanitizers): "
                   "also check that the C++ reader accepts and reads the same files")
    args = p.parse_args(argv)
    try:
        counts = run(args.seconds, args.seed, args.crashes, args.c_library)
    except Exception:  # reported by save_crash or the Violation text
        traceback.print_exc()
        return 1
    print(f"fuzz_load: {counts['inputs']} inputs, {counts['rejected']} rejected, "
          f"{counts['accepted']} accepted, no failure")
    return 0


if __name__ == "__main__":
    sys.exit(main())
