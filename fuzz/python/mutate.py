"""Seeded mutations of compressed-adapter files and module blobs.

Each mutation returns (new bytes, description, keeps_content). keeps_content is True
when the mutation leaves every checksum as it was, so a file that still loads must
hold exactly the original modules; mutations that recompute the checksums (to reach
the checks behind them) make a possibly valid file of other content.
"""
from __future__ import annotations

import json
import random
import struct
import zlib

from loraquant import _core
from loraquant.adapter_file import modules_crc32

HEADER = struct.Struct("<Q")
BLOB_HEADER = _core.BLOB_HEADER_BYTES
BLOB_CRC_AT = 40  # offset of crc32 in lq_blob_header (format.h)

#: integers that break size arithmetic: signs, 32/64-bit edges, the format's limits
HOSTILE_INTS = [0, 1, -1, 7, 2 ** 24, 2 ** 24 + 1, 2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 53 + 1,
                2 ** 60, 2 ** 63, 2 ** 64 - 1, 2 ** 64, 10 ** 30]
#: JSON texts that are not what a field should hold
HOSTILE_JSON = ["null", "true", '""', '"x"', "[]", "{}", "-0", "1e999", "NaN", "-Infinity",
                "1.5", "[" * 5000 + "]" * 5000, '"' + "\\u0000" * 50 + '"',
                "9" * 5000, "[1, [2, [3]]]", '{"a": {"a": 1, "a": 2}}']


def split(data: bytes):
    """(header JSON object, data section) of a well-formed file."""
    (n,) = HEADER.unpack_from(data)
    return json.loads(data[8:8 + n]), data[8 + n:]


def join(header_text: bytes, body: bytes) -> bytes:
    return HEADER.pack(len(header_text)) + header_text + body


def fix_modules_crc(meta: dict) -> None:
    """Make a version-2 header's modules_crc32 match its module_prefix and modules."""
    prefix, modules = meta.get("module_prefix"), meta.get("modules")
    if "modules_crc32" in meta and isinstance(prefix, str) and isinstance(modules, str):
        meta["modules_crc32"] = f"{modules_crc32(prefix, modules):08x}"


def blob_spans(header: dict) -> dict:
    """Module name -> (begin, end) of its blob in the data section of a well-formed
    file of either version (format.h): a tensor of its own in version 1, a run of
    "lq.blobs" in version 2."""
    meta = header["__metadata__"]
    modules = json.loads(meta["modules"])
    if meta["format_version"] == "1":
        return {m["name"]: tuple(header[f"lq.{m['name']}.blob"]["data_offsets"]) for m in modules}
    at, spans = header["lq.blobs"]["data_offsets"][0], {}
    for name, size, _ in modules:
        spans[meta["module_prefix"] + name] = (at, at + size)
        at += size
    return spans


# --- byte level -------------------------------------------------------------------

def flip_bits(rng, data):
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        k = rng.randrange(len(b))
        b[k] ^= 1 << rng.randrange(8)
    return bytes(b), "bit flips"


def hostile_word(rng, data):
    """An 8-byte (or 4-byte) hostile integer over any offset, the length field included."""
    b = bytearray(data)
    size = rng.choice([4, 8])
    k = rng.choice([0, rng.randrange(max(1, len(b) - size))])
    v = rng.choice(HOSTILE_INTS) % (1 << (8 * size))
    b[k:k + size] = v.to_bytes(size, "little")
    return bytes(b), f"{size}-byte {v} at {k}"


def cut(rng, data):
    k = rng.randrange(len(data))
    return data[:k], f"truncated to {k}"


def splice(rng, data):
    a = rng.randrange(len(data))
    b = min(len(data), a + rng.randint(1, 64))
    if rng.random() < 0.5:
        return data[:a] + data[b:], f"deleted [{a}, {b})"
    return data[:a] + data[a:b] * 2 + data[b:], f"repeated [{a}, {b})"


# --- JSON level -------------------------------------------------------------------

def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def _replace(obj, path, text):
    """The JSON text of obj with the value at path replaced by raw JSON text."""
    marker = "\u0001MARK\u0001"
    if not path:
        return text
    parent = obj
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = marker
    return json.dumps(obj).replace(json.dumps(marker), text)


