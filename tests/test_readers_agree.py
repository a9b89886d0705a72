"""loraquant.load and the C++ reader (parse_adapter, through the C API) accept the same
files. Each case is a disagreement the differential fuzzer found (fuzz_load.py
--c-library); both readers now give the verdict on the right."""
import ctypes as C
import json
import re
import struct

import numpy as np
import pytest

import loraquant
from loraquant import FormatError
import _capi
from _cppbuild import installed  # noqa: F401  (a fixture: the session's C++ build)
from _hostile import (HUGE_PLACES, HUGE_SIZES, NAMES, V1_FILE, adapter_bytes, assemble, c_reader,
                      first_sigma, huge_size_files, modules, parts, rewrite, split, version)


@pytest.fixture(scope="module", params=["2", "1"], ids=["v2", "v1"])
def seed(request, tmp_path_factory):
    """A valid file of each format version."""
    return adapter_bytes(tmp_path_factory.mktemp("seed"), request.param)


def _sigma(value):
    def edit(head, rest):
        begin = first_sigma(head)
        rest[begin:begin + 4] = struct.pack("<f", value)
    return edit


def _raw_meta(key, text):
    def edit(head):
        head["__metadata__"][key] = text
    return edit


def _minus_zero_offset(data):
    """The file with the first tensor's offset 0 written as -0 (JSON's negative zero)."""
    n = struct.unpack_from("<Q", data)[0]
    head = json.loads(data[8:8 + n])
    first = next(k for k, v in head.items() if k != "__metadata__" and v["data_offsets"][0] == 0)
    head[first]["data_offsets"][0] = "MINUS_ZERO"
    text = json.dumps(head).replace('"MINUS_ZERO"', "-0").encode()
    return struct.pack("<Q", len(text)) + text + data[8 + n:]


def _with_1e999(modules: str) -> str:
    """1e999 in the first module's entry: an extra key (version 1), its scaling (2)."""
    if modules.startswith("[{"):
        return modules.replace('"name"', '"x": 1e999, "name"', 1)
    return re.sub(r",[-+0-9.eE]+\]", ",1e999]", modules, count=1)


#: case -> (make the file from the seed, does every reader accept it)
CASES = {
    "NaN singular value": (lambda d: rewrite(d, body=_sigma(float("nan"))), False),
    "negative singular value": (lambda d: rewrite(d, body=_sigma(-1.0)), False),
    "1e999 in peft_config": (lambda d: rewrite(d, header=_raw_meta("peft_config", '{"a": 1e999}')),
                             False),
    "lone surrogate in peft_config": (
        lambda d: rewrite(d, header=_raw_meta("peft_config", '{"a": "\\ud800"}')), False),
    "surrogate pair in peft_config": (
        lambda d: rewrite(d, header=_raw_meta("peft_config", '{"a": "\\ud83d\\ude00"}')), True),
    "400-digit integer in peft_config": (
        lambda d: rewrite(d, header=_raw_meta("peft_config", '{"a": ' + "9" * 400 + "}")), False),
    "1e999 in a module entry": (
        lambda d: rewrite(d, header=lambda h: h["__metadata__"].update(
            modules=_with_1e999(h["__metadata__"]["modules"]))), False),
    "dimension 2^63": (lambda d: rewrite(d, header=lambda h: h["empty"].update(shape=[2 ** 63, 0])),
                       False),
    "empty, strides past int64": (
        lambda d: rewrite(d, header=lambda h: h["empty"].update(shape=[0, 2 ** 62, 4])), False),
    "empty, strides within int64": (
        lambda d: rewrite(d, header=lambda h: h["empty"].update(shape=[0, 2 ** 60, 4])), True),
    "-0 as the first offset": (_minus_zero_offset, True),
    "peft_config nested 64 deep": (
        lambda d: rewrite(d, header=_raw_meta("peft_config", "{\"a\": " * 64 + "1" + "}" * 64)),
        True),
    "peft_config nested 65 deep": (
        lambda d: rewrite(d, header=_raw_meta("peft_config", "{\"a\": " * 65 + "1" + "}" * 65)),
        False),
    # compress_options is informational (format.h): no reader refuses a file for it
    "compress_options not JSON": (lambda d: rewrite(d, header=_raw_meta("compress_options", "{")),
                                  True),
    "compress_options nested 65 deep": (
        lambda d: rewrite(d, header=_raw_meta("compress_options",
                                              "{\"a\": " * 65 + "1" + "}" * 65)), True),
    "a valid file": (lambda d: d, True),
}


def _verdicts(library, tmp_path, data: bytes) -> tuple[bool, bool]:
    """(loraquant.load accepts the file, the C++ reader accepts it)."""
    path = tmp_path / "x.lqa"
    path.write_bytes(data)
    try:
        loraquant.load(path)
        ours = True
    except FormatError:
        ours = False
    return ours, not isinstance(c_reader(library).read(data), str)


@pytest.mark.parametrize("case", sorted(CASES))
def test_both_readers_give_the_same_verdict(installed, tmp_path, seed, case):  # noqa: F811
    make, accepted = CASES[case]
    ours, theirs = _verdicts(installed.c_library, tmp_path, make(seed))
    assert ours == theirs
    assert ours == accepted


