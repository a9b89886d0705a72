"""Bad arguments to every public function and to the CLI: wrong types, shapes and
dtypes, NaN and Inf, empty input, huge ranks, negative sizes. Each gets a clear
TypeError, ValueError or FormatError (a one-line error from the CLI), never a crash
or a hang."""
import os
import re
import types

import numpy as np
import pytest
import torch

import _peft_fixtures as F
import loraquant
from loraquant import FormatError, cli
from _hostile import modules, pair

A, B = pair(0, 24, 17, 4)
ONE = {"m": (A, B, 1.0)}


@pytest.fixture(scope="module")
def c(tmp_path_factory):
    """What the rows call with: a module, a saved file, a PEFT directory, a FIFO."""
    tmp = tmp_path_factory.mktemp("args")
    mods = modules()
    loraquant.save(tmp / "a.lqa", mods)
    os.mkfifo(tmp / "fifo.lqa")
    return types.SimpleNamespace(q=next(iter(mods.values())), mods=mods, tmp=tmp,
                                 path=tmp / "a.lqa", fifo=tmp / "fifo.lqa",
                                 peft=F.save_adapter("llama_rslora", tmp / "peft"))


def _nested(depth: int) -> dict:
    """{"a": {"a": ... {}}}: `depth` objects inside each other."""
    top = node = {}
    for _ in range(depth - 1):
        node["a"] = {}
        node = node["a"]
    return top


def _x(*shape, dtype=np.float32, fill=1.0):
    return np.full(shape, fill, dtype=dtype)


