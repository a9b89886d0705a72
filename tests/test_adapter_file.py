"""loraquant.save / loraquant.load: round trips, atomic writes, and malformed files.

The layout under test is the one at the end of cpp/include/loraquant/format.h: version 2,
which save writes, and version 1, which load still reads (tests/data/adapter-v1.lqa).
"""
import errno
import json
import os
import struct
import zlib

import numpy as np
import pytest
import torch

import loraquant
from loraquant import CompressedAdapter, FormatError, adapter_file
from _hostile import NAMES, V1_FILE, fix_modules_crc

# Singular values are stored as float32: one float32 rounding off.
SIGMA_RTOL = 1e-6
# Singular values recomputed from a dequantized update (thin SVD in float64 of float32
# factors) against numpy's SVD of the same product.
SVD_RTOL = 1e-5


def _pair(seed, m, n, r):
    g = np.random.default_rng(seed)
    return g.standard_normal((r, n)), g.standard_normal((m, r))


def _modules():
    """Three small modules with awkward shapes, in a deliberate (non-sorted) order."""
    shapes = {"base_model.model.z.q_proj": (48, 33, 5), "base_model.model.a.v_proj": (7, 20, 3),
              "base_model.model.m.fc": (130, 17, 8)}
    return {name: loraquant.compress(*_pair(i, *shape), bits=2.0, scaling=0.5 + i)
            for i, (name, shape) in enumerate(shapes.items())}


def _extras():
    g = torch.Generator().manual_seed(0)
    return {"base_model.model.lm_head.weight": torch.randn(5, 3, generator=g).to(torch.bfloat16),
            "base_model.model.z.q_proj.lora_B.bias": torch.randn(7, generator=g).half(),
            "counts": torch.arange(3, dtype=torch.int64), "mask": torch.tensor([True, False]),
            "empty": torch.zeros(0, 4), "scalar": torch.tensor(2.5, dtype=torch.float64)}


@pytest.fixture
def adapter():
    mods = _modules()
    return CompressedAdapter(mods, peft_config={"peft_type": "LORA", "r": 8},
                             extras=_extras(), scalings={n: 0.5 + i for i, n in enumerate(mods)})


@pytest.fixture
def saved(tmp_path, adapter):
    path = tmp_path / "a.lqa"
    loraquant.save(path, adapter)
    return path


# --- round trips --------------------------------------------------------------------

def test_round_trip_keeps_modules_order_and_metadata(saved, adapter):
    back = loraquant.load(saved)
    assert list(back) == list(adapter)
    for name, q in adapter.items():
        assert back[name].to_bytes() == q.to_bytes()
        np.testing.assert_allclose(back[name].singular_values, q.singular_values, rtol=SIGMA_RTOL)
    assert back.scalings == adapter.scalings
    assert back.peft_config == adapter.peft_config
    assert list(back.extras) == list(adapter.extras)
    for name, t in adapter.extras.items():
        assert back.extras[name].dtype == t.dtype
        assert torch.equal(back.extras[name], t)
    assert back.avg_bits == pytest.approx(adapter.avg_bits)


def test_saving_a_loaded_adapter_gives_the_same_bytes(tmp_path, saved):
    again = tmp_path / "again.lqa"
    loraquant.save(again, loraquant.load(saved))
    assert again.read_bytes() == saved.read_bytes()


def test_plain_dict_with_keyword_arguments(tmp_path):
    mods = _modules()
    path = tmp_path / "p.lqa"
    loraquant.save(path, mods, scalings={"base_model.model.m.fc": 4.0}, peft_config={"r": 3})
    back = loraquant.load(path)
    assert back.scalings == {"base_model.model.z.q_proj": 1.0, "base_model.model.a.v_proj": 1.0,
                             "base_model.model.m.fc": 4.0}
    assert back.peft_config == {"r": 3} and back.extras == {}


def test_keywords_replace_an_adapters_own_fields(tmp_path, adapter):
    path = tmp_path / "k.lqa"
    loraquant.save(path, adapter, extras={}, peft_config={"peft_type": "LORA", "r": 2})
    back = loraquant.load(path)
    assert back.extras == {} and back.peft_config["r"] == 2
    assert back.scalings == adapter.scalings


