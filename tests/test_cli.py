"""The `loraquant` command: compress, inspect, export, and its error handling.

The main paths run in a real subprocess (`python -m loraquant ...`); error cases run
cli.main in-process, which returns the exit status instead of exiting.
"""
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np

import pytest
import torch
from safetensors.torch import load_file

import _peft_fixtures as F
from _peft_fixtures import run_cli
import loraquant
from loraquant import cli

PREFIX = "base_model.model."
# An average bit budget is met to rounding: the allocator never exceeds it.
BUDGET_SLACK = 1e-9
# The summary prints errors to 4 decimals; the core measures them in float64 while the
# test multiplies the float32 dequantized factors.
PRINTED_ERROR_ATOL = 2e-4


def run_main(capsys, *args):
    """cli.main in-process: (exit status, stdout, stderr)."""
    status = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return F.save_adapter("llama_patterns", tmp_path_factory.mktemp("llama") / "adapter")


@pytest.fixture(scope="module")
def compressed(llama_dir):
    out = llama_dir.parent / "adapter.lqa"
    res = run_cli("compress", llama_dir, out, "--bits", "2", "--quiet")
    assert res.returncode == 0, res.stderr
    return out, res


# --- compress -----------------------------------------------------------------------

def test_compress_prints_a_summary(compressed):
    out, res = compressed
    adapter = loraquant.load(out)
    text = res.stdout
    assert f"compressed 14 LoRA modules" in text
    assert f"bits/weight  {adapter.avg_bits:.3f}" in text
    assert "as stored (float32)" in text and "smaller than fp16" in text
    assert "15 tensors kept unchanged (14 LoRA biases, 1 others" in text
    assert "Traceback" not in res.stderr


def test_compress_summary_errors_match_an_independent_measure(compressed, llama_dir):
    """Recompute |s B A - B_hat A_hat|_F from the source tensors and the file."""
    adapter = loraquant.load(compressed[0])
    source = load_file(llama_dir / "adapter_model.safetensors")
    err2, norm2, rel = 0.0, 0.0, {}
    for name, q in adapter.items():
        a, b = source[name + ".lora_A.weight"].double(), source[name + ".lora_B.weight"].double()
        a_hat, b_hat = q.dequantize()
        dw = adapter.scalings[name] * b @ a
        e2 = float(((dw - b_hat.double() @ a_hat.double()) ** 2).sum())
        n2 = float((dw ** 2).sum())
        err2, norm2, rel[name] = err2 + e2, norm2 + n2, (e2 / n2) ** 0.5
    worst = max(rel, key=rel.get)
    m = re.search(r"rel\. error +([0-9.]+) overall .*; worst ([0-9.]+) in (\S+)", compressed[1].stdout)
    assert m, compressed[1].stdout
    assert float(m.group(1)) == pytest.approx((err2 / norm2) ** 0.5, abs=PRINTED_ERROR_ATOL)
    assert float(m.group(2)) == pytest.approx(rel[worst], abs=PRINTED_ERROR_ATOL)
    assert rel[m.group(3)] == pytest.approx(rel[worst], abs=PRINTED_ERROR_ATOL)


def _expected_rank_and_scaling(name):
    """By hand, from the fixture's config: r=8, alpha=16, rank_pattern
    {"layers.1.self_attn.q_proj": 4, "v_proj": 2}, alpha_pattern {"down_proj": 5}."""
    r = 4 if name.endswith("layers.1.self_attn.q_proj") else 2 if name.endswith("v_proj") else 8
    alpha = 5 if name.endswith("down_proj") else 16
    return r, alpha / r


def test_compress_honours_rank_and_alpha_patterns(compressed):
    adapter = loraquant.load(compressed[0])
    assert len(adapter) == 14
    for name, q in adapter.items():
        r, s = _expected_rank_and_scaling(name)
        assert q.rank == r, name
        assert adapter.scalings[name] == pytest.approx(s), name
    assert adapter.peft_config["rank_pattern"] == {"layers.1.self_attn.q_proj": 4, "v_proj": 2}


def test_compress_keeps_extras_unchanged(compressed, llama_dir):
    adapter = loraquant.load(compressed[0])
    source = load_file(llama_dir / "adapter_model.safetensors")
    extra_keys = {k for k in source if ".lora_A." not in k and ".lora_B.weight" not in k}
    assert set(adapter.extras) == extra_keys
    assert PREFIX + "lm_head.weight" in extra_keys
    for k in extra_keys:
        assert torch.equal(adapter.extras[k], source[k]), k