def json_value(rng, data, fix_crc=False):
    """A hostile value anywhere in the header, or inside one of the metadata strings
    that hold JSON (modules, extras, peft_config); with fix_crc, modules_crc32 is made
    to match, so that a change of the module entries reaches the checks behind it."""
    header, body = split(data)
    meta = header.get("__metadata__", {})
    value = rng.choice(HOSTILE_JSON + [str(v) for v in HOSTILE_INTS])
    inner = [k for k in ("modules", "extras", "peft_config") if k in meta]
    if inner and rng.random() < 0.6:
        key = rng.choice(inner)
        obj = json.loads(meta[key])
        path = rng.choice(list(_paths(obj)))
        meta[key] = _replace(obj, path, value)
        if fix_crc:
            fix_modules_crc(meta)
        return join(json.dumps(header).encode(), body), f"metadata {key}{list(path)} = {value[:20]}"
    path = rng.choice(list(_paths(header)))
    return join(_replace(header, path, value).encode(), body), f"header{list(path)} = {value[:20]}"


def json_value_fixed(rng, data):
    data, desc = json_value(rng, data, fix_crc=True)
    return data, desc + " (modules_crc32 fixed)"


def json_key(rng, data):
    """Drop, rename or duplicate a key of the header or of its metadata."""
    header, body = split(data)
    action = rng.choice(["drop", "rename", "duplicate"])
    if action == "duplicate":  # json.dumps cannot repeat a key: append one by hand
        key = rng.choice(list(header))
        text = json.dumps(header)[:-1] + ", " + json.dumps({key: header[key]})[1:]
        return join(text.encode(), body), f"duplicate key {key!r}"
    target = header if rng.random() < 0.5 else header.get("__metadata__", header)
    key = rng.choice(list(target))
    if action == "drop":
        del target[key]
    else:
        target[key + "x"] = target.pop(key)
    return join(json.dumps(header).encode(), body), f"{action} key {key!r}"


# --- data level, checksums recomputed ---------------------------------------------

def data_with_crc(rng, data):
    """Change bytes of a blob or sigma tensor, then recompute the blob's CRC-32 (when
    a blob was hit) and the file's data_crc32, so that the content checks run."""
    header, body = split(data)
    body = bytearray(body)
    names = [k for k in header if k != "__metadata__"]
    name = rng.choice(names)
    begin, end = header[name]["data_offsets"]
    if not (type(begin) is int and type(end) is int and 0 <= begin < end <= len(body)):
        return data, "no tensor data to change"
    for _ in range(rng.randint(1, 3)):
        k = rng.randrange(begin, end)
        body[k] = rng.choice([0, 0xFF, body[k] ^ (1 << rng.randrange(8)), rng.randrange(256)])
    for b, e in blob_spans(header).values():
        if begin <= b < end and e - b >= BLOB_HEADER:
            body[b:e] = fix_blob_crc(bytes(body[b:e]))
    header["__metadata__"]["data_crc32"] = f"{zlib.crc32(body):08x}"
    return join(json.dumps(header).encode(), bytes(body)), f"data of {name} (checksums fixed)"


def fix_blob_crc(blob: bytes) -> bytes:
    b = bytearray(blob)
    head = zlib.crc32(b[:BLOB_CRC_AT])
    struct.pack_into("<I", b, BLOB_CRC_AT, zlib.crc32(b[BLOB_HEADER:], head))
    return bytes(b)


FILE_MUTATIONS = [(flip_bits, True), (hostile_word, True), (cut, True), (splice, True),
                  (json_value, True), (json_key, True), (data_with_crc, False),
                  (json_value_fixed, False)]


def mutate_file(rng: random.Random, data: bytes):
    """One to three mutations of an adapter file: (bytes, description, keeps_content)."""
    keeps, what = True, []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        fn, keeps_content = rng.choice(FILE_MUTATIONS)
        try:
            data, desc = fn(rng, data)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError, RecursionError,
                struct.error):
            continue  # an earlier mutation left nothing this one can parse; keep the bytes
        keeps = keeps and keeps_content
        what.append(desc)
        if not data:
            break
    return data, "; ".join(what) or "unchanged", keeps


def mutate_blob(rng: random.Random, blob: bytes):
    """A mutated module blob and whether its CRC-32 was recomputed (bytes, desc, fixed)."""
    fn = rng.choice([flip_bits, hostile_word, cut, splice])
    data, desc = fn(rng, blob)
    if len(data) >= BLOB_HEADER and rng.random() < 0.7:
        b = bytearray(data)
        struct.pack_into("<Q", b, 32, len(b) - BLOB_HEADER)  # payload_bytes
        return fix_blob_crc(bytes(b)), desc + " (size and CRC fixed)", True
    return data, desc, False
