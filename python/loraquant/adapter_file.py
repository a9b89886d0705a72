"""One compressed adapter in one file: loraquant.save and loraquant.load.

The file is a safetensors container whose layout is specified at the end of
cpp/include/loraquant/format.h (the one place it is documented). save() writes version
2 atomically; load() reads versions 1 and 2, checks sizes, offsets, the version, the
CRC-32 and every module's blob header before it returns anything, and raises
FormatError (a ValueError) naming the problem otherwise. Nothing is ever unpickled.
"""
from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import secrets
import stat
import zlib
from collections.abc import Mapping

import numpy as np

from . import _core
from . import _safetensors_file as st
from . import _validate as V
from ._api import QuantizedLoRA
from ._core import FormatError

FORMAT = "loraquant-adapter"      # LQ_ADAPTER_FORMAT
FORMAT_VERSION = "2"              # LQ_ADAPTER_FORMAT_VERSION: what save() writes
FORMAT_VERSION_1 = "1"            # LQ_ADAPTER_FORMAT_VERSION_1: still read
BLOB_ALIGN = 4                    # blobs hold uint32 code words
BLOBS = "lq.blobs"                # version 2: every module's blob, back to back
SIGMA = "lq.sigma"                # version 2: every module's singular values
RESERVED = "lq."                  # the file's own tensor names start so; no extra's may
OPTIONS_KEY = "compress_options"  # optional metadata (format.h)
_CRC_TEXT = re.compile(r"[0-9a-f]{8}")


def blob_name_v1(module: str) -> str:
    return f"lq.{module}.blob"


def sigma_name_v1(module: str) -> str:
    return f"lq.{module}.sigma"


def module_prefix(names) -> str:
    """The longest common prefix of the names that ends in '.' (format.h)."""
    prefix = os.path.commonprefix(list(names))
    return prefix[:prefix.rfind(".") + 1]


class CompressedAdapter(Mapping):
    """A compressed adapter: module name -> QuantizedLoRA, in file order.

    Module names are PEFT module paths (state-dict keys without ".lora_A.weight", for
    example "base_model.model.model.layers.0.self_attn.q_proj").

    peft_config  the source adapter_config.json as a dict ({} if none)
    extras       name -> torch tensor kept unchanged (modules_to_save weights, LoRA
                 biases lora_B.bias, other base-model tensors PEFT saved)
    scalings     name -> the LoRA scaling folded into each module's codes (1.0 where
                 not given); LoRA biases are multiplied by it when served
    options      the compression options it was made with, as compress_peft records
                 them ({} if unknown); informational, `loraquant batch` compares them
                 to decide whether an existing output is up to date
    """

    def __init__(self, modules, *, peft_config=None, extras=None, scalings=None,
                 options=None):
        if not isinstance(modules, Mapping):
            raise TypeError(f"modules must be a mapping name -> QuantizedLoRA, "
                            f"got {type(modules).__name__}")
        if len(modules) == 0:
            raise ValueError("an adapter needs at least one module")
        for name, q in modules.items():
            if not isinstance(name, str) or not name:
                raise TypeError(f"module names must be non-empty strings, got {name!r}")
            if not isinstance(q, QuantizedLoRA):
                raise TypeError(f"module {name!r}: expected a QuantizedLoRA, "
                                f"got {type(q).__name__}")
        for what, value in (("peft_config", peft_config), ("extras", extras),
                            ("scalings", scalings), ("options", options)):
            if value is not None and not isinstance(value, Mapping):
                raise TypeError(f"{what} must be a mapping, got {type(value).__name__}")
        self._modules = dict(modules)
        self.peft_config = {} if peft_config is None else dict(peft_config)
        self.extras = {} if extras is None else dict(extras)
        self.options = {} if options is None else dict(options)
        scalings = {} if scalings is None else dict(scalings)
        unknown = sorted(set(scalings) - set(self._modules))
        if unknown:
            raise ValueError(f"scalings name modules the adapter does not have: {unknown}")
        self.scalings = {name: V.finite(scalings.get(name, 1.0), f"scaling of {name!r}")
                         for name in self._modules}

    def __getitem__(self, name: str) -> QuantizedLoRA:
        return self._modules[name]

    def __iter__(self):
        return iter(self._modules)

    def __len__(self) -> int:
        return len(self._modules)

    @property
    def nbytes(self) -> int:
        """Packed bytes of all modules (every stored byte, headers not counted)."""
        return sum(q.nbytes for q in self.values())

    @property
    def n_weights(self) -> int:
        """Weights of the uncompressed LoRA pairs: sum of r * (m + n)."""
        return sum(q.rank * (q.shape[0] + q.shape[1]) for q in self.values())

    @property
    def avg_bits(self) -> float:
        """Bits per weight over the whole adapter, every stored byte counted."""
        return 8.0 * self.nbytes / self.n_weights

    def __repr__(self) -> str:
        return (f"CompressedAdapter({len(self)} modules, avg_bits={self.avg_bits:.3f}, "
                f"nbytes={self.nbytes}, extras={len(self.extras)})")


