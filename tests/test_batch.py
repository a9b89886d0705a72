"""`loraquant batch` and loraquant.compress_many: a folder of PEFT adapters in, a
folder of .lqa files out; resuming, failures, atomic outputs, and the Ray path on a
local cluster (needs Ray: skipped without it, unless CI is set)."""
import errno
import os
import shutil
import time
from pathlib import Path

import pytest

import _peft_fixtures as F
import loraquant
from loraquant import batch, cli

#: adapter kind -> its folder under ROOT: nested, and one inside another adapter
HUB = {"team/a": "llama_patterns", "b": "gpt2_conv1d", "team/a/sub": "llama_rslora"}
OUTPUTS = {"team/a.lqa", "b.lqa", "team/a/sub.lqa"}


def run_main(capsys, *args):
    """cli.main in-process: (exit status, stdout, stderr)."""
    status = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


def files_under(folder: Path) -> set:
    """Every file under `folder` (hidden temporary files included), '/'-separated."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def hub_master(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    for name, kind in HUB.items():
        F.save_adapter(kind, root / name)
    (root / "notes").mkdir()
    (root / "notes" / "README.md").write_text("not an adapter\n")
    return root


@pytest.fixture
def hub(tmp_path, hub_master):
    """A fresh copy of the hub that a test may break."""
    return Path(shutil.copytree(hub_master, tmp_path / "hub"))


@pytest.fixture(scope="module")
def compressed_one_by_one(hub_master, tmp_path_factory):
    """Each adapter compressed by `loraquant compress` (bits 2 and 3): name -> bytes."""
    out = tmp_path_factory.mktemp("single")
    expected = {}
    for bits in ("2", "3"):
        for name in HUB:
            path = out / bits / (name.replace("/", "_") + ".lqa")
            path.parent.mkdir(exist_ok=True)
            assert cli.main(["compress", str(hub_master / name), str(path), "--bits", bits,
                             "--quiet"]) == 0
            expected[bits, name] = path.read_bytes()
    return expected


def add_broken(hub: Path) -> None:
    """Two broken adapters: a config that is not JSON, and one with no weights."""
    (hub / "broken").mkdir()
    (hub / "broken" / "adapter_config.json").write_text("{")
    shutil.copytree(hub / "b", hub / "zz" / "noweights")
    (hub / "zz" / "noweights" / "adapter_model.safetensors").unlink()


# --- where outputs go, and what they hold ---------------------------------------------

def test_every_adapter_folder_maps_to_out_rel_lqa(hub, tmp_path):
    out = tmp_path / "out"
    report = loraquant.compress_many(hub, out)
    assert report.ok
    assert sorted(o.name for o in report.done) == sorted(HUB)
    assert files_under(out) == OUTPUTS  # nothing else: no temporary files left
    for name in HUB:
        assert len(loraquant.load(out / f"{name}.lqa")) > 0


def test_find_adapters_skips_links_to_folders_and_out(hub):
    (hub / "link").symlink_to(hub / "team", target_is_directory=True)
    (hub / "loop").symlink_to(hub, target_is_directory=True)
    out = hub / "out"
    shutil.copytree(hub / "b", out / "copy")  # an adapter inside OUT is not searched
    assert batch.find_adapters(hub, out) == sorted(HUB)
    assert batch.find_adapters(hub) == sorted([*HUB, "out/copy"])


def test_out_may_be_root(hub):
    """Outputs then lie beside the adapter folders, and are not searched."""
    assert loraquant.compress_many(hub, hub).ok
    assert all((hub / f).is_file() for f in OUTPUTS)
    assert len(loraquant.compress_many(hub, hub).skipped) == len(HUB)


@pytest.mark.parametrize("bits", ["2", "3"])
def test_outputs_are_the_bytes_loraquant_compress_writes(hub_master, tmp_path, bits,
                                                         compressed_one_by_one):
    out = tmp_path / "out"
    assert loraquant.compress_many(hub_master, out, bits=float(bits), workers=2).ok
    for name in HUB:
        assert (out / f"{name}.lqa").read_bytes() == compressed_one_by_one[bits, name], name


def test_outputs_record_their_options(hub_master, tmp_path):
    out = tmp_path / "out"
    loraquant.compress_many(hub_master, out, rho=0.9, high_bits=3, group_size=64)
    assert loraquant.load(out / "b.lqa").options == {
        "mode": "paper", "rho": 0.9, "high_bits": 3, "group_size": 64}


# --- resuming -----------------------------------------------------------------------

def test_resume_skips_valid_outputs_and_recompresses_truncated_and_missing(hub, tmp_path):
    out = tmp_path / "out"
    first = loraquant.compress_many(hub, out)
    good = {name: (out / f"{name}.lqa").read_bytes() for name in HUB}
    kept = (out / "team/a/sub.lqa").stat()
    data = good["team/a"]
    (out / "team/a.lqa").write_bytes(data[:len(data) // 2])
    (out / "b.lqa").unlink()

    again = loraquant.compress_many(hub, out)
    assert sorted(o.name for o in again.done) == ["b", "team/a"]
    assert [o.name for o in again.skipped] == ["team/a/sub"]
    after = (out / "team/a/sub.lqa").stat()
    assert (after.st_ino, after.st_mtime_ns) == (kept.st_ino, kept.st_mtime_ns)
    for name in HUB:
        assert (out / f"{name}.lqa").read_bytes() == good[name]
    # the summary counts skipped adapters in the sizes
    assert again.bytes_before == first.bytes_before
    assert again.bytes_after == first.bytes_after


def test_outputs_made_with_other_options_are_recompressed(hub_master, tmp_path):
    out = tmp_path / "out"
    loraquant.compress_many(hub_master, out, bits=2.0)
    assert len(loraquant.compress_many(hub_master, out, bits=3.0).done) == len(HUB)
    assert len(loraquant.compress_many(hub_master, out, bits=3.0).skipped) == len(HUB)
    assert len(loraquant.compress_many(hub_master, out, bits=3.0, group_size=64).done) == len(HUB)


def test_an_output_without_recorded_options_is_recompressed(hub_master, tmp_path):
    out = tmp_path / "out"
    loraquant.compress_many(hub_master, out)
    old = loraquant.load(out / "b.lqa")
    loraquant.save(out / "b.lqa", loraquant.CompressedAdapter(
        old, peft_config=old.peft_config, extras=old.extras, scalings=old.scalings))
    assert loraquant.load(out / "b.lqa").options == {}
    report = loraquant.compress_many(hub_master, out)
    assert [o.name for o in report.done] == ["b"]


# --- failures -----------------------------------------------------------------------

def test_broken_adapters_are_named_and_the_others_written(capsys, hub, tmp_path):
    add_broken(hub)
    out = tmp_path / "out"
    status, stdout, stderr = run_main(capsys, "batch", hub, out, "--quiet", "--workers", "2")
    assert status == cli.EXIT_ERROR
    lines = stderr.strip().splitlines()
    assert len(lines) == 2, stderr
    by_name = {line.split(": ")[2]: line for line in lines}
    assert set(by_name) == {"broken", "zz/noweights"}
    assert by_name["broken"].startswith("loraquant batch: error: broken: ")
    assert "not valid JSON" in by_name["broken"]
    assert "neither adapter_model.safetensors nor adapter_model.bin" in by_name["zz/noweights"]
    assert "Traceback" not in stderr
    assert files_under(out) == OUTPUTS
    assert "done     3 compressed" in stdout and "failed   2 (named above)" in stdout


def test_report_of_a_failed_adapter(hub, tmp_path):
    add_broken(hub)
    report = loraquant.compress_many(hub, tmp_path / "out")
    assert not report.ok
    failed = {o.name: o for o in report.failed}
    assert set(failed) == {"broken", "zz/noweights"}
    assert all(o.status == batch.FAILED and o.error and o.bytes_after == 0
               for o in failed.values())
    assert len(report.done) == len(HUB)


def test_a_failed_write_leaves_no_partial_file_and_the_old_output_intact(hub, tmp_path,
                                                                         monkeypatch):
    out = tmp_path / "out"
    loraquant.compress_many(hub, out, bits=3.0)
    old = {name: (out / f"{name}.lqa").read_bytes() for name in HUB}

    def full_disk(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_disk)
    report = loraquant.compress_many(hub, out, bits=2.0)
    assert len(report.failed) == len(HUB) and not report.done
    assert all("No space left on device" in o.error for o in report.failed)
    assert files_under(out) == OUTPUTS
    for name in HUB:
        assert (out / f"{name}.lqa").read_bytes() == old[name]


def test_an_unexpected_error_names_its_type_and_does_not_stop_the_others(hub, tmp_path,
                                                                         monkeypatch):
    real = batch.compress_peft_file

    def buggy(source, out, **kw):
        if os.path.basename(source) == "b":
            raise KeyError("lora_alpha")
        return real(source, out, **kw)

    monkeypatch.setattr(batch, "compress_peft_file", buggy)
    report = loraquant.compress_many(hub, tmp_path / "out")
    assert [(o.name, o.error) for o in report.failed] == [("b", "KeyError: 'lora_alpha'")]
    assert len(report.done) == len(HUB) - 1


def test_an_interrupt_lets_running_adapters_finish_and_starts_no_other(tmp_path,
                                                                      monkeypatch):
    root = tmp_path / "many"
    for i in range(10):
        (root / f"a{i}").mkdir(parents=True)
        (root / f"a{i}" / "adapter_config.json").write_text("{}")
    started = []

    def job(j):
        started.append(j.name)
        if len(started) > 1:
            time.sleep(0.5)  # still running when the interrupt comes
        return batch.Outcome(j.name, j.output, batch.DONE)

    def interrupt(outcome):
        raise KeyboardInterrupt

    monkeypatch.setattr(batch, "run_job", job)
    with pytest.raises(KeyboardInterrupt):
        loraquant.compress_many(root, tmp_path / "out", workers=2, on_outcome=interrupt)
    assert 2 <= len(started) <= 3, started  # the first, and what the 2 threads had begun


# --- the Python API and the summary -------------------------------------------------

def test_report_sizes_and_callbacks(hub_master, tmp_path):
    out = tmp_path / "out"
    seen = []
    report = loraquant.compress_many(hub_master, out, workers=2, on_outcome=seen.append)
    assert isinstance(report, loraquant.BatchReport)
    assert sorted(seen, key=lambda o: o.name) == sorted(report.done, key=lambda o: o.name)
    assert report.bytes_before == sum(
        (hub_master / name / "adapter_model.safetensors").stat().st_size for name in HUB)
    assert report.bytes_after == sum((out / f).stat().st_size for f in OUTPUTS)
    assert 0 < report.bytes_after < report.bytes_before
    assert report.seconds > 0 and all(o.seconds > 0 for o in report.done)


def test_cli_summary_and_progress(capsys, hub_master, tmp_path):
    out = tmp_path / "out"
    status, stdout, stderr = run_main(capsys, "batch", hub_master, out, "--bits", "2.5")
    assert status == 0
    assert f"batch: 3 adapters under {hub_master} -> {out}" in stdout
    assert "done     3 compressed" in stdout and "skipped  0" in stdout
    assert "failed   0\n" in stdout and "x smaller" in stdout
    assert "3/3" in stderr  # the progress bar over adapters
    status, stdout, _ = run_main(capsys, "batch", hub_master, out, "--bits", "2.5", "--quiet")
    assert status == 0 and "done     0 compressed" in stdout and "skipped  3" in stdout


# --- argument errors ----------------------------------------------------------------

@pytest.mark.parametrize("args, match", [
    (["--workers", "0"], "workers must be"),
    (["--bits", "-1"], "bits must be"),
    (["--high-bits", "3"], "high_bits applies to paper mode only"),
    (["--group-size", "0"], "group_size must be"),
    (["--ray", ""], "ray must be None, 'local' or a cluster address"),
])
def test_bad_options_are_one_line_errors_before_any_work(capsys, hub_master, tmp_path,
                                                         args, match):
    out = tmp_path / "out"
    status, stdout, stderr = run_main(capsys, "batch", hub_master, out, "--quiet", *args)
    assert status == cli.EXIT_ERROR
    assert stderr.startswith("loraquant batch: error: ") and match in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("args", [
    [], ["ROOT"], ["ROOT", "OUT", "--bits", "2", "--rho", "0.9"],
    ["ROOT", "OUT", "--workers", "two"], ["ROOT", "OUT", "--unknown"]])
def test_malformed_command_lines_exit_2(capsys, hub_master, tmp_path, args):
    where = {"ROOT": str(hub_master), "OUT": str(tmp_path / "out")}
    with pytest.raises(SystemExit) as e:
        cli.main(["batch", *(where.get(a, a) for a in args)])
    assert e.value.code == 2
    assert "usage: loraquant" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_root_errors(capsys, hub_master, tmp_path):
    cases = {
        tmp_path / "missing": "not a directory",
        hub_master / "notes": "no folder under it holds adapter_config.json",
        hub_master / "b": "holds adapter_config.json itself",
    }
    for root, match in cases.items():
        status, _, stderr = run_main(capsys, "batch", root, tmp_path / "out", "--quiet")
        assert status == cli.EXIT_ERROR and match in stderr, (root, stderr)
    assert not (tmp_path / "out").exists()


def test_ray_missing_is_a_clear_error(capsys, hub_master, tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # `import ray` fails
    status, _, stderr = run_main(capsys, "batch", hub_master, tmp_path / "out", "--ray",
                                 "local", "--quiet")
    assert status == cli.EXIT_ERROR
    assert "pip install 'loraquant[ray]'" in stderr and "loraquant[hf]" not in stderr


# --- Ray ----------------------------------------------------------------------------

def ray_or_skip():
    try:
        import ray
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("Ray is not installed (pip install 'loraquant[ray]'); with CI set, "
                    "this test fails instead")
    return ray


@pytest.fixture
def ray():
    ray = ray_or_skip()
    yield ray
    if ray.is_initialized():  # only if the code under test failed to stop its cluster
        ray.shutdown()
        pytest.fail("the local Ray cluster was left running")


def test_ray_on_a_local_cluster(capsys, ray, hub, tmp_path, compressed_one_by_one):
    add_broken(hub)
    out = tmp_path / "out"
    out.mkdir()
    (out / "b.lqa").write_bytes(compressed_one_by_one["2", "b"])  # up to date: skipped
    status, stdout, stderr = run_main(capsys, "batch", hub, out, "--ray", "local",
                                      "--workers", "2", "--quiet")
    assert not ray.is_initialized()  # the cluster started for the job is stopped
    assert status == cli.EXIT_ERROR
    ours = [line for line in stderr.splitlines() if line.startswith("loraquant batch")]
    assert sorted(line.split(": ")[2] for line in ours) == ["broken", "zz/noweights"], stderr
    assert "done     2 compressed" in stdout and "skipped  1" in stdout
    assert files_under(out) == OUTPUTS
    for name in HUB:
        assert (out / f"{name}.lqa").read_bytes() == compressed_one_by_one["2", name], name


# --- output-aware: one calibration file for every adapter of a base -------------------

CAL_HUB = {"a": "llama_patterns", "team/c": "llama_rslora"}


@pytest.fixture(scope="module")
def calibrated_hub(tmp_path_factory):
    """(ROOT with two adapters of the same Llama base, the base's .lqc, the bytes
    `loraquant compress --calibration` writes for each)."""
    root = tmp_path_factory.mktemp("calhub")
    for name, kind in CAL_HUB.items():
        F.save_adapter(kind, root / name)
    cal = loraquant.calibrate(F.llama(), [F.tokens(seed=s) for s in range(3)], progress=False,
                              base="tiny-llama")
    lqc = root.parent / "base.lqc"
    cal.save(lqc)
    single = tmp_path_factory.mktemp("calsingle")
    expected = {}
    for name in CAL_HUB:
        path = single / (name.replace("/", "_") + ".lqa")
        assert cli.main(["compress", str(root / name), str(path), "--calibration", str(lqc),
                         "--quiet"]) == 0
        expected[name] = path.read_bytes()
    return root, lqc, expected


def test_batch_with_a_calibration_writes_what_compress_writes(calibrated_hub, tmp_path):
    root, lqc, expected = calibrated_hub
    for i, cal in enumerate([lqc, str(lqc), loraquant.Calibration.load(lqc)]):
        out = tmp_path / f"out{i}"
        report = loraquant.compress_many(root, out, calibration=cal, workers=2)
        assert report.ok and len(report.done) == 2
        for name in CAL_HUB:
            data = (out / f"{name}.lqa").read_bytes()
            assert data == expected[name], name
            assert loraquant.load(out / f"{name}.lqa").options["calibration"] == "tiny-llama"


def test_batch_calibration_is_part_of_the_resume_record(calibrated_hub, tmp_path):
    root, lqc, _ = calibrated_hub
    out = tmp_path / "out"
    assert len(loraquant.compress_many(root, out).done) == 2  # data-free first
    again = loraquant.compress_many(root, out, calibration=lqc)
    assert len(again.done) == 2 and not again.skipped  # other options: compressed again
    assert len(loraquant.compress_many(root, out, calibration=lqc).skipped) == 2
    assert len(loraquant.compress_many(root, out).done) == 2  # and back


def test_batch_calibration_errors(capsys, calibrated_hub, tmp_path):
    root, lqc, _ = calibrated_hub
    with pytest.raises(ValueError, match="with ray, give the calibration as the path"):
        loraquant.compress_many(root, tmp_path / "o1", ray="local",
                                calibration=loraquant.Calibration.load(lqc))
    with pytest.raises(TypeError, match="calibration must be a Calibration or the path"):
        loraquant.compress_many(root, tmp_path / "o2", calibration=3)
    bad = tmp_path / "bad.lqc"
    bad.write_bytes(b"\0" * 40)
    for path in (bad, tmp_path / "missing.lqc"):
        status, _, err = run_main(capsys, "batch", root, tmp_path / "o3", "--calibration", path,
                                  "--quiet")
        assert status == cli.EXIT_ERROR and err.startswith("loraquant batch: error:"), err
        assert len(err.strip().splitlines()) == 1 and path.name in err
        assert not (tmp_path / "o3").exists() or not any((tmp_path / "o3").iterdir())


def test_cli_batch_with_a_calibration(capsys, calibrated_hub, tmp_path):
    root, lqc, expected = calibrated_hub
    status, out, err = run_main(capsys, "batch", root, tmp_path / "out", "--calibration", lqc,
                                "--quiet")
    assert status == 0, err
    assert "done     2 compressed" in out
    for name in CAL_HUB:
        assert (tmp_path / "out" / f"{name}.lqa").read_bytes() == expected[name]


def test_ray_with_a_calibration_file(capsys, ray, calibrated_hub, tmp_path):
    root, lqc, expected = calibrated_hub
    status, out, err = run_main(capsys, "batch", root, tmp_path / "out", "--calibration", lqc,
                                "--ray", "local", "--workers", "2", "--quiet")
    assert not ray.is_initialized()
    assert status == 0, err
    for name in CAL_HUB:
        assert (tmp_path / "out" / f"{name}.lqa").read_bytes() == expected[name]


def test_plan_sends_the_calibration_as_an_absolute_path(calibrated_hub, monkeypatch):
    root, lqc, _ = calibrated_hub
    monkeypatch.chdir(lqc.parent)
    jobs = batch.plan(root, root.parent / "out", calibration=lqc.name)
    assert {job.options["calibration"] for job in jobs} == {str(lqc)}
    assert all(job.record["calibration"] == "tiny-llama" for job in jobs)


def test_damping_is_passed_recorded_and_part_of_the_resume_record(capsys, calibrated_hub,
                                                                   tmp_path):
    root, lqc, expected = calibrated_hub
    single = tmp_path / "single.lqa"
    status, _, err = run_main(capsys, "compress", root / "a", single, "--calibration", lqc,
                              "--damping", "0.2", "--quiet")
    assert status == 0, err
    assert single.read_bytes() != expected["a"]  # another ridge, another result
    assert loraquant.load(single).options["damping"] == 0.2
    out = tmp_path / "out"
    status, _, err = run_main(capsys, "batch", root, out, "--calibration", lqc, "--damping",
                              "0.2", "--quiet")
    assert status == 0, err
    assert (out / "a.lqa").read_bytes() == single.read_bytes()
    assert len(loraquant.compress_many(root, out, calibration=lqc, damping=0.2).skipped) == 2
    assert len(loraquant.compress_many(root, out, calibration=lqc).done) == 2  # default again
    assert (out / "a.lqa").read_bytes() == expected["a"]
    assert "damping" not in loraquant.load(out / "a.lqa").options


def test_damping_errors(capsys, calibrated_hub, tmp_path):
    root, lqc, _ = calibrated_hub
    for cmd in (["compress", root / "a", tmp_path / "x.lqa"], ["batch", root, tmp_path / "o"]):
        status, _, err = run_main(capsys, *cmd, "--damping", "0.2", "--quiet")
        assert status == cli.EXIT_ERROR and "--damping applies to output-aware" in err, err
        assert len(err.strip().splitlines()) == 1
    with pytest.raises(ValueError, match="damping"):
        loraquant.compress_many(root, tmp_path / "o2", calibration=lqc, damping=-1.0)
    assert not (tmp_path / "o2").exists()
