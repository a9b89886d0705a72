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

split, join, fix_blob_crc, blob_spans = mutate.split, mutate.join, mutate.fix_blob_crc, mutate.blob_spans
fix_modules_crc = mutate.fix_modules_crc

NAMES = ("base_model.model.layers.0.q_proj", "base_model.model.layers.0.v_proj")
#: a version-1 file that loraquant.save wrote before version 2 (tests/data/README.md):
#: the modules() under NAMES with scalings 2.0 and 0.5, extras "w", "empty" and
#: "base_model.model.lm_head.weight", and a PEFT config
V1_FILE = ROOT / "tests" / "data" / "adapter-v1.lqa"


def pair(seed: int, m: int, n: int, r: int):
    g = np.random.default_rng(seed)
    return g.standard_normal((r, n)), g.standard_normal((m, r))


def modules() -> dict:
    return {NAMES[0]: loraquant.compress(*pair(0, 24, 17, 4), bits=3.0, group_size=8),
            NAMES[1]: loraquant.compress(*pair(1, 9, 40, 3), bits=4.0)}


def adapter_bytes(tmp: Path, version: str = "2") -> bytes:
    """A valid file: two modules, an extra and an empty extra (and, in the version-1
    file, one more extra)."""
    if version == "1":
        return V1_FILE.read_bytes()
    path = tmp / "seed.lqa"
    loraquant.save(path, modules(), extras={"w": torch.ones(3, 2), "empty": torch.zeros(0, 5)},
                   peft_config={"peft_type": "LORA", "r": 4})
    return path.read_bytes()


def rewrite(data: bytes, header=None, meta=None, body=None) -> bytes:
    """`data` with its header dict, one metadata JSON field or its data section edited
    (each a function editing in place; meta is (key, fn)), both CRC-32s recomputed."""
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
    fix_modules_crc(head["__metadata__"])
    return join(json.dumps(head).encode(), bytes(rest))


def parts(data: bytes) -> tuple[dict, dict]:
    """(metadata, name -> [dtype, shape, bytes]) of a well-formed file, for assemble()."""
    head, rest = split(data)
    meta = head.pop("__metadata__")
    return meta, {name: [e["dtype"], e["shape"], rest[slice(*e["data_offsets"])]]
                  for name, e in head.items()}


def assemble(meta: dict, tensors: dict) -> bytes:
    """A file of these metadata strings and tensors, laid out as the writers do, its
    CRC-32s recomputed; nothing else is checked, so it may be malformed."""
    st = loraquant.adapter_file.st
    ordered = st.layout([st.Tensor(name, dtype, tuple(shape), bytes(raw), st.DTYPES[dtype][1])
                         for name, (dtype, shape, raw) in tensors.items()])
    crc = zlib.crc32(b"".join(t.data for t in ordered))
    meta = dict(meta, data_crc32=f"{crc:08x}")
    fix_modules_crc(meta)
    header = st.encode_header(ordered, meta)
    return header + b"".join(t.data for t in ordered)


def version(head: dict) -> str:
    return head["__metadata__"]["format_version"]


def first_sigma(head: dict) -> int:
    """Offset in the data section of the first singular value of module NAMES[0]."""
    name = f"lq.{NAMES[0]}.sigma" if version(head) == "1" else "lq.sigma"
    return head[name]["data_offsets"][0]


def set_scaling(modules: list, value) -> None:
    """Edit of the "modules" metadata: the first module's scaling becomes `value`."""
    if isinstance(modules[0], dict):  # version 1
        modules[0]["scaling"] = value
    else:
        modules[0][2] = value


def blob_edit(name: str, offset: int, raw: bytes):
    """A body edit writing `raw` at `offset` of module `name`'s blob, its CRC fixed."""
    def edit(head, rest):
        begin, end = blob_spans(head)[name]
        blob = bytearray(rest[begin:end])
        blob[offset:offset + len(raw)] = raw
        rest[begin:end] = fix_blob_crc(bytes(blob))
    return edit


HUGE_SIZES = [2 ** 31, 2 ** 32 - 1, 2 ** 60, 2 ** 63, 2 ** 64 - 1]
#: how many places of a file huge_size_files() puts each huge size in, per version
HUGE_PLACES = {"1": 12, "2": 10}


def _offsets(name, v):
    def edit(head):
        begin = head[name]["data_offsets"][0]
        head[name].update(shape=[v], data_offsets=[begin, begin + v])
    return edit


def _field(key, v):
    return ("modules", lambda ms: ms[0].update({key: v}))


def _blob_bytes(v):
    def edit(modules):
        modules[0][1] = v
    return ("modules", edit)


def huge_size_files(seed: bytes):
    """(what, bytes) of files that declare a huge size in every place a size lives."""
    v1 = version(split(seed)[0]) == "1"
    for v in HUGE_SIZES:
        yield f"JSON length {v}", struct.pack("<Q", v) + seed[8:]
        if v1:
            yield f"blob of {v} bytes", rewrite(seed, header=_offsets(f"lq.{NAMES[0]}.blob", v))
            for key in ("m", "n", "r", "group_size"):
                yield f"module {key} = {v}", rewrite(seed, meta=_field(key, v))
        else:
            yield f"lq.blobs of {v} bytes", rewrite(seed, header=_offsets("lq.blobs", v))
            yield f"lq.sigma of {v} bytes", rewrite(seed, header=_offsets("lq.sigma", v))
            yield f"module blob_bytes = {v}", rewrite(seed, meta=_blob_bytes(v))
        yield f"extra of {v} float32", rewrite(seed, header=lambda h: h["w"].update(shape=[v]))
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
