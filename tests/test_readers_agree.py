"""loraquant.load and the C++ reader (parse_adapter, through the C API) accept the same
files. Each case is a disagreement the differential fuzzer found (fuzz_load.py
--c-library); both readers now give the verdict on the right."""
import ctypes as C
import json
import struct

import numpy as np
import pytest

import loraquant
from loraquant import FormatError
import _capi
from _cppbuild import installed  # noqa: F401  (a fixture: the session's C++ build)
from _hostile import HUGE_SIZES, NAMES, adapter_bytes, c_reader, huge_size_files, modules, rewrite


@pytest.fixture(scope="module")
def seed(tmp_path_factory):
    return adapter_bytes(tmp_path_factory.mktemp("seed"))


def _sigma(value):
    def edit(head, rest):
        begin, _ = head[f"lq.{NAMES[0]}.sigma"]["data_offsets"]
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


#: case -> (make the file from the seed, does every reader accept it)
CASES = {
    "NaN singular value": (lambda d: rewrite(d, body=_sigma(float("nan"))), False),
    "negative singular value": (lambda d: rewrite(d, body=_sigma(-1.0)), False),
    "1e999 in peft_config": (lambda d: rewrite(d, header=_raw_meta("peft_config", '{"a": 1e999}')),
                             False),
    "400-digit integer in peft_config": (
        lambda d: rewrite(d, header=_raw_meta("peft_config", '{"a": ' + "9" * 400 + "}")), False),
    "1e999 in an extra key of a module entry": (
        lambda d: rewrite(d, header=lambda h: h["__metadata__"].update(
            modules=h["__metadata__"]["modules"].replace('"name"', '"x": 1e999, "name"', 1))),
        False),
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


@pytest.mark.parametrize("case", sorted(CASES))
def test_both_readers_give_the_same_verdict(installed, tmp_path, seed, case):  # noqa: F811
    make, accepted = CASES[case]
    data = make(seed)
    path = tmp_path / "x.lqa"
    path.write_bytes(data)
    try:
        loraquant.load(path)
        ours = True
    except FormatError:
        ours = False
    theirs = not isinstance(c_reader(installed.c_library).read(data), str)
    assert ours == theirs
    assert ours == accepted


def test_the_cpp_reader_refuses_every_huge_size_as_malformed(installed, seed):  # noqa: F811
    """As load does (test_hostile_files.py): a format error, not a failed allocation."""
    reader = c_reader(installed.c_library)
    files = list(huge_size_files(seed))
    assert len(files) == len(HUGE_SIZES) * 12
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