def test_compress_rslora_scaling(tmp_path):
    d = F.save_adapter("llama_rslora", tmp_path / "rs")
    assert cli.main(["compress", str(d), str(tmp_path / "rs.lqa"), "--quiet"]) == 0
    adapter = loraquant.load(tmp_path / "rs.lqa")
    assert len(adapter) == 6
    assert list(adapter.scalings.values()) == pytest.approx([8 / 16 ** 0.5] * 6)


def test_compress_options(llama_dir, tmp_path, capsys):
    assert run_main(capsys, "compress", llama_dir, tmp_path / "b3.lqa", "--bits", "3",
                    "--group-size", "32", "--quiet")[0] == 0
    b3 = loraquant.load(tmp_path / "b3.lqa")
    assert 2.5 < b3.avg_bits <= 3 + BUDGET_SLACK
    assert {q.group_size for q in b3.values()} == {32}

    assert run_main(capsys, "compress", llama_dir, tmp_path / "paper.lqa", "--rho", "0.8",
                    "--high-bits", "3", "--quiet")[0] == 0
    paper = loraquant.load(tmp_path / "paper.lqa")
    widths = {w for q in paper.values() for w in q.widths}
    assert widths <= {(1, 1), (3, 3)} and (3, 3) in widths


def test_legacy_bin_gives_the_same_file_content(llama_dir, compressed, tmp_path):
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    shutil.copy(llama_dir / "adapter_config.json", legacy)
    torch.save(load_file(llama_dir / "adapter_model.safetensors"), legacy / "adapter_model.bin")
    res = run_cli("compress", legacy, tmp_path / "legacy.lqa", "--quiet")
    assert res.returncode == 0, res.stderr
    a, b = loraquant.load(compressed[0]), loraquant.load(tmp_path / "legacy.lqa")
    assert list(a) == list(b)
    for name in a:
        assert a[name].to_bytes() == b[name].to_bytes(), name
    assert a.scalings == b.scalings
    assert all(torch.equal(a.extras[k], b.extras[k]) for k in a.extras)


# --- inspect ------------------------------------------------------------------------

def test_inspect_table(compressed, capsys):
    status, out, _ = run_main(capsys, "inspect", compressed[0])
    assert status == 0
    adapter = loraquant.load(compressed[0])
    lines = out.splitlines()
    assert lines[0].startswith(f"{compressed[0]}: 14 modules, {adapter.avg_bits:.3f} bits/weight")
    for name, q in adapter.items():
        row = next(l for l in lines if l.startswith(name[len(PREFIX):] + " "))
        fields = row.split()
        assert fields[1] == f"{q.shape[0]}x{q.shape[1]}" and fields[2] == str(q.rank)
        assert fields[-2:] == [f"{q.avg_bits:.3f}", str(q.nbytes)]
        assert cli.widths_text(q.widths) in row


def test_inspect_probe_lines_are_exact(compressed):
    res = run_cli("inspect", compressed[0], "--probe")
    assert res.returncode == 0, res.stderr
    adapter = loraquant.load(compressed[0])
    expected = [f"{name} {q.core.probe_norm():.8g}" for name, q in adapter.items()]
    assert res.stdout.splitlines() == expected


def test_inspect_plot_writes_a_png(compressed, tmp_path, capsys):
    png = tmp_path / "spectra.png"
    status, out, _ = run_main(capsys, "inspect", compressed[0], "--plot", png)
    assert status == 0 and f"wrote {png}" in out
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


@pytest.mark.parametrize("widths, text", [
    ([3, 2, 2, 2, 1, 0, 0], "3 2x3 1 0x2"), ([0], "0"), ([4, 4], "4x2"), ([1, 2, 1], "1 2 1")])
def test_widths_text(widths, text):
    assert cli.widths_text([(w, w) for w in widths]) == text


def test_widths_text_marks_factors_of_different_widths():
    assert cli.widths_text([(3, 2), (3, 2), (2, 2), (0, 0)]) == "3/2x2 2 0"


# --- export -------------------------------------------------------------------------