def test_both_readers_read_the_same_content(installed, tmp_path, seed):  # noqa: F811
    """Names, scalings, blobs and singular values, from a file of each version."""
    path = tmp_path / "x.lqa"
    path.write_bytes(seed)
    got = loraquant.load(path)
    ours = [(name, got.scalings[name], q.to_bytes(), q.singular_values.astype("<f4").tobytes())
            for name, q in got.items()]
    assert c_reader(installed.c_library).read(seed) == ours
    assert [name for name, *_ in ours] == list(NAMES)


def test_a_version_1_file_reads_as_what_save_writes_now(installed, tmp_path):  # noqa: F811
    """The committed version-1 file, saved again (version 2): the same content; and
    the C++ writer, given its modules, writes the bytes loraquant.save writes."""
    old = loraquant.load(V1_FILE)
    assert old.scalings == {NAMES[0]: 2.0, NAMES[1]: 0.5}
    assert old.peft_config == {"peft_type": "LORA", "r": 4, "note": "caf\u00e9"}
    assert list(old.extras) == ["w", "empty", "base_model.model.lm_head.weight"]
    loraquant.save(tmp_path / "v2.lqa", old)
    new = (tmp_path / "v2.lqa").read_bytes()
    assert version(split(new)[0]) == "2" and len(new) < V1_FILE.stat().st_size
    reader = c_reader(installed.c_library)
    assert reader.read(new) == reader.read(V1_FILE.read_bytes())

    lib = _capi.load(installed.c_library)
    adapter, config, mods = _capi.Adapter(), C.c_char_p(), []
    _capi.call(lib, "lq_adapter_open", str(V1_FILE).encode(), C.byref(adapter))
    try:
        _capi.call(lib, "lq_adapter_peft_config", adapter, C.byref(config))
        for k in range(len(NAMES)):
            mods.append(_capi.Module())
            _capi.call(lib, "lq_adapter_module", adapter, k, C.byref(mods[-1]))
        _capi.write_file(lib, tmp_path / "c.lqa", mods, config.value.decode())
    finally:
        for m in mods:
            lib.lq_module_free(m)
        lib.lq_adapter_free(adapter)
    loraquant.save(tmp_path / "py.lqa", old, extras={})  # the C API writes no extras
    assert (tmp_path / "c.lqa").read_bytes() == (tmp_path / "py.lqa").read_bytes()


def _v2(edit):
    """The version-2 seed, taken apart, edited by edit(meta, modules, tensors) and put
    back together (its checksum recomputed)."""
    def make(data):
        meta, tensors = parts(data)
        modules = json.loads(meta["modules"])
        edit(meta, modules, tensors)
        meta["modules"] = json.dumps(modules)
        return assemble(meta, tensors)
    return make


def _spell_out(meta, modules, tensors):
    for m in modules:
        m[0] = meta["module_prefix"] + m[0]
    meta["module_prefix"] = ""


def _grow(name, raw: bytes, items: int):
    """Append raw bytes (`items` more elements) to a tensor."""
    def edit(meta, modules, tensors):
        tensors[name][1] = [tensors[name][1][0] + items]
        tensors[name][2] += raw
    return edit


def _shrink_sigma(meta, modules, tensors):
    tensors["lq.sigma"][1] = [tensors["lq.sigma"][1][0] - 1]
    tensors["lq.sigma"][2] = tensors["lq.sigma"][2][:-4]


def _set(index, value, module=0):
    def edit(meta, modules, tensors):
        modules[module][index] = value
    return edit


def _extra(name):
    def edit(meta, modules, tensors):
        tensors[name] = ["F32", [1], struct.pack("<f", 1.0)]
        meta["extras"] = json.dumps(json.loads(meta["extras"]) + [name])
    return edit


def _meta(key, value):
    def edit(meta, modules, tensors):
        if value is None:
            del meta[key]
        else:
            meta[key] = value
    return edit


def _both(*edits):
    def edit(meta, modules, tensors):
        for e in edits:
            e(meta, modules, tensors)
    return edit