#: id -> (call(c), exception, message pattern)
ROWS = {
    # compress
    "compress A a list": (lambda c: loraquant.compress([[1.0]], B), TypeError, "torch.Tensor or numpy"),
    "compress A 3-D": (lambda c: loraquant.compress(_x(1, 4, 17), B), ValueError, "2-D"),
    "compress A int": (lambda c: loraquant.compress(A.astype(np.int64), B), TypeError, "dtype"),
    "compress B bool tensor": (lambda c: loraquant.compress(A, torch.ones(24, 4, dtype=torch.bool)),
                               TypeError, "dtype"),
    "compress A NaN": (lambda c: loraquant.compress(A * np.nan, B), ValueError, "NaN"),
    "compress B Inf": (lambda c: loraquant.compress(A, B * np.inf), ValueError, "Inf"),
    "compress empty": (lambda c: loraquant.compress(_x(0, 17), _x(24, 0)), ValueError, "empty"),
    "compress rank 5000": (lambda c: loraquant.compress(_x(5000, 2), _x(2, 5000)), ValueError,
                           "rank 5000 exceeds the maximum 4096"),
    "compress n past 2^24": (lambda c: loraquant.compress(_x(1, (1 << 24) + 1), _x(1, 1)),
                             ValueError, "out of range"),
    "compress group -8": (lambda c: loraquant.compress(A, B, group_size=-8), ValueError, "group_size"),
    "compress group 2^20+1": (lambda c: loraquant.compress(A, B, group_size=(1 << 20) + 1),
                              ValueError, "group_size must be in 1..1048576"),
    "compress bits NaN": (lambda c: loraquant.compress(A, B, bits=float("nan")), ValueError, "bits"),
    "compress bits -2": (lambda c: loraquant.compress(A, B, bits=-2), ValueError, "bits"),
    "compress bits True": (lambda c: loraquant.compress(A, B, bits=True), TypeError, "bits"),
    "compress rho Inf": (lambda c: loraquant.compress(A, B, rho=float("inf")), ValueError, "rho"),
    "compress scaling NaN": (lambda c: loraquant.compress(A, B, scaling=float("nan")),
                             ValueError, "scaling"),
    "compress scaling str": (lambda c: loraquant.compress(A, B, scaling="1"), TypeError, "scaling"),
    # compress_adapter
    "adapter not a mapping": (lambda c: loraquant.compress_adapter([(A, B, 1.0)]), TypeError, "mapping"),
    "adapter empty": (lambda c: loraquant.compress_adapter({}), ValueError, "empty"),
    "adapter pair of 2": (lambda c: loraquant.compress_adapter({"m": (A, B)}), ValueError,
                          "expected \\(A, B, scaling\\)"),
    "adapter NaN scaling": (lambda c: loraquant.compress_adapter({"m": (A, B, np.nan)}),
                            ValueError, "module 'm': scaling must be finite"),
    "adapter bad dtype": (lambda c: loraquant.compress_adapter({"m": (A.astype(int), B, 1.0)}),
                          TypeError, "module 'm': A has unsupported dtype"),
    "adapter rank 5000": (lambda c: loraquant.compress_adapter({"m": (_x(5000, 2), _x(2, 5000), 1.0)}),
                          ValueError, "module 'm': rank 5000"),
    "adapter threads -1": (lambda c: loraquant.compress_adapter(ONE, threads=-1), ValueError, "threads"),
    "adapter threads 2.5": (lambda c: loraquant.compress_adapter(ONE, threads=2.5), TypeError, "threads"),
    "adapter balance": (lambda c: loraquant.compress_adapter(ONE, balance="x"), ValueError, "balance"),
    # QuantizedLoRA
    "apply list": (lambda c: c.q.apply([[1.0] * 17]), TypeError, "torch.Tensor or numpy"),
    "apply scalar": (lambda c: c.q.apply(np.float32(1)), TypeError, "torch.Tensor or numpy"),
    "apply 0-d array": (lambda c: c.q.apply(np.array(1.0)), ValueError, "last dimension must be n = 17"),
    "apply wrong n": (lambda c: c.q.apply(_x(3, 16)), ValueError, "last dimension must be n = 17"),
    "apply empty last dim": (lambda c: c.q.apply(_x(3, 0)), ValueError, "n = 17"),
    "apply complex": (lambda c: c.q.apply(_x(2, 17, dtype=np.complex64)), TypeError, "floating"),
    "apply int tensor": (lambda c: c.q.apply(torch.ones(2, 17, dtype=torch.int32)), TypeError, "floating"),
    "from_bytes str": (lambda c: loraquant.QuantizedLoRA.from_bytes("LQM1"), TypeError, "bytes"),
    "from_bytes array": (lambda c: loraquant.QuantizedLoRA.from_bytes(_x(60, dtype=np.uint8)),
                         TypeError, "bytes"),
    "from_bytes empty": (lambda c: loraquant.QuantizedLoRA.from_bytes(b""), FormatError, "truncated"),
    "dequantize an argument": (lambda c: c.q.dequantize(1), TypeError, "positional argument"),
    # save
    "save path int": (lambda c: loraquant.save(5, c.mods), TypeError, "PathLike"),
    "save list": (lambda c: loraquant.save(c.tmp / "x.lqa", [c.q]), TypeError, "mapping"),
    "save empty": (lambda c: loraquant.save(c.tmp / "x.lqa", {}), ValueError, "at least one module"),
    "save scaling NaN": (lambda c: loraquant.save(c.tmp / "x.lqa", c.mods,
                                                  scalings={k: np.nan for k in c.mods}),
                         ValueError, "scaling of .* must be finite"),
    "save scaling str": (lambda c: loraquant.save(c.tmp / "x.lqa", c.mods,
                                                  scalings={k: "2" for k in c.mods}),
                         TypeError, "scaling of .* must be a number"),
    "save peft_config str": (lambda c: loraquant.save(c.tmp / "x.lqa", c.mods, peft_config="{}"),
                             TypeError, "peft_config must be a mapping"),
    "save peft_config NaN": (lambda c: loraquant.save(c.tmp / "x.lqa", c.mods,
                                                      peft_config={"r": float("nan")}),
                             ValueError, "cannot be stored as JSON"),
    "save peft_config 65 deep": (lambda c: loraquant.save(c.tmp / "x.lqa", c.mods,
                                                          peft_config=_nested(65)),
                                 ValueError, "nests deeper than 64"),
    "save peft_config 5000 deep": (lambda c: loraquant.save(c.tmp / "x.lqa", c.mods,
                                                            peft_config=_nested(5000)),
                                   ValueError, "nests deeper than 64"),
    "save extras list": (lambda c: loraquant.save(c.tmp / "x.lqa", c.mods, extras=["w"]),
                         TypeError, "extras must be a mapping"),
    "save extra numpy": (lambda c: loraquant.save(c.tmp / "x.lqa", c.mods, extras={"w": _x(2)}),
                         TypeError, "must be a torch.Tensor"),
    # load
    "load int": (lambda c: loraquant.load(5), TypeError, "PathLike"),
    "load missing": (lambda c: loraquant.load(c.tmp / "nope.lqa"), FileNotFoundError, "nope.lqa"),
    "load a directory": (lambda c: loraquant.load(c.tmp), IsADirectoryError, "Is a directory"),
    "load a FIFO (used to block forever)": (lambda c: loraquant.load(c.fifo), FormatError,
                                            "not a regular file"),
    "load /dev/zero": (lambda c: loraquant.load("/dev/zero"), FormatError, "not a regular file"),
    # PEFT side
    "compress_peft int": (lambda c: loraquant.compress_peft(5), TypeError, "PathLike"),
    "compress_peft a file": (lambda c: loraquant.compress_peft(c.path), FileNotFoundError,
                             "no such adapter directory"),
    "compress_peft group -1": (lambda c: loraquant.compress_peft(c.peft, group_size=-1),
                               ValueError, "group_size"),
    "export dtype": (lambda c: loraquant.export_peft(c.path, c.tmp / "o", dtype="int8"),
                     ValueError, "dtype must be one of"),
    "export int": (lambda c: loraquant.export_peft(5, c.tmp / "o"), TypeError, "PathLike"),
    "export onto a file": (lambda c: loraquant.export_peft(c.path, c.path), FileExistsError,
                           "File exists"),
    "load_adapter model str": (lambda c: loraquant.load_adapter("model", c.path), TypeError,
                               "torch.nn.Module"),
    "load_adapter other model": (lambda c: loraquant.load_adapter(torch.nn.Linear(2, 2), c.path),
                                 ValueError, "has no submodule"),
    "quantize_peft_model Linear": (lambda c: loraquant.quantize_peft_model(torch.nn.Linear(2, 2)),
                                   TypeError, "expected a peft.PeftModel"),
    "quantize_peft_model bits": (lambda c: loraquant.quantize_peft_model(F.peft_model("llama_rslora"),
                                                                         bits=-1),
                                 ValueError, "bits"),
}