def test_export_writes_a_peft_directory_and_refuses_to_overwrite(compressed, tmp_path, capsys):
    out = tmp_path / "exported"
    status, text, _ = run_main(capsys, "export", compressed[0], out, "--dtype", "float16")
    assert status == 0 and f"wrote {out}" in text
    config = json.loads((out / "adapter_config.json").read_text())
    adapter = loraquant.load(compressed[0])
    rank = max(sum(w[0] > 0 for w in q.widths) for q in adapter.values())  # dropped ones go
    assert (config["r"], config["lora_alpha"], config["use_rslora"]) == (rank, rank, False)
    assert config["rank_pattern"] == {} and config["alpha_pattern"] == {}
    assert sorted(config["target_modules"]) == sorted(F.LLAMA_TARGETS)
    tensors = load_file(out / "adapter_model.safetensors")
    key = PREFIX + "model.layers.0.self_attn.q_proj.lora_A.weight"
    assert tensors[key].shape == (rank, 32) and tensors[key].dtype == torch.float16

    status, _, err = run_main(capsys, "export", compressed[0], out)
    assert status == 1 and "already holds adapter_config.json" in err and "--force" in err
    assert run_main(capsys, "export", compressed[0], out, "--force")[0] == 0


# --- a reader that goes away: quiet, and what needs no stdout still happens ----------

# What a shell reports for a Unix tool stopped by SIGPIPE, and what cli.main returns.
EXIT_CLOSED_PIPE = 141


def run_into_closed_pipe(*args) -> subprocess.CompletedProcess:
    """`python -m loraquant ARGS` whose stdout is a pipe with no reader from the start:
    its first write fails, however short the output (stderr captured as text)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([sys.executable, "-m", "loraquant", *map(str, args)],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write_end)


def assert_quiet(res):
    assert res.returncode == EXIT_CLOSED_PIPE, res.stderr
    for word in ("error", "Error", "Traceback", "Exception ignored"):
        assert word not in res.stderr, res.stderr


def test_inspect_plot_into_a_closed_pipe(compressed, tmp_path):
    png = tmp_path / "spectra.png"
    res = run_into_closed_pipe("inspect", compressed[0], "--plot", png)
    assert_quiet(res)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_probe_into_a_closed_pipe(compressed):
    assert_quiet(run_into_closed_pipe("inspect", compressed[0], "--probe"))


def test_compress_into_a_closed_pipe_writes_the_file(llama_dir, tmp_path):
    out = tmp_path / "piped.lqa"
    assert_quiet(run_into_closed_pipe("compress", llama_dir, out, "--quiet"))
    assert len(loraquant.load(out)) == 14


def test_export_into_a_closed_pipe_writes_the_directory(compressed, tmp_path):
    out = tmp_path / "exported"
    assert_quiet(run_into_closed_pipe("export", compressed[0], out))
    assert (out / "adapter_config.json").is_file()
    assert (out / "adapter_model.safetensors").is_file()


def test_demo_into_a_closed_pipe():
    assert_quiet(run_into_closed_pipe("demo", "--layers", "1", "--hidden", "64", "--ffn", "96",
                                      "--rank", "4"))


def test_errors_still_reach_stderr_with_a_closed_pipe(tmp_path):
    res = run_into_closed_pipe("inspect", tmp_path / "missing.lqa")
    assert res.returncode == 1
    assert res.stderr.startswith("loraquant inspect: error: ") and "missing.lqa" in res.stderr


# Long module names make the table far larger than a pipe holds (64 KiB on Linux), so
# that `| head -1` closes the pipe while inspect is still writing.
LONG_NAME_MODULES = 150
LONG_NAME = "base_model.model." + "x" * 600


@pytest.fixture(scope="module")
def wide_table_file(tmp_path_factory):
    g = np.random.default_rng(0)
    mods = {f"{LONG_NAME}.{i}": loraquant.compress(g.standard_normal((2, 8)),
                                                    g.standard_normal((8, 2)), bits=3.0)
            for i in range(LONG_NAME_MODULES)}
    path = tmp_path_factory.mktemp("wide") / "wide.lqa"
    loraquant.save(path, mods)
    return path


def test_inspect_piped_into_head(wide_table_file, tmp_path):
    """The issue's command: `loraquant inspect FILE --plot PNG | head -1`."""
    png = tmp_path / "spectra.png"
    cmd = f"set -o pipefail; {sys.executable} -m loraquant inspect {wide_table_file} --plot {png} | head -1"
    res = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=300)
    assert res.stdout.startswith(f"{wide_table_file}: {LONG_NAME_MODULES} modules")
    assert res.stdout.count("\n") == 1
    assert "error" not in res.stderr and "Exception" not in res.stderr, res.stderr
    assert res.returncode == EXIT_CLOSED_PIPE  # the pipe did close early
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- errors: one line on stderr, status 1, no traceback -----------------------------