def test_compress_options_round_trip_and_are_left_out_when_unknown(tmp_path, saved):
    assert loraquant.load(saved).options == {}
    assert "compress_options" not in _header(saved)[1]["__metadata__"]
    options = {"mode": "paper", "rho": 0.9, "high_bits": 3, "group_size": 64}
    path = tmp_path / "o.lqa"
    loraquant.save(path, CompressedAdapter(_modules(), options=options))
    assert json.loads(_header(path)[1]["__metadata__"]["compress_options"]) == options
    back = loraquant.load(path)
    assert back.options == options
    again = tmp_path / "again.lqa"
    loraquant.save(again, back)
    assert again.read_bytes() == path.read_bytes()


@pytest.mark.parametrize("text", ["[1, 2]", "{", '"budget"', '{"bits": 1e999}'])
def test_compress_options_that_are_not_an_object_read_as_unknown(tmp_path, saved, text):
    """Informational, and ignored by the C++ reader: never a reason to refuse a file."""
    path = _rewrite(saved, tmp_path / "odd.lqa",
                    edit_header=lambda h: h["__metadata__"].update(compress_options=text))
    assert loraquant.load(path).options == {}


def test_module_without_singular_values_stores_those_of_its_update(tmp_path):
    q = loraquant.compress(*_pair(5, 40, 24, 6), bits=3.0)
    bare = loraquant.QuantizedLoRA.from_bytes(q.to_bytes())
    assert bare.singular_values is None
    path = tmp_path / "bare.lqa"
    loraquant.save(path, {"m": bare})
    a, b = bare.dequantize()
    expected = np.linalg.svd((b @ a).double().numpy(), compute_uv=False)[:6]
    np.testing.assert_allclose(loraquant.load(path)["m"].singular_values, expected,
                               rtol=SVD_RTOL, atol=SVD_RTOL * expected[0])


def test_common_safetensors_tools_can_list_the_file(saved, adapter):
    from safetensors import safe_open

    with safe_open(str(saved), "pt") as f:
        assert f.metadata()["format"] == "loraquant-adapter"
        assert f.metadata()["format_version"] == "2"
        names = set(f.keys())
        assert torch.equal(f.get_tensor("counts"), adapter.extras["counts"])
        blobs = f.get_tensor("lq.blobs")
        sigma = f.get_tensor("lq.sigma")
    assert names == {"lq.blobs", "lq.sigma"} | set(adapter.extras)
    assert blobs.dtype == torch.uint8 and len(blobs) == sum(len(q.to_bytes()) for q in adapter.values())
    assert sigma.dtype == torch.float32 and len(sigma) == sum(q.rank for q in adapter.values())


def _header(path):
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return n, json.loads(data[8:8 + n]), data


def test_the_header_holds_a_short_entry_per_module(saved, adapter):
    _, header, _ = _header(saved)
    meta = header["__metadata__"]
    assert meta["module_prefix"] == "base_model.model."
    assert json.loads(meta["modules"]) == [
        [name[len("base_model.model."):], len(q.to_bytes()), adapter.scalings[name]]
        for name, q in adapter.items()]
    assert ", " not in meta["modules"]  # no spaces


@pytest.mark.parametrize("names, prefix", [
    (["base_model.model.layers.0.q_proj", "base_model.model.layers.1.q_proj"],
     "base_model.model.layers."),
    (["base_model.model.layers.10.q", "base_model.model.layers.11.q"], "base_model.model.layers."),
    (["a.b.c"], "a.b."),
    (["x", "y"], ""),
    (["fc", "fc2"], ""),
    (["caf\u00e9.a", "caf\u00e9.b"], "caf\u00e9."),
])
def test_module_prefix_ends_at_a_dot(names, prefix):
    assert adapter_file.module_prefix(names) == prefix


def test_data_and_blobs_are_aligned(saved):
    n, header, _ = _header(saved)
    assert (8 + n) % 8 == 0
    meta = header.pop("__metadata__")
    for name, entry in header.items():
        begin = entry["data_offsets"][0]
        align = adapter_file.st.DTYPES[entry["dtype"]][1] if name != "lq.blobs" else 4
        assert begin % align == 0, (name, begin, align)
    at = header["lq.blobs"]["data_offsets"][0]
    for _, size, _ in json.loads(meta["modules"]):
        assert at % 4 == 0 and size % 4 == 0
        at += size


