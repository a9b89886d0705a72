"""Write the seed corpora of the fuzz targets: valid inputs of several shapes.

    python fuzz/make_seeds.py OUT_DIR

OUT_DIR/blob/      module blobs (QuantizedLoRA.to_bytes) for lq_fuzz_blob
OUT_DIR/compress/  option and value bytes for lq_fuzz_compress (fuzz/cpp/compress_target.cpp)
OUT_DIR/adapter/   adapter files (loraquant.save) for the adapter-file parsers, and the
                   version-1 file of tests/data (loraquant.save no longer writes one)

Everything is deterministic, so the seeds are never committed: every run regenerates them.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np

import loraquant

V1_FILE = Path(__file__).resolve().parents[1] / "tests" / "data" / "adapter-v1.lqa"

# (m, n, r, options): awkward sizes, every group regime, both modes, widths 1 to 8 and
# dropped components. Paper mode for the smallest: their budget would drop everything.
SHAPES = [
    (1, 1, 1, dict(rho=1.0, high_bits=8, group_size=1)),
    (3, 5, 2, dict(rho=0.5, high_bits=5, group_size=4)),
    (17, 9, 4, dict(bits=6.0)),
    (64, 33, 6, dict(bits=2.5, group_size=32)),
    (130, 7, 3, dict(bits=4.0, group_size=1 << 20)),
    (40, 23, 5, dict(rho=0.9, high_bits=3, group_size=8)),
]


def pair(seed: int, m: int, n: int, r: int):
    g = np.random.default_rng(seed)
    return g.standard_normal((r, n)), g.standard_normal((m, r)) * np.linspace(1, 0.1, r)


def modules() -> dict:
    """One compressed module per shape, named as PEFT names them."""
    return {f"base_model.model.layers.{i}.proj": loraquant.compress(*pair(i, m, n, r), **kw)
            for i, (m, n, r, kw) in enumerate(SHAPES)}


def adapters(mods: dict) -> dict:
    """File name -> (modules, extras) of a few adapter files."""
    import torch

    names = list(mods)
    extras = {"base_model.model.layers.0.proj.lora_B.bias": torch.arange(1, dtype=torch.float16),
              "base_model.model.lm_head.weight": torch.ones(2, 3, dtype=torch.bfloat16),
              "empty": torch.zeros(0, 4), "flag": torch.tensor([True])}
    return {"one.lqa": ({names[2]: mods[names[2]]}, {}),
            "all.lqa": (mods, {}),
            "extras.lqa": ({n: mods[n] for n in names[:3]}, extras)}


def compress_seeds() -> dict:
    """Bytes for compress_target.cpp: 10 option bytes, then int8 entries."""
    g = np.random.default_rng(7)
    out = {}
    for k, head in enumerate([[16, 8, 3, 10, 2, 24, 0, 0, 0, 0], [4, 30, 7, 2, 3, 230, 1, 250, 5, 8],
                              [39, 1, 0, 255, 6, 40, 0, 120, 136, 0], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]]):
        body = g.integers(0, 256, size=64 + 40 * k, dtype=np.uint8).tobytes()
        out[f"c{k}.bin"] = bytes(head) + body
    return out


def write(out: Path) -> None:
    mods = modules()
    for sub in ("blob", "compress", "adapter"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for i, q in enumerate(mods.values()):
        (out / "blob" / f"b{i}.bin").write_bytes(q.to_bytes())
    for name, data in compress_seeds().items():
        (out / "compress" / name).write_bytes(data)
    for name, (ms, extras) in adapters(mods).items():
        loraquant.save(out / "adapter" / name, ms, extras=extras,
                       peft_config={"peft_type": "LORA", "r": 8})
    shutil.copyfile(V1_FILE, out / "adapter" / "version1.lqa")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python fuzz/make_seeds.py OUT_DIR")
    write(Path(sys.argv[1]))