def _peft_dir(tmp_path, config_kwargs, build=F.llama):
    """Save a real PEFT adapter of another kind (DoRA, IA3, embeddings ...)."""
    from peft import get_peft_model

    model = get_peft_model(build(), config_kwargs)
    d = tmp_path / "other"
    model.save_pretrained(str(d), save_embedding_layers=False)
    return d


def _edit_dir(src, tmp_path, edit_config=None, edit_tensors=None):
    d = tmp_path / "edited"
    shutil.copytree(src, d)
    if edit_config:
        config = json.loads((d / "adapter_config.json").read_text())
        edit_config(config)
        (d / "adapter_config.json").write_text(json.dumps(config))
    if edit_tensors:
        from safetensors.torch import save_file

        tensors = load_file(d / "adapter_model.safetensors")
        edit_tensors(tensors)
        save_file(tensors, d / "adapter_model.safetensors")
    return d


def _transpose_pair(tensors):
    """Store k_proj's lora_A as (n, r) and lora_B as (r, m), each factor transposed."""
    key = PREFIX + "model.layers.0.self_attn.k_proj"
    for part in (".lora_A.weight", ".lora_B.weight"):
        tensors[key + part] = tensors[key + part].T.contiguous()


def _compress_error(capsys, src, tmp_path, *extra):
    status, out, err = run_main(capsys, "compress", src, tmp_path / "x.lqa", "--quiet", *extra)
    assert status == 1
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("loraquant compress: error: ")
    assert not (tmp_path / "x.lqa").exists()
    return err


@pytest.mark.parametrize("kept, message", [
    ("adapter_model.safetensors", "no adapter_config.json; is this a PEFT adapter directory?"),
    ("adapter_config.json", "neither adapter_model.safetensors nor adapter_model.bin"),
])
def test_missing_file(llama_dir, tmp_path, capsys, kept, message):
    d = tmp_path / "partial"
    d.mkdir()
    shutil.copy(llama_dir / kept, d)
    assert message in _compress_error(capsys, d, tmp_path)


def test_missing_directory(tmp_path, capsys):
    assert "no such adapter directory" in _compress_error(capsys, tmp_path / "nowhere", tmp_path)


def test_dora_is_refused(tmp_path, capsys):
    from peft import LoraConfig

    d = _peft_dir(tmp_path, LoraConfig(r=4, target_modules=["q_proj"], use_dora=True))
    assert "uses DoRA (use_dora=True)" in _compress_error(capsys, d, tmp_path)


def test_ia3_is_refused(tmp_path, capsys):
    from peft import IA3Config

    d = _peft_dir(tmp_path, IA3Config(target_modules=["q_proj", "down_proj"],
                                      feedforward_modules=["down_proj"]))
    assert "peft_type is 'IA3': loraquant compresses LoRA adapters only" in \
        _compress_error(capsys, d, tmp_path)


def test_embedding_lora_is_refused(tmp_path, capsys):
    from peft import LoraConfig

    d = _peft_dir(tmp_path, LoraConfig(r=4, target_modules=["embed_tokens", "q_proj"]))
    err = _compress_error(capsys, d, tmp_path)
    assert "lora_embedding_A" in err and "not embeddings" in err


def test_dora_flag_in_a_subprocess_gives_one_line(llama_dir, tmp_path):
    d = _edit_dir(llama_dir, tmp_path, edit_config=lambda c: c.update(use_dora=True))
    res = run_cli("compress", d, tmp_path / "x.lqa")
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [
        "loraquant compress: error: this adapter uses DoRA (use_dora=True); loraquant "
        "supports plain LoRA only"]


def test_transposed_pair_is_refused(llama_dir, tmp_path, capsys):
    d = _edit_dir(llama_dir, tmp_path, edit_tensors=_transpose_pair)
    assert "it looks transposed" in _compress_error(capsys, d, tmp_path)


def test_rank_disagreeing_with_config_is_refused(llama_dir, tmp_path, capsys):
    d = _edit_dir(llama_dir, tmp_path, edit_config=lambda c: c.update(rank_pattern={}))
    err = _compress_error(capsys, d, tmp_path)
    assert "do not chain as (r, n) and (m, r) with r = 8" in err and "v_proj" in err


def test_bad_pattern_is_refused(llama_dir, tmp_path, capsys):
    d = _edit_dir(llama_dir, tmp_path, edit_config=lambda c: c.update(alpha_pattern={"(": 2}))
    assert "pattern '(' in adapter_config.json is not a valid regular expression" in \
        _compress_error(capsys, d, tmp_path)