#: version 2 only: case -> (make the file from the seed, does every reader accept it)
V2_CASES = {
    "names spelled out, no common prefix": (_v2(_spell_out), True),
    "a name empty after a prefix": (_v2(_set(0, "")), True),
    "a name empty without a prefix": (_v2(_both(_spell_out, _set(0, ""))), False),
    "no module_prefix": (_v2(_meta("module_prefix", None)), False),
    "the same name twice": (_v2(_set(0, "v_proj")), False),
    "a NUL in a name": (_v2(_set(0, "q\u0000proj")), False),
    "a lone surrogate in a name": (_v2(_set(0, "q\ud800proj")), False),
    "blob_bytes 4 too many": (_v2(lambda meta, ms, t: ms[0].__setitem__(1, ms[0][1] + 4)), False),
    "blob_bytes 4 too few": (_v2(lambda meta, ms, t: ms[0].__setitem__(1, ms[0][1] - 4)), False),
    "blob_bytes past the tensor": (_v2(lambda meta, ms, t: ms[1].__setitem__(1, ms[1][1] + 4)), False),
    "blob_bytes a float": (_v2(lambda meta, ms, t: ms[0].__setitem__(1, float(ms[0][1]))), False),
    "blob_bytes true": (_v2(_set(1, True)), False),
    "scaling a string": (_v2(_set(2, "2.0")), False),
    "an integer scaling": (_v2(_set(2, 3)), True),
    "an entry of four items": (_v2(lambda meta, ms, t: ms[0].append(0)), False),
    "an entry as an object": (_v2(_set(0, {"name": "q_proj"})), False),
    "a word after the last blob": (_v2(_grow("lq.blobs", bytes(4), 4)), False),
    "a singular value too many": (_v2(_grow("lq.sigma", struct.pack("<f", 1.0), 1)), False),
    "a singular value too few": (_v2(_shrink_sigma), False),
    "lq.sigma as two rows": (
        _v2(lambda meta, ms, t: t["lq.sigma"].__setitem__(1, [1, t["lq.sigma"][1][0]])), False),
    "lq.blobs as I8": (_v2(lambda meta, ms, t: t["lq.blobs"].__setitem__(0, "I8")), False),
    "no lq.sigma": (_v2(lambda meta, ms, t: t.pop("lq.sigma")), False),
    "an extra named lq.x": (_v2(_extra("lq.x")), False),
    "a stray version-1 tensor": (_v2(lambda meta, ms, t: t.__setitem__(
        f"lq.{NAMES[0]}.sigma", ["F32", [1], struct.pack("<f", 1.0)])), False),
    "called version 1": (_v2(_meta("format_version", "1")), False),
    "called version 3": (_v2(_meta("format_version", "3")), False),
}


@pytest.mark.parametrize("case", sorted(V2_CASES))
def test_both_readers_give_the_same_verdict_on_version_2(installed, tmp_path, case):  # noqa: F811
    make, accepted = V2_CASES[case]
    ours, theirs = _verdicts(installed.c_library, tmp_path, make(adapter_bytes(tmp_path)))
    assert ours == theirs
    assert ours == accepted


def test_a_version_1_file_called_version_2_is_refused(installed, tmp_path):  # noqa: F811
    data = rewrite(V1_FILE.read_bytes(), header=_raw_meta("format_version", "2"))
    assert _verdicts(installed.c_library, tmp_path, data) == (False, False)


def test_the_cpp_reader_refuses_every_huge_size_as_malformed(installed, seed):  # noqa: F811
    """As load does (test_hostile_files.py): a format error, not a failed allocation."""
    reader = c_reader(installed.c_library)
    files = list(huge_size_files(seed))
    assert len(files) == len(HUGE_SIZES) * HUGE_PLACES[version(split(seed)[0])]
    for what, data in files:
        verdict = reader.read(data)
        assert isinstance(verdict, str) and "adapter file: " in verdict, (what, verdict)


def _nested(depth: int) -> dict:
    return json.loads('{"a": ' * depth + "1" + "}" * depth)


INF = float("inf")
#: case -> (singular value, peft_config) for save and (float32 singular value, config
#: text) for the C API; None keeps the module's own singular values
BAD_ORIGINS = {
    "NaN singular value": (np.nan, {}, np.nan, "{}"),
    "negative singular value": (-1.0, {}, -1.0, "{}"),
    "singular value beyond float32": (1e300, {}, INF, "{}"),
    "Inf in peft_config": (None, {"a": INF}, None, '{"a": 1e999}'),
    "peft_config nested 65 deep": (None, _nested(65), None, json.dumps(_nested(65))),
}


@pytest.mark.parametrize("case", sorted(BAD_ORIGINS))
def test_both_writers_refuse_what_the_readers_refuse(installed, tmp_path, case):  # noqa: F811
    py_sigma, py_config, c_sigma, c_config = BAD_ORIGINS[case]
    q = modules()[NAMES[0]]
    if py_sigma is not None:
        q.singular_values = np.full(q.rank, py_sigma)
    with pytest.raises(ValueError):
        loraquant.save(tmp_path / "py.lqa", {NAMES[0]: q}, peft_config=py_config)
    lib = _capi.load(installed.c_library)
    blob = q.to_bytes()
    mod = _capi.Module()
    _capi.call(lib, "lq_module_from_bytes", NAMES[0].encode(), _capi.u8(blob), len(blob),
               C.byref(mod))
    sigma = np.full(q.rank, 1.0 if c_sigma is None else c_sigma, dtype=np.float32)
    _capi.call(lib, "lq_module_set_origin", mod, 1.0, _capi.f32(sigma), q.rank)
    code = lib.lq_write_adapter_file(str(tmp_path / "c.lqa").encode(), (_capi.Module * 1)(mod), 1,
                                     c_config.encode())
    lib.lq_module_free(mod)
    assert code == _capi.E_INVALID_ARGUMENT, _capi.last_error(lib)
    assert not (tmp_path / "c.lqa").exists() and not (tmp_path / "py.lqa").exists()
