"""The safetensors container under the compressed-adapter file: header, dtypes, bounds.

Only the container lives here: an 8-byte header length, a JSON header, a data section
that the tensors tile exactly. What the tensors mean is adapter_file.py's business;
the layout is specified at the end of cpp/include/loraquant/format.h.

Reading never trusts a declared size: the header length and every tensor's offsets are
checked against the real file size before anything is read or allocated.
"""
from __future__ import annotations

import json
import math
import struct
import sys
import zlib
from dataclasses import dataclass

from ._core import FormatError

#: safetensors dtype name -> (torch dtype attribute, bytes per element)
DTYPES = {
    "BOOL": ("bool", 1), "U8": ("uint8", 1), "I8": ("int8", 1),
    "F8_E4M3": ("float8_e4m3fn", 1), "F8_E5M2": ("float8_e5m2", 1),
    "I16": ("int16", 2), "U16": ("uint16", 2), "F16": ("float16", 2), "BF16": ("bfloat16", 2),
    "I32": ("int32", 4), "U32": ("uint32", 4), "F32": ("float32", 4),
    "I64": ("int64", 8), "U64": ("uint64", 8), "F64": ("float64", 8),
}
_TORCH_TO_DTYPE = {torch_name: st for st, (torch_name, _) in DTYPES.items()}

#: the same ceiling the safetensors library puts on its JSON header
MAX_HEADER_BYTES = 100_000_000
#: longer integers exceed any float (10^309 > 1.8 * 10^308); shorter ones are compared
MAX_INT_DIGITS = 310
#: nesting of arrays and objects that the C++ reader (json.h) accepts
MAX_JSON_DEPTH = 64
#: dimensions and offsets are int64 for torch and numpy
MAX_DIM = 2 ** 63 - 1
_LEN = struct.Struct("<Q")
#: the header key of the metadata object (no tensor may take it)
METADATA = "__metadata__"


@dataclass(frozen=True)
class Tensor:
    """One tensor to write: raw little-endian bytes plus how to describe them.

    `align` is the byte alignment its start should get; writers order tensors by
    falling alignment, which keeps every start aligned (each length is a multiple
    of its own alignment).
    """
    name: str
    dtype: str
    shape: tuple
    data: bytes
    align: int = 1


@dataclass(frozen=True)
class Entry:
    """One tensor as a header declares it; begin/end are offsets in the data section."""
    name: str
    dtype: str
    shape: tuple
    begin: int
    end: int


def dtype_of_torch(tensor) -> str:
    """The safetensors name of a torch tensor's dtype (TypeError if it has none)."""
    name = str(tensor.dtype).replace("torch.", "")
    if name not in _TORCH_TO_DTYPE:
        raise TypeError(f"tensors of dtype torch.{name} cannot be stored in safetensors")
    return _TORCH_TO_DTYPE[name]


def layout(tensors: list[Tensor]) -> list[Tensor]:
    """The write order: by falling alignment, otherwise as given (stable)."""
    for t in tensors:
        if len(t.data) % t.align:
            raise ValueError(f"tensor {t.name!r}: {len(t.data)} bytes is not a multiple "
                             f"of its alignment {t.align}")
    return sorted(tensors, key=lambda t: -t.align)


def encode_header(ordered: list[Tensor], metadata: dict) -> bytes:
    """The 8-byte length plus the JSON header for tensors written back to back in
    `ordered` order. The JSON is padded with spaces so that the data section starts
    at a multiple of 8 bytes."""
    header = {METADATA: metadata}
    pos = 0
    for t in ordered:
        header[t.name] = {"dtype": t.dtype, "shape": list(t.shape),
                          "data_offsets": [pos, pos + len(t.data)]}
        pos += len(t.data)
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-(len(text) + _LEN.size) % 8)
    return _LEN.pack(len(text)) + text