def test_corrupt_weights_file(llama_dir, tmp_path, capsys):
    d = _edit_dir(llama_dir, tmp_path)
    (d / "adapter_model.safetensors").write_bytes(b"\x10\0\0\0\0\0\0\0{not json")
    assert "adapter_model.safetensors: cannot read" in _compress_error(capsys, d, tmp_path)


@pytest.mark.parametrize("args, message", [
    (["--bits", "-1"], "bits must be in (0, 16]"),
    (["--high-bits", "3"], "high_bits applies to paper mode only"),
    (["--rho", "1.5"], "rho must be in (0, 1]"),
    (["--group-size", "0"], "group_size must be in 1..1048576"),
])
def test_bad_options(llama_dir, tmp_path, capsys, args, message):
    assert message in _compress_error(capsys, llama_dir, tmp_path, *args)


def test_unwritable_output(llama_dir, tmp_path, capsys):
    status, _, err = run_main(capsys, "compress", llama_dir, tmp_path / "no" / "x.lqa", "--quiet")
    assert status == 1 and "cannot save the adapter to" in err and "No such file" in err


@pytest.mark.parametrize("command", ["inspect", "export"])
def test_reading_a_bad_file(compressed, tmp_path, capsys, command):
    cut = tmp_path / "cut.lqa"
    cut.write_bytes(compressed[0].read_bytes()[:-100])
    extra = [tmp_path / "out"] if command == "export" else []
    status, _, err = run_main(capsys, command, cut, *extra)
    assert status == 1 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"loraquant {command}: error: {cut}: ") and "truncated" in err
    status, _, err = run_main(capsys, command, tmp_path / "missing.lqa", *extra)
    assert status == 1 and "No such file or directory" in err


def test_no_command_is_a_usage_error():
    res = run_cli()
    assert res.returncode == 2 and "usage: loraquant" in res.stderr
    assert "compress" in res.stderr and "Traceback" not in res.stderr


def test_demo_runs_and_reports_every_budget(capsys):
    status, text, _ = run_main(capsys, "demo", "--layers", "1", "--hidden", "64", "--ffn", "96",
                               "--rank", "4")
    assert status == 0
    for label in ("budget 1.5", "budget 2", "budget 3", "paper 2@0.9"):
        assert label in text
    diff = float(text.strip().splitlines()[-1].split()[-1])
    assert diff < 1e-4  # packed kernel against dequantized matmul, float32


def test_demo_rejects_bad_sizes(capsys):
    status, _, err = run_main(capsys, "demo", "--rank", "0")
    assert status != 0 and "--rank must be at least 1" in err


def _vllm_module_name(key: str):
    """The rule vLLM's LoRA loader applies to a tensor name: strip `base_model.model.`,
    then `<module>.lora_A.weight` / `<module>.lora_B.weight` (anything else is refused)."""
    parts = key.split(".")
    start = 2 if key.startswith("base_model.model.") else 0
    if parts[-1] == "weight" and parts[-2] in ("lora_A", "lora_B"):
        return ".".join(parts[start:-2]), parts[-2]
    if parts[-1] == "bias":  # a LoRA bias: `<module>.lora_B.bias`
        return ".".join(parts[start:-2]), "bias"
    raise ValueError(f"{key} is not a LoRA weight name")


def test_export_follows_the_lora_loader_naming_rules(compressed, tmp_path, capsys):
    """vLLM cannot run here (no GPU); check the exported directory against the rules its
    loader applies: tensor names, A/B shapes against r, target module suffixes."""
    out = tmp_path / "for-serving"
    status, _, _ = run_main(capsys, "export", compressed[0], out)
    assert status == 0
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and not config.get("use_dora")
    assert isinstance(config["r"], int) and config["lora_alpha"] == config["r"]
    tensors = load_file(out / "adapter_model.safetensors")
    seen = {}
    for key, t in tensors.items():
        if ".lora_" not in key:
            continue  # modules_to_save / biases are kept as PEFT stores them
        module, which = _vllm_module_name(key)
        assert module.split(".")[-1] in config["target_modules"], key
        seen.setdefault(module, {})[which] = t
    assert seen and all({"lora_A", "lora_B"} <= set(v) for v in seen.values())
    for module, ab in seen.items():
        assert ab["lora_A"].shape[0] == config["r"] == ab["lora_B"].shape[1], module