def test_the_file_is_small_for_many_small_modules(tmp_path):
    """72 modules of r = 4: besides the packed payload, the file spends the 48-byte blob
    header, the singular values and a header entry of a few dozen bytes per module
    (version 1 spent about 420 bytes of JSON per module)."""
    g = np.random.default_rng(0)
    mods = {f"base_model.model.model.layers.{k // 4}.self_attn.{t}_proj":
            loraquant.compress(g.standard_normal((4, 64)), g.standard_normal((64, 4)), bits=2.0)
            for k, t in enumerate(["q", "k", "v", "o"] * 18)}
    path = tmp_path / "many.lqa"
    loraquant.save(path, mods)
    n, _, data = _header(path)
    per_module = (len(data) - sum(q.nbytes for q in mods.values())) / len(mods)
    json_per_module = (8 + n) / len(mods)
    assert json_per_module < 60, json_per_module
    assert per_module < 48 + 4 * 4 + 60, per_module


# --- version 1 ----------------------------------------------------------------------

def test_a_version_1_file_loads():
    old = loraquant.load(V1_FILE)
    assert list(old) == list(NAMES)
    assert old.scalings == {NAMES[0]: 2.0, NAMES[1]: 0.5}
    assert [q.rank for q in old.values()] == [4, 3]
    assert all(len(q.singular_values) == q.rank for q in old.values())
    assert old.peft_config == {"peft_type": "LORA", "r": 4, "note": "caf\u00e9"}
    assert torch.equal(old.extras["w"], torch.ones(3, 2))
    assert old.extras["empty"].shape == (0, 5)
    assert torch.equal(old.extras["base_model.model.lm_head.weight"],
                       torch.arange(6, dtype=torch.bfloat16).reshape(2, 3))


def test_a_version_1_file_saved_again_is_version_2_and_the_same(tmp_path):
    old = loraquant.load(V1_FILE)
    loraquant.save(tmp_path / "v2.lqa", old)
    _, header, data = _header(tmp_path / "v2.lqa")
    assert header["__metadata__"]["format_version"] == "2"
    assert len(data) < V1_FILE.stat().st_size
    new = loraquant.load(tmp_path / "v2.lqa")
    assert list(new) == list(old) and new.scalings == old.scalings
    for name, q in old.items():
        assert new[name].to_bytes() == q.to_bytes()
        np.testing.assert_array_equal(new[name].singular_values, q.singular_values)
    assert new.peft_config == old.peft_config
    assert all(torch.equal(new.extras[k], old.extras[k]) for k in old.extras)


# --- atomic save --------------------------------------------------------------------

def _leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_failed_fsync_leaves_the_old_file_intact(tmp_path, saved, monkeypatch):
    old = saved.read_bytes()

    def broken_fsync(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(adapter_file.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="cannot save the adapter to .*a.lqa") as info:
        loraquant.save(saved, _modules())
    assert info.value.errno == errno.EIO
    assert saved.read_bytes() == old
    assert _leftovers(tmp_path) == []


class _FullDisk:
    """A file object that accepts one write, then fails as a full disk does."""

    def __init__(self, f):
        self.f, self.writes = f, 0

    def write(self, chunk):
        self.writes += 1
        if self.writes > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.f.write(chunk)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_failure_mid_write_leaves_the_old_file_intact(tmp_path, saved, monkeypatch):
    old = saved.read_bytes()
    real_fdopen = os.fdopen
    monkeypatch.setattr(adapter_file.os, "fdopen", lambda *a, **k: _FullDisk(real_fdopen(*a, **k)))
    with pytest.raises(OSError, match="No space left") as info:
        loraquant.save(saved, _modules())
    assert info.value.errno == errno.ENOSPC and str(saved) in str(info.value)
    monkeypatch.undo()
    assert saved.read_bytes() == old
    assert _leftovers(tmp_path) == []


def test_missing_directory_is_a_clear_error(tmp_path):
    target = tmp_path / "no" / "such" / "dir.lqa"
    with pytest.raises(FileNotFoundError, match="cannot save the adapter to .*dir.lqa"):
        loraquant.save(target, _modules())


def test_directory_as_destination_is_refused_and_cleaned_up(tmp_path):
    (tmp_path / "d.lqa").mkdir()
    with pytest.raises(IsADirectoryError, match="d.lqa"):
        loraquant.save(tmp_path / "d.lqa", _modules())
    assert _leftovers(tmp_path) == []


# --- what save refuses --------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, match", [
    (dict(adapter={}), ValueError, "at least one module"),
    (dict(adapter={"m": "not a module"}), TypeError, "expected a QuantizedLoRA"),
    (dict(adapter=None, extras={"lq.x.blob": torch.zeros(1)}), ValueError, "must not start with 'lq.'"),
    (dict(adapter=None, extras={"__metadata__": torch.zeros(1)}), ValueError, "not '__metadata__'"),

    (dict(adapter=None, extras={"w": np.zeros(2)}), TypeError, "must be a torch.Tensor"),
    (dict(adapter=None, scalings={"nope": 1.0}), ValueError, "does not have: \\['nope'\\]"),
    (dict(adapter=None, peft_config={"x": object()}), ValueError, "cannot be stored as JSON"),
])
def test_save_refuses_bad_input(tmp_path, kwargs, error, match):
    adapter = kwargs.pop("adapter")
    with pytest.raises(error, match=match):
        loraquant.save(tmp_path / "x.lqa", _modules() if adapter is None else adapter, **kwargs)
    assert not (tmp_path / "x.lqa").exists()