# --- save -----------------------------------------------------------------------------

def save(path, adapter, *, peft_config=None, extras=None, scalings=None) -> None:
    """Write `adapter` (a CompressedAdapter, or a dict name -> QuantizedLoRA) to `path`.

    Keyword arguments given here replace the adapter's own peft_config, extras and
    scalings. The write is atomic: a temporary file in the same directory is written,
    flushed and fsynced, then renamed over `path`; on any failure it is removed and an
    existing file at `path` is left untouched. OS failures (read-only or full
    destination) raise the OSError subclass with `path` in the message.
    """
    adapter = _as_adapter(adapter, peft_config, extras, scalings)
    tensors, blob_bytes = _tensors(adapter)
    ordered = st.layout(tensors)
    crc = 0
    for t in ordered:
        crc = zlib.crc32(t.data, crc)
    header = st.encode_header(ordered, _metadata(adapter, blob_bytes, crc))
    _atomic_write(os.fspath(path), [header] + [t.data for t in ordered])


def _as_adapter(adapter, peft_config, extras, scalings) -> CompressedAdapter:
    if isinstance(adapter, CompressedAdapter):
        return CompressedAdapter(
            adapter,
            peft_config=adapter.peft_config if peft_config is None else peft_config,
            extras=adapter.extras if extras is None else extras,
            scalings=adapter.scalings if scalings is None else scalings,
            options=adapter.options)
    return CompressedAdapter(adapter, peft_config=peft_config, extras=extras, scalings=scalings)


def _sigma(q: QuantizedLoRA) -> np.ndarray:
    """The module's singular values; for a module built from its bytes alone (which do
    not carry them), those of its dequantized update."""
    if q.singular_values is not None:
        sigma = np.asarray(q.singular_values, dtype=np.float64)
    else:
        a, b = q.core.dequantize()
        sigma = _core.thin_svd(a, b, 1.0)[0]
    if sigma.shape != (q.rank,):
        raise ValueError(f"singular_values has shape {sigma.shape}, expected ({q.rank},)")
    with np.errstate(over="ignore", invalid="ignore"):  # 1e300 becomes inf, refused below
        sigma = sigma.astype("<f4")
        ok = (np.isfinite(sigma) & (sigma >= 0)).all()
    if not ok:  # as readers require (format.h)
        raise ValueError("singular_values must be finite and >= 0 (as float32)")
    return sigma


def _tensors(adapter: CompressedAdapter) -> list:
    """(tensors, blob length of each module) of version 2: lq.blobs, lq.sigma, extras."""
    blobs, sigmas = [], []
    for name, q in adapter.items():
        blobs.append(q.to_bytes())
        try:
            sigmas.append(_sigma(q))
        except ValueError as e:
            raise ValueError(f"module {name!r}: {e}") from None
    joined = b"".join(blobs)
    sigma = np.concatenate(sigmas)
    out = [st.Tensor(BLOBS, "U8", (len(joined),), joined, BLOB_ALIGN),
           st.Tensor(SIGMA, "F32", (len(sigma),), sigma.tobytes(), 4)]
    for name, t in adapter.extras.items():
        if (not isinstance(name, str) or not name or name.startswith(RESERVED)
                or name == st.METADATA):
            raise ValueError(f"extra tensor name {name!r} is not allowed: names must be "
                             f"non-empty, not {st.METADATA!r}, and must not start with "
                             f"{RESERVED!r}")
        out.append(_extra_tensor(name, t))
    return out, [len(b) for b in blobs]


def _extra_tensor(name: str, t) -> st.Tensor:
    import torch

    if not isinstance(t, torch.Tensor):
        raise TypeError(f"extra {name!r} must be a torch.Tensor, got {type(t).__name__}")
    dtype = st.dtype_of_torch(t)
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    data = flat.view(torch.uint8).numpy().tobytes()
    return st.Tensor(name, dtype, tuple(t.shape), data, flat.element_size())


