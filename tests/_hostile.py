"""Helpers of the hostile-input tests: a small adapter file and ways to edit one.

The byte-level helpers are the fuzzers' own (fuzz/python/mutate.py), so the tests and
the fuzzers take files apart the same way.
"""
from __future__ import annotations

import json
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import torch

import loraquant

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "fuzz" / "python"))
import mutate  # noqa: E402

split, join, fix_blob_crc = mutate.split, mutate.join, mutate.fix_blob_crc

NAMES = ("base_model.model.layers.0.q_proj", "base_model.model.layers.0.v_proj")


def pair(seed: int, m: int, n: int, r: int):
    g = np.random.default_rng(seed)
    return g.standard_normal((r, n)), g.standard_normal((m, r))


def modules() -> dict:
    return {NAMES[0]: loraquant.compress(*pair(0, 24, 17, 4), bits=3.0, group_size=8),
            NAMES[1]: loraquant.compress(*pair(1, 9, 40, 3), bits=4.0)}


def adapter_bytes(tmp: Path) -> bytes:
    """A valid file: two modules, an extra and an empty extra."""
    path = tmp / "seed.lqa"
    loraquant.save(path, modules(), extras={"w": torch.ones(3, 2), "empty": torch.zeros(0, 5)},
                   peft_config={"peft_type": "LORA", "r": 4})
    return path.read_bytes()


def rewrite(data: bytes, header=None, meta=None, body=None) -> bytes:
    """`data` with its header dict, one metadata JSON field or its data section edited
    (each a function editing in place; meta is (key, fn)), the data CRC-32 recomputed."""
    head, rest = split(data)
    rest = bytearray(rest)
    if body:
        body(head, rest)
    if meta:
        key, fn = meta
        value = json.loads(head["__metadata__"][key])
        fn(value)
        head["__metadata__"][key] = json.dumps(value)
    if header:
        header(head)
    head["__metadata__"]["data_crc32"] = f"{zlib.crc32(rest):08x}"
    return join(json.dumps(head).encode(), bytes(rest))


def blob_edit(name: str, offset: int, raw: bytes):
    """A body edit writing `raw` at `offset` of module `name`'s blob, its CRC fixed."""
    def edit(head, rest):
        begin, end = head[f"lq.{name}.blob"]["data_offsets"]
        blob = bytearray(rest[begin:end])
        blob[offset:offset + len(raw)] = raw
        rest[begin:end] = fix_blob_crc(bytes(blob))
    return edit


HUGE_SIZES = [2 ** 31, 2 ** 32 - 1, 2 ** 60, 2 ** 63, 2 ** 64 - 1]


def _offsets(name, v):
    def edit(head):
        begin = head[name]["data_offsets"][0]
        head[name].update(shape=[v], data_offsets=[begin, begin + v])
    return edit


def _field(key, v):
    return ("modules", lambda ms: ms[0].update({key: v}))


def huge_size_files(seed: bytes):
    """(what, bytes) of files that declare a huge size in every place a size lives."""
    blob = f"lq.{NAMES[0]}.blob"
    for v in HUGE_SIZES:
        yield f"JSON length {v}", struct.pack("<Q", v) + seed[8:]
        yield f"blob of {v} bytes", rewrite(seed, header=_offsets(blob, v))
        yield f"extra of {v} float32", rewrite(seed, header=lambda h, v=v: h["w"].update(shape=[v]))
        for key in ("m", "n", "r", "group_size"):
            yield f"module {key} = {v}", rewrite(seed, meta=_field(key, v))
        v32 = struct.pack("<I", min(v, 2 ** 32 - 1))
        for key, at in (("m", 8), ("n", 12), ("r", 16), ("group_size", 20)):
            yield f"blob header {key} = {v}", rewrite(seed, body=blob_edit(NAMES[0], at, v32))
        yield f"blob payload_bytes = {v}", rewrite(
            seed, body=blob_edit(NAMES[0], 32, struct.pack("<Q", v)))


def fuzz_runner():
    """fuzz/run.py as a module: building and running the fuzz targets."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("lq_fuzz_run", ROOT / "fuzz" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def c_reader(library):
    """fuzz/python/c_reader.py's CReader on a libloraquant_c.so."""
    sys.path.insert(0, str(ROOT / "fuzz" / "python"))
    import c_reader as module

    return module.CReader(library)