def test_save_refuses_a_module_name_with_nul(tmp_path):
    """The C API hands names out NUL-terminated: both readers refuse them."""
    with pytest.raises(ValueError, match="contains NUL"):
        loraquant.save(tmp_path / "x.lqa", {"q\0proj": next(iter(_modules().values()))})
    assert not (tmp_path / "x.lqa").exists()


# --- malformed files ----------------------------------------------------------------

def _rewrite(src, dst, edit_header=None, edit_data=None, fix_crc=True):
    """Copy a saved file with its JSON header and/or data section edited."""
    n, header, data = _header(src)
    body = bytearray(data[8 + n:])
    if edit_data:
        edit_data(body)
    if edit_header:
        edit_header(header)
    if fix_crc:
        header["__metadata__"]["data_crc32"] = f"{zlib.crc32(body):08x}"
        fix_modules_crc(header["__metadata__"])
    text = json.dumps(header).encode()
    dst.write_bytes(struct.pack("<Q", len(text)) + text + bytes(body))
    return dst


def _meta_json(key, edit):
    def go(header):
        value = json.loads(header["__metadata__"][key])
        edit(value)
        header["__metadata__"][key] = json.dumps(value)
    return go


def _set_entry(k, edit):
    """Edit module k's entry ([name, blob_bytes, scaling] in version 2)."""
    def go(modules):
        edit(modules[k])
    return _meta_json("modules", go)


def _set_item(k, i, value):
    def edit(entry):
        entry[i] = value
    return _set_entry(k, edit)


def _add(k, i, d):
    def edit(entry):
        entry[i] += d
    return _set_entry(k, edit)


def _shift(name):
    def edit(header):
        offsets = header[name]["data_offsets"]
        offsets[:] = [offsets[0] - 4, offsets[1] - 4]
    return edit


def _rename_as_extra(name):
    def edit(header):
        header["renamed"] = header.pop(name)
        extras = json.loads(header["__metadata__"]["extras"]) + ["renamed"]
        header["__metadata__"]["extras"] = json.dumps(extras)
    return edit


def _no_prefix_empty_name(header):
    header["__metadata__"]["module_prefix"] = ""
    _set_item(0, 0, "")(header)


def _sigma_as_f16(header):
    header["lq.sigma"].update(dtype="F16", shape=[2 * header["lq.sigma"]["shape"][0]])