def _metadata(adapter: CompressedAdapter, blob_bytes: list, crc: int) -> dict:
    for name in adapter:
        if "\0" in name:
            raise ValueError(f"module name {name!r} contains NUL, which readers refuse")
    prefix = module_prefix(adapter)
    modules = [[name[len(prefix):], size, adapter.scalings[name]]
               for name, size in zip(adapter, blob_bytes)]
    if st.json_depth(adapter.peft_config) > st.MAX_JSON_DEPTH:
        raise ValueError(f"peft_config nests deeper than {st.MAX_JSON_DEPTH}, which the "
                         f"C++ reader refuses")
    try:
        config = json.dumps(adapter.peft_config, allow_nan=False)
        options = json.dumps(adapter.options, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise ValueError(f"peft_config or options cannot be stored as JSON: {e}") from None
    modules_text = json.dumps(modules, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "module_prefix": prefix,
            "modules": modules_text, "modules_crc32": f"{modules_crc32(prefix, modules_text):08x}",
            "extras": json.dumps(list(adapter.extras), ensure_ascii=False, separators=(",", ":")),
            "peft_config": config, "data_crc32": f"{crc:08x}"}
    if adapter.options:
        meta[OPTIONS_KEY] = options
    return meta


def modules_crc32(prefix: str, modules: str) -> int:
    """CRC-32 of module_prefix then modules, as UTF-8 (format.h, version 2)."""
    return zlib.crc32(modules.encode("utf-8"), zlib.crc32(prefix.encode("utf-8")))


def _atomic_write(path: str, chunks) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as e:
        raise _save_error(e, path) from None
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise _save_error(e, path) from e
        raise
    _fsync_dir(directory)


def _save_error(e: OSError, path: str) -> OSError:
    msg = f"cannot save the adapter to {path}: {e.strerror or e}"
    return type(e)(e.errno, msg) if e.errno is not None else type(e)(msg)


def _fsync_dir(directory: str) -> None:
    """Make the rename durable where the platform allows it (best effort)."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# --- load -----------------------------------------------------------------------------

def load(path) -> CompressedAdapter:
    """Read a file written by save(). Raises FormatError naming what is wrong if the
    file is not a valid loraquant adapter (and OSError if it cannot be read)."""
    path = os.fspath(path)
    with _open_regular_file(path) as f:
        size = os.fstat(f.fileno()).st_size
        try:
            return _read(f, size)
        except FormatError as e:
            raise FormatError(f"{path}: {e}") from None


def _open_regular_file(path: str):
    """open(path, "rb") that never blocks: a FIFO or a device named as the file would
    block the open or the read forever, so anything but a regular file is refused."""
    nonblock = getattr(os, "O_NONBLOCK", 0)
    fd = os.open(path, os.O_RDONLY | nonblock | getattr(os, "O_BINARY", 0))
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        if not stat.S_ISREG(mode):
            raise FormatError(f"{path}: not a regular file (a pipe or a device?)")
        if nonblock:
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _read(f, size: int) -> CompressedAdapter:
    entries, meta, data_start = st.read_header(f, size)
    v1 = _check_format(meta) == FORMAT_VERSION_1
    modules = _json_field(meta, "modules", list)
    if not modules:
        raise FormatError("the file lists no modules")
    extras = _json_field(meta, "extras", list)
    peft_config = _json_field(meta, "peft_config", dict)
    crc_text = _crc_text(meta, "data_crc32")
    if v1:
        modules = [_module_entry_v1(i, e) for i, e in enumerate(modules)]
        owned = _module_tensors_v1(entries, [m["name"] for m in modules])
    else:
        modules = _module_entries(meta, modules)
        owned = {BLOBS, SIGMA}
    _check_names(entries, owned, extras)

    data = st.read_data(f, size, data_start, crc_text)

    out = _modules_v1(modules, entries, data) if v1 else _modules(modules, entries, data)
    return CompressedAdapter(
        out, peft_config=peft_config, scalings={m["name"]: m["scaling"] for m in modules},
        extras={name: _torch_tensor(entries[name], data) for name in extras},
        options=_options(meta))


def _options(meta: dict) -> dict:
    """The optional compress_options: informational, so, as the C++ reader (which
    ignores it), a value that is not a JSON object reads as unknown ({}), not an error."""
    try:
        value = st.parse_json(meta.get(OPTIONS_KEY, "{}"), f"metadata {OPTIONS_KEY!r}")
    except FormatError:
        return {}
    return value if isinstance(value, dict) else {}


def _check_format(meta: dict) -> str:
    """The file's format version, one this reader knows."""
    fmt = meta.get("format")
    if fmt != FORMAT:
        raise FormatError(f"not a loraquant adapter file: metadata 'format' is {fmt!r}, "
                          f"expected {FORMAT!r}")
    version = meta.get("format_version")
    if version not in (FORMAT_VERSION_1, FORMAT_VERSION):
        raise FormatError(f"format_version {version!r} is not supported; this loraquant "
                          f"reads versions {FORMAT_VERSION_1!r} and {FORMAT_VERSION!r}")
    return version


def _crc_text(meta: dict, key: str) -> str:
    text = meta.get(key)
    if not isinstance(text, str) or not _CRC_TEXT.fullmatch(text):
        raise FormatError(f"{key} must be 8 lowercase hex digits, got {text!r}")
    return text


def _json_field(meta: dict, key: str, kind: type):
    if key not in meta:
        raise FormatError(f"metadata has no {key!r}")
    value = st.parse_json(meta[key], f"metadata {key!r}")
    if not isinstance(value, kind):
        raise FormatError(f"metadata {key!r} must be a JSON {kind.__name__}, "
                          f"got {type(value).__name__}")
    return value


def _is_count(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _finite_number(x) -> bool:
    return not isinstance(x, bool) and isinstance(x, (int, float)) and math.isfinite(x)


def _check_names(entries: dict, owned: set, extras: list) -> None:
    """Every tensor is the modules' (`owned`) or a listed extra; extras are tensors of
    their own, with names not reserved for the modules' tensors."""
    owned = set(owned)
    for name in owned:
        if name not in entries:
            raise FormatError(f"tensor {name!r} is missing")
    for name in extras:
        if (not isinstance(name, str) or name not in entries or name in owned
                or name.startswith(RESERVED)):
            raise FormatError(f"extra {name!r} is not a tensor of its own in the file "
                              f"(names starting {RESERVED!r} are the file's own)")
        owned.add(name)
    stray = sorted(set(entries) - owned)
    if stray:
        raise FormatError(f"tensors {stray[:5]} belong to no module and are not listed "
                          f"as extras")


def _sigma_values(data: memoryview, begin: int, r: int, name: str) -> np.ndarray:
    """r float32 singular values at `begin`, as float64; finite and >= 0."""
    sv = np.frombuffer(data[begin:begin + 4 * r], dtype="<f4")
    with np.errstate(invalid="ignore"):  # a signalling NaN warns in comparisons
        bad = int(np.count_nonzero(~(np.isfinite(sv) & (sv >= 0))))
    if bad:
        raise FormatError(f"module {name!r}: sigma holds {bad} values that are not finite "
                          f"and non-negative")
    return sv.astype(np.float64)


def _blob(data, name: str) -> QuantizedLoRA:
    try:
        return QuantizedLoRA.from_bytes(data)
    except FormatError as e:
        raise FormatError(f"module {name!r}: {e}") from None


# --- version 2: [name, blob_bytes, scaling] per module, two tensors for all --------------

def _module_entries(meta: dict, modules: list) -> list:
    prefix = meta.get("module_prefix")
    if prefix is None:
        raise FormatError("metadata has no 'module_prefix'")
    crc = modules_crc32(prefix, meta["modules"])
    if f"{crc:08x}" != _crc_text(meta, "modules_crc32"):
        raise FormatError(f"modules CRC-32 is {crc:08x} but the header says "
                          f"{meta['modules_crc32']}: the module names or entries are corrupt")
    out, seen = [], set()
    for i, e in enumerate(modules):
        if not (isinstance(e, list) and len(e) == 3):
            raise FormatError(f"modules[{i}] must be [name, blob_bytes, scaling]")
        name, size, scaling = e
        if not isinstance(name, str) or not prefix + name:
            raise FormatError(f"modules[{i}]: name must be a string, non-empty after "
                              f"module_prefix, got {name!r}")
        name = prefix + name
        if "\0" in name:  # the C API hands names out NUL-terminated
            raise FormatError(f"module {name!r}: a name must not contain NUL")
        if name in seen:
            raise FormatError(f"module {name!r} appears twice")
        seen.add(name)
        if not _is_count(size):
            raise FormatError(f"module {name!r}: blob_bytes must be a non-negative integer, "
                              f"got {size!r}")
        if not _finite_number(scaling):
            raise FormatError(f"module {name!r}: scaling must be a finite number, "
                              f"got {scaling!r}")
        out.append({"name": name, "blob_bytes": size, "scaling": scaling})
    return out


def _modules(modules: list, entries: dict, data: memoryview) -> dict:
    blobs, sigma = entries[BLOBS], entries[SIGMA]
    if blobs.dtype != "U8" or len(blobs.shape) != 1:
        raise FormatError(f"tensor {BLOBS!r} must be U8 [bytes], got {blobs.dtype} "
                          f"{list(blobs.shape)}")
    if sigma.dtype != "F32" or len(sigma.shape) != 1:
        raise FormatError(f"tensor {SIGMA!r} must be F32 [values], got {sigma.dtype} "
                          f"{list(sigma.shape)}")
    out, at, sv = {}, blobs.begin, 0  # the next blob, the singular values taken
    for m in modules:
        name, size = m["name"], m["blob_bytes"]
        if size > blobs.end - at:
            raise FormatError(f"module {name!r}: blob_bytes {size} is more than the "
                              f"{blobs.end - at} bytes {BLOBS!r} has left")
        q = _blob(data[at:at + size], name)
        at += size
        if q.rank > sigma.shape[0] - sv:
            raise FormatError(f"module {name!r}: {SIGMA!r} has {sigma.shape[0] - sv} values "
                              f"left for rank {q.rank}")
        q.singular_values = _sigma_values(data, sigma.begin + 4 * sv, q.rank, name)
        sv += q.rank
        out[name] = q
    if at != blobs.end:
        raise FormatError(f"tensor {BLOBS!r} has {blobs.end - at} bytes after the last "
                          f"module's blob")
    if sv != sigma.shape[0]:
        raise FormatError(f"tensor {SIGMA!r} has {sigma.shape[0] - sv} values beyond the "
                          f"modules' ranks")
    return out


# --- version 1: an object per module, two tensors per module ---------------------------

def _module_entry_v1(i: int, e) -> dict:
    if not isinstance(e, dict):
        raise FormatError(f"modules[{i}] must be an object")
    name = e.get("name")
    if not isinstance(name, str) or not name:
        raise FormatError(f"modules[{i}]: name must be a non-empty string, got {name!r}")
    if "\0" in name:
        raise FormatError(f"module {name!r}: a name must not contain NUL")
    for key in ("m", "n", "r", "group_size"):
        if not _is_count(e.get(key)):
            raise FormatError(f"module {name!r}: {key} must be a non-negative integer, "
                              f"got {e.get(key)!r}")
    if not _finite_number(e.get("scaling")):
        raise FormatError(f"module {name!r}: scaling must be a finite number, "
                          f"got {e.get('scaling')!r}")
    w = e.get("widths")
    if (not isinstance(w, list) or len(w) != e["r"]
            or not all(isinstance(p, list) and len(p) == 2
                       and all(_is_count(x) and x <= 8 for x in p) for p in w)):
        raise FormatError(f"module {name!r}: widths must be {e['r']} pairs "
                          f"[b_width, a_width] of integers in 0..8, got {w!r}")
    return e


def _module_tensors_v1(entries: dict, modules: list) -> set:
    if len(set(modules)) != len(modules):
        raise FormatError("a module name appears twice in 'modules'")
    owned = set()
    for name in modules:
        for tensor in (blob_name_v1(name), sigma_name_v1(name)):
            if tensor not in entries:
                raise FormatError(f"module {name!r}: tensor {tensor!r} is missing")
            owned.add(tensor)
    return owned


def _modules_v1(modules: list, entries: dict, data: memoryview) -> dict:
    out = {}
    for m in modules:
        name = m["name"]
        blob, sigma = entries[blob_name_v1(name)], entries[sigma_name_v1(name)]
        if blob.dtype != "U8" or len(blob.shape) != 1:
            raise FormatError(f"module {name!r}: blob must be U8 [bytes], got {blob.dtype} "
                              f"{list(blob.shape)}")
        if sigma.dtype != "F32" or sigma.shape != (m["r"],):
            raise FormatError(f"module {name!r}: sigma must be F32 [{m['r']}], got "
                              f"{sigma.dtype} {list(sigma.shape)}")
        q = _blob(data[blob.begin:blob.end], name)
        declared = ((m["m"], m["n"]), m["r"], m["group_size"], [tuple(p) for p in m["widths"]])
        actual = (q.shape, q.rank, q.group_size, q.widths)
        if declared != actual:
            raise FormatError(f"module {name!r}: its entry says (shape, r, group_size, "
                              f"widths) = {declared} but its blob header says {actual}")
        q.singular_values = _sigma_values(data, sigma.begin, m["r"], name)
        out[name] = q
    return out


def _torch_tensor(entry: st.Entry, data: memoryview):
    import torch

    dtype = getattr(torch, st.DTYPES[entry.dtype][0])
    if entry.begin == entry.end:
        return torch.empty(entry.shape, dtype=dtype)
    raw = torch.frombuffer(bytearray(data[entry.begin:entry.end]), dtype=torch.uint8)
    return raw.view(dtype).reshape(entry.shape)