def read_header(f, file_size: int) -> tuple[dict, dict, int]:
    """Parse and check the header of an open binary file of `file_size` bytes.

    Returns (entries: name -> Entry, metadata: dict of str, data_start). Every entry
    lies inside the data section and the entries tile it with no gap or overlap.
    """
    if file_size < _LEN.size:
        raise FormatError(f"file is {file_size} bytes, too short for a safetensors header")
    (n,) = _LEN.unpack(f.read(_LEN.size))
    if n > file_size - _LEN.size:
        raise FormatError(f"header declares {n} bytes of JSON but the file has only "
                          f"{file_size - _LEN.size} bytes after the length field (truncated?)")
    if n > MAX_HEADER_BYTES:
        raise FormatError(f"header declares {n} bytes of JSON, more than the limit "
                          f"{MAX_HEADER_BYTES}")
    raw = f.read(n)
    if len(raw) != n:
        raise FormatError(f"could read only {len(raw)} of {n} header bytes")
    header = _parse_json(raw)
    data_len = file_size - _LEN.size - n
    meta = header.pop(METADATA, {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise FormatError("__metadata__ must be an object of string values")
    entries = {name: _entry(name, desc, data_len) for name, desc in header.items()}
    _check_tiling(entries.values(), data_len)
    return entries, meta, _LEN.size + n


def _parse_json(raw: bytes) -> dict:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(f"JSON header is not valid UTF-8: {e}") from None
    obj = parse_json(text, "JSON header")
    if not isinstance(obj, dict):
        raise FormatError(f"JSON header must be an object, got {type(obj).__name__}")
    return obj


def parse_json(text: str, what: str):
    """Strict JSON: no repeated keys, no NaN, Infinity, 1e999 or integer beyond the float
    range; every failure (nesting deeper than the parser recurses too) a FormatError."""
    def no_duplicates(pairs):
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            dup = sorted({k for k in keys if keys.count(k) > 1})
            raise FormatError(f"{what} repeats the key(s) {dup}")
        return dict(pairs)

    def no_constants(word):
        raise FormatError(f"{what} contains {word}, which JSON does not allow")

    def finite(word):
        value = float(word)
        if not math.isfinite(value):
            raise FormatError(f"{what} contains {word[:20]}, beyond the range of a float")
        return value

    def bounded(word):  # as the C++ reader: no integer beyond the range of a double
        value = int(word) if len(word) <= MAX_INT_DIGITS else None
        if value is None or abs(value) > sys.float_info.max:
            raise FormatError(f"{what} contains the {len(word)}-character integer "
                              f"{word[:20]}..., beyond the range of a float")
        return value

    try:
        obj = json.loads(text, object_pairs_hook=no_duplicates, parse_constant=no_constants,
                         parse_float=finite, parse_int=bounded)
    except json.JSONDecodeError as e:
        raise FormatError(f"{what} is not valid JSON (it does not parse: {e})") from None
    except RecursionError:
        raise FormatError(f"{what} nests too deeply to parse") from None
    if json_depth(obj) > MAX_JSON_DEPTH:
        raise FormatError(f"{what} nests arrays and objects deeper than {MAX_JSON_DEPTH}")
    _check_strings(obj, what)
    return obj


def _check_strings(obj, what: str) -> None:
    """Every key and string is Unicode text: json reads "\\ud800" (half of a surrogate
    pair) as a string that no UTF-8 can hold, and the C++ reader refuses it."""
    stack = [obj]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as e:
                raise FormatError(f"{what} holds the lone surrogate \\u{ord(value[e.start]):04x}, "
                                  f"which is not text") from None


def json_depth(obj) -> int:
    """How deep arrays and objects nest in a parsed JSON value (a scalar is 0)."""
    if not isinstance(obj, (dict, list)):
        return 0
    deepest, stack = 0, [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        deepest = max(deepest, depth)
        items = value.values() if isinstance(value, dict) else value
        stack.extend((v, depth + 1) for v in items if isinstance(v, (dict, list)))
    return deepest



def _is_count(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _entry(name: str, desc, data_len: int) -> Entry:
    if not isinstance(desc, dict):
        raise FormatError(f"tensor {name!r}: header entry must be an object")
    dtype, shape, offs = desc.get("dtype"), desc.get("shape"), desc.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise FormatError(f"tensor {name!r}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_count(d) and d <= MAX_DIM for d in shape):
        raise FormatError(f"tensor {name!r}: shape must be a list of integers in "
                          f"0..2^63-1, got {shape!r}")
    if (not isinstance(offs, list) or len(offs) != 2 or not all(_is_count(o) for o in offs)
            or offs[0] > offs[1]):
        raise FormatError(f"tensor {name!r}: data_offsets must be [begin, end] with "
                          f"0 <= begin <= end, got {offs!r}")
    begin, end = offs
    if end > data_len:
        raise FormatError(f"tensor {name!r}: data_offsets [{begin}, {end}] run past the "
                          f"data section of {data_len} bytes (truncated?)")
    if _nbytes([max(d, 1) for d in shape], 1, MAX_DIM) is None:  # torch's strides
        raise FormatError(f"tensor {name!r}: shape overflows 64-bit strides")
    nbytes = _nbytes(shape, DTYPES[dtype][1], end - begin)
    if nbytes != end - begin:
        needs = f"more than {end - begin}" if nbytes is None else f"{nbytes}"
        shown = shape if len(shape) <= 8 else f"[{len(shape)} dimensions]"
        raise FormatError(f"tensor {name!r}: {dtype} {shown} needs {needs} bytes but its "
                          f"data_offsets span {end - begin}")
    return Entry(name, dtype, tuple(shape), begin, end)


def _nbytes(shape: list, itemsize: int, limit: int):
    """Bytes of a tensor, or None once they pass `limit`: a header may declare a
    shape whose product has millions of digits, never worth computing."""
    if 0 in shape:
        return 0
    n = itemsize
    for d in shape:
        n *= d
        if n > limit:
            return None
    return n


def _check_tiling(entries, data_len: int) -> None:
    pos = 0
    for e in sorted(entries, key=lambda e: (e.begin, e.end)):
        if e.begin != pos:
            what = "overlaps the tensor before it" if e.begin < pos else "leaves a gap before it"
            raise FormatError(f"tensor {e.name!r} begins at {e.begin} and {what} (expected "
                              f"{pos}): tensors must tile the data section")
        pos = e.end
    if pos != data_len:
        raise FormatError(f"the data section has {data_len} bytes but the tensors cover {pos}")


def read_data(f, size: int, data_start: int, crc_text: str) -> memoryview:
    """The whole data section of an open file, checked against the CRC-32 its header
    records (8 lowercase hex digits)."""
    data = memoryview(f.read(size - data_start))
    if len(data) != size - data_start:
        raise FormatError(f"could read only {len(data)} of {size - data_start} data bytes")
    crc = zlib.crc32(data)
    if f"{crc:08x}" != crc_text:
        raise FormatError(f"data CRC-32 is {crc:08x} but the header says {crc_text}: "
                          f"the file is corrupt")
    return data
