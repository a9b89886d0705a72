"""What a compressed-adapter file spends besides the packed payload.

    python bench/file_overhead.py                 # the table for 1 to 288 modules
    python bench/file_overhead.py --modules 72    # one adapter

Each adapter has r = 4 modules of a small Llama (SmolLM2-135M's shapes: hidden 576,
3 KV heads of 64), q/k/v/o_proj of consecutive layers under their PEFT names, random
factors, compressed at 2 bits per weight and saved with loraquant.save. Columns, in
bytes unless marked:

- payload: the modules' packed bytes (QuantizedLoRA.nbytes, what avg_bits counts),
  of which `prefix` are the per-component widths and group shifts and the scale unit
  (format.h, lq_prefix_bytes);
- blob hdr: the 48-byte lq_blob_header of each module;
- sigma: the singular values, 4 bytes each;
- JSON: the safetensors header (its 8-byte length included), of which `module meta`
  is the metadata field "modules";
- file: the file's size; overhead/module = (file - payload) / modules.
"""
from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import loraquant  # noqa: E402
from tables import markdown  # noqa: E402

RANK = 4
BITS = 2.0
HIDDEN, KV = 576, 192
#: PEFT target -> (out features m, in features n)
TARGETS = {"q_proj": (HIDDEN, HIDDEN), "k_proj": (KV, HIDDEN), "v_proj": (KV, HIDDEN),
           "o_proj": (HIDDEN, HIDDEN)}
COUNTS = (1, 2, 4, 14, 72, 288)
BLOB_HEADER = 48


def prefix_bytes(r: int) -> int:
    """lq_prefix_bytes of format.h: widths and shifts (4 per component), padded, + unit."""
    return (4 * r + 3) // 4 * 4 + 4


def adapter(n_modules: int, seed: int = 0) -> dict:
    """{PEFT module name: (A, B, scaling)} of n_modules modules."""
    g = np.random.default_rng(seed)
    pairs = {}
    for k in range(n_modules):
        target = list(TARGETS)[k % len(TARGETS)]
        m, n = TARGETS[target]
        name = f"base_model.model.model.layers.{k // len(TARGETS)}.self_attn.{target}"
        A = (g.standard_normal((RANK, n)) / np.sqrt(n)).astype(np.float32)
        B = (g.standard_normal((m, RANK)) * 0.01).astype(np.float32)
        pairs[name] = (A, B, 16.0 / RANK)
    return pairs


def measure(n_modules: int) -> dict:
    pairs = adapter(n_modules)
    compressed = loraquant.compress_adapter(pairs, bits=BITS)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "adapter.lqa")
        loraquant.save(path, compressed, scalings={k: s for k, (_, _, s) in pairs.items()})
        data = open(path, "rb").read()
    (n,) = struct.unpack_from("<Q", data)
    meta = json.loads(data[8:8 + n])["__metadata__"]
    return {
        "modules": n_modules,
        "payload": sum(q.nbytes for q in compressed.values()),
        "prefix": sum(prefix_bytes(q.rank) for q in compressed.values()),
        "blob hdr": BLOB_HEADER * n_modules,
        "sigma": 4 * sum(q.rank for q in compressed.values()),
        "JSON": 8 + n,
        # as stored in the header: a JSON string, its quotes escaped
        "module meta": len(json.dumps(meta["modules"], ensure_ascii=False)),
        "file": len(data),
        "version": meta.get("format_version"),
    }


def rows(results: list) -> list:
    out = []
    for r in results:
        overhead = r["file"] - r["payload"]
        out.append([r["modules"], r["version"], r["payload"], r["prefix"], r["blob hdr"],
                    r["sigma"], r["JSON"], r["module meta"], r["file"],
                    f"{r['file'] / 1024:.1f}", f"{overhead / r['modules']:.0f}",
                    f"{100 * overhead / r['file']:.1f}%"])
    return out


HEADERS = ["modules", "format", "payload", "prefix", "blob hdr", "sigma", "JSON",
           "module meta", "file", "file KiB", "overhead/module", "overhead share"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--modules", type=int, nargs="*", default=list(COUNTS),
                   help=f"module counts (default {' '.join(map(str, COUNTS))})")
    args = p.parse_args(argv)
    if any(k < 1 for k in args.modules):
        p.error("--modules: each count must be at least 1")
    print(f"r = {RANK}, {BITS:g} bits per weight, shapes {TARGETS}")
    print(markdown(HEADERS, rows([measure(k) for k in args.modules])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