#: version 2 (what save writes): case -> (how _rewrite edits the saved file, error)
MALFORMED = {
    "version": (dict(edit_header=lambda h: h["__metadata__"].update(format_version="3")),
                "format_version '3' is not supported; this loraquant reads versions '1' and '2'"),
    "not ours": (dict(edit_header=lambda h: h["__metadata__"].update(format="pt")),
                 "not a loraquant adapter file"),
    "crc text": (dict(edit_header=lambda h: h["__metadata__"].update(data_crc32="XYZ"),
                      fix_crc=False), "data_crc32 must be 8 lowercase hex"),
    "no modules key": (dict(edit_header=lambda h: h["__metadata__"].pop("modules")),
                       "metadata has no 'modules'"),
    "modules not json": (dict(edit_header=lambda h: h["__metadata__"].update(modules="[{")),
                         "'modules' is not valid JSON"),
    "no modules": (dict(edit_header=lambda h: h["__metadata__"].update(modules="[]")),
                   "the file lists no modules"),
    "no module prefix": (dict(edit_header=lambda h: h["__metadata__"].pop("module_prefix")),
                         "metadata has no 'module_prefix'"),
    "renamed, modules_crc32 kept": (
        dict(edit_header=lambda h: h["__metadata__"].update(module_prefix="base_model.modem."),
             fix_crc=False),
        "modules CRC-32 is [0-9a-f]{8} but the header says [0-9a-f]{8}: the module names"),
    "no modules_crc32": (dict(edit_header=lambda h: h["__metadata__"].pop("modules_crc32")),
                         "modules_crc32 must be 8 lowercase hex digits, got None"),
    "entry of two items": (dict(edit_header=_set_entry(0, list.pop)),
                           r"modules\[0\] must be \[name, blob_bytes, scaling\]"),
    "entry empty": (dict(edit_header=_set_entry(0, list.clear)),
                        r"modules\[0\] must be \[name, blob_bytes, scaling\]"),
    "name a number": (dict(edit_header=_set_item(0, 0, 7)), "name must be a string"),
    "empty name": (dict(edit_header=_no_prefix_empty_name), "non-empty after module_prefix"),
    "same name twice": (dict(edit_header=_set_item(1, 0, "z.q_proj")),
                        "module 'base_model.model.z.q_proj' appears twice"),
    "NUL in a name": (dict(edit_header=_set_item(0, 0, "z\0q")), "must not contain NUL"),
    "bool as int": (dict(edit_header=_set_item(0, 1, True)),
                    "blob_bytes must be a non-negative integer"),
    "blob_bytes 4 more": (dict(edit_header=_add(0, 1, 4)),
                          "module 'base_model.model.z.q_proj': trailing data"),
    "blob_bytes 4 fewer": (dict(edit_header=_add(0, 1, -4)),
                           "module 'base_model.model.z.q_proj': truncated"),
    "blob past lq.blobs": (dict(edit_header=_add(2, 1, 4)),
                           "blob_bytes .* is more than the .* bytes 'lq.blobs' has left"),
    "scaling": (dict(edit_header=_set_item(0, 2, "big")), "scaling must be a finite"),
    "sigma of F16": (dict(edit_header=_sigma_as_f16), r"'lq.sigma' must be F32 \[values\]"),
    "missing sigma": (dict(edit_header=_rename_as_extra("lq.sigma")), "tensor 'lq.sigma' is missing"),
    "dropped entry": (dict(edit_header=lambda h: h.pop("lq.sigma")), "leaves a gap before it"),
    "stray tensor": (dict(edit_header=_meta_json("extras", lambda x: x.remove("counts"))),
                     "belong to no module"),
    "extra not present": (dict(edit_header=_meta_json("extras", lambda x: x.append("ghost"))),
                          "extra 'ghost' is not a tensor"),
    "extra named lq.": (dict(edit_header=_meta_json("extras", lambda x: x.append("lq.sigma"))),
                        "extra 'lq.sigma' is not a tensor of its own"),
    "overlap": (dict(edit_header=_shift("lq.sigma")), "overlaps the tensor before it"),
    "size mismatch": (dict(edit_header=lambda h: h["counts"].update(shape=[2])),
                      "needs 16 bytes but its data_offsets span 24"),
    "huge tensor": (dict(edit_header=lambda h: h["counts"].update(
        shape=[2 ** 40], data_offsets=[0, 2 ** 43])), "run past the data section"),
    "unknown dtype": (dict(edit_header=lambda h: h["counts"].update(dtype="Q7")),
                      "unknown dtype 'Q7'"),
}


def _set_module_field(key, value):
    def edit(entry):
        entry[key] = value
    return _set_entry(0, edit)


#: version 1 (tests/data/adapter-v1.lqa): case -> (how _rewrite edits it, error)
MALFORMED_V1 = {
    "entry without a name": (dict(edit_header=_set_entry(0, dict.clear)),
                            "modules\\[0\\]: name must be a non-empty string"),
    "widths disagree": (dict(edit_header=_set_module_field("widths", [[8, 8]] * 4)),
                        "its blob header says"),
    "rank disagrees": (dict(edit_header=_set_module_field("r", 5)), "widths must be 5 pairs"),
    "shape disagrees": (dict(edit_header=_set_module_field("m", 47)), "its blob header says"),
    "bool as int": (dict(edit_header=_set_module_field("n", True)), "n must be a non-negative"),
    "scaling": (dict(edit_header=_set_module_field("scaling", "big")), "scaling must be a finite"),
    "missing sigma": (dict(edit_header=_rename_as_extra(f"lq.{NAMES[1]}.sigma")),
                      f"tensor 'lq.{NAMES[1]}.sigma' is missing"),
    "dropped entry": (dict(edit_header=lambda h: h.pop(f"lq.{NAMES[1]}.sigma")),
                      "leaves a gap before it"),
    "same name twice": (dict(edit_header=_meta_json("modules", lambda ms: ms.append(ms[0]))),
                        "a module name appears twice"),
    "called version 2": (dict(edit_header=lambda h: h["__metadata__"].update(format_version="2")),
                         "metadata has no 'module_prefix'"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_V1))