@pytest.mark.parametrize("row", sorted(ROWS))
def test_bad_argument_gets_a_clear_error(c, row):
    call, kind, match = ROWS[row]
    with pytest.raises(kind, match=match):
        call(c)


def test_group_larger_than_the_vector_is_one_group():
    """Not an error: format.h defines it as one group (one scale) per vector, so the
    payload is that of a group as long as the longer vector (m = 24)."""
    q = loraquant.compress(A, B, bits=4.0, group_size=1 << 20)
    assert q.group_size == 1 << 20 and any(b > 0 for b, _ in q.widths)
    assert q.core.payload() == loraquant.compress(A, B, bits=4.0, group_size=24).core.payload()


def test_nan_in_x_stays_in_its_row(c):
    """apply is a layer's forward: like a matmul it propagates NaN and Inf rather than
    checking every input, and a bad row never spreads to the others."""
    x = np.ones((3, 17), dtype=np.float32)
    x[1, 4] = np.nan
    x[2, 0] = np.inf
    y = c.q.apply(x)
    assert np.isnan(y[1]).all() and not np.isfinite(y[2]).any()
    assert np.array_equal(y[0], c.q.apply(x[:1])[0])


#: CLI arguments -> a pattern of the one error line (exit status 1)
CLI_ROWS = {
    "bits NaN": (["compress", "{peft}", "{tmp}/o.lqa", "--bits", "nan"], "bits must be in"),
    "bits Inf": (["compress", "{peft}", "{tmp}/o.lqa", "--bits", "inf"], "bits must be in"),
    "group -1": (["compress", "{peft}", "{tmp}/o.lqa", "--group-size", "-1"], "group_size"),
    "group 2^40": (["compress", "{peft}", "{tmp}/o.lqa", "--group-size", str(2 ** 40)], "group_size"),
    "high bits 99": (["compress", "{peft}", "{tmp}/o.lqa", "--rho", "0.5", "--high-bits", "99"],
                     "high_bits"),
    "missing directory": (["compress", "{tmp}/nope", "{tmp}/o.lqa"], "no such adapter directory"),
    "inspect a FIFO": (["inspect", "{fifo}"], "not a regular file"),
    "inspect a directory": (["inspect", "{tmp}"], "Is a directory"),
    "export a FIFO": (["export", "{fifo}", "{tmp}/out"], "not a regular file"),
}


@pytest.mark.parametrize("row", sorted(CLI_ROWS))
def test_cli_bad_argument_is_one_line(c, capsys, row):
    args, match = CLI_ROWS[row]
    argv = [a.format(peft=c.peft, tmp=c.tmp, fifo=c.fifo) for a in args]
    status = cli.main(argv + (["--quiet"] if args[0] == "compress" else []))
    out, err = capsys.readouterr()
    assert status == 1 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"loraquant {args[0]}: error: ")
    assert re.search(match, err)


@pytest.mark.parametrize("args", [["compress", "x", "y", "--bits", "abc"],
                                  ["export", "x", "y", "--dtype", "int8"], ["inspect"]])
def test_cli_unparsable_arguments_are_a_usage_error(capsys, args):
    with pytest.raises(SystemExit) as info:
        cli.main(args)
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.strip().splitlines()[-1].startswith(f"loraquant {args[0]}: error:")