def test_malformed_version_1_header_is_a_format_error(tmp_path, case):
    kwargs, match = MALFORMED_V1[case]
    bad = _rewrite(V1_FILE, tmp_path / "bad.lqa", **kwargs)
    with pytest.raises(FormatError, match=match) as info:
        loraquant.load(bad)
    assert str(bad) in str(info.value)


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_header_is_a_format_error(tmp_path, saved, case):
    kwargs, match = MALFORMED[case]
    bad = _rewrite(saved, tmp_path / "bad.lqa", **kwargs)
    with pytest.raises(FormatError, match=match) as info:
        loraquant.load(bad)
    assert isinstance(info.value, ValueError)
    assert str(bad) in str(info.value)


def test_corrupt_blob_with_a_matching_file_crc_names_the_module(tmp_path, saved):
    _, header, _ = _header(saved)
    sizes = [size for _, size, _ in json.loads(header["__metadata__"]["modules"])]
    begin = header["lq.blobs"]["data_offsets"][0] + sizes[0] + sizes[1]  # the third: m.fc
    pos = begin + adapter_file._core.BLOB_HEADER_BYTES + 8  # inside the payload

    def flip(body):
        body[pos] ^= 0xFF

    bad = _rewrite(saved, tmp_path / "blob.lqa", edit_data=flip)
    with pytest.raises(FormatError, match="module 'base_model.model.m.fc': .*checksum"):
        loraquant.load(bad)


def test_flipped_byte_fails_the_crc(tmp_path, saved):
    data = bytearray(saved.read_bytes())
    data[-3] ^= 0x10
    (tmp_path / "flip.lqa").write_bytes(bytes(data))
    with pytest.raises(FormatError, match="CRC-32 .* the file is corrupt"):
        loraquant.load(tmp_path / "flip.lqa")


@pytest.mark.parametrize("keep, match", [
    (-10, "run past the data section|cover"),
    (200, "header declares .* bytes of JSON but the file has only"),
    (5, "too short for a safetensors header"),
    (0, "too short"),
])
def test_truncated_file_is_a_format_error(tmp_path, saved, keep, match):
    data = saved.read_bytes()
    (tmp_path / "cut.lqa").write_bytes(data[:keep])
    with pytest.raises(FormatError, match=match):
        loraquant.load(tmp_path / "cut.lqa")


def test_huge_declared_header_is_refused_before_reading(tmp_path):
    path = tmp_path / "huge.lqa"
    path.write_bytes(struct.pack("<Q", 2 ** 62) + b"{}")
    with pytest.raises(FormatError, match="header declares 4611686018427387904 bytes"):
        loraquant.load(path)


def test_header_over_the_limit_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(adapter_file.st, "MAX_HEADER_BYTES", 16)
    path = tmp_path / "big.lqa"
    path.write_bytes(struct.pack("<Q", 40) + b"{" + b" " * 38 + b"}")
    with pytest.raises(FormatError, match="more than the limit 16"):
        loraquant.load(path)


@pytest.mark.parametrize("text, match", [
    (b"[1, 2]", "must be an object"),
    (b'{"a": 1, "a": 2}', "repeats the key"),
    (b'{"a": NaN}', "contains NaN"),
    (b"\xff\xfe", "not valid UTF-8"),
    (b"{not json", "does not parse"),
])
def test_bad_json_header_is_a_format_error(tmp_path, text, match):
    path = tmp_path / "j.lqa"
    path.write_bytes(struct.pack("<Q", len(text)) + text)
    with pytest.raises(FormatError, match=match):
        loraquant.load(path)


def test_gap_in_the_data_section_is_a_format_error(tmp_path, saved):
    bad = _rewrite(saved, tmp_path / "gap.lqa", edit_data=lambda body: body.extend(b"\0" * 8))
    with pytest.raises(FormatError, match="data section has .* bytes but the tensors cover"):
        loraquant.load(bad)
