"""The rule of tests/_tools.py: a missing tool skips, saying which and how to install
it, except under CI, where it fails. Checked on the helpers and, end to end, on the
short fuzz run with clang hidden from PATH."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import _tools

ROOT = Path(__file__).resolve().parents[1]
ABSENT = "lq-no-such-tool"


@pytest.fixture
def no_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)


@pytest.fixture
def ci(monkeypatch):
    monkeypatch.setenv("CI", "true")


@pytest.mark.parametrize("value, expected", [("true", True), ("True", True), ("1", True),
                                             ("false", False), ("0", False), ("", False)])
def test_in_ci_reads_the_ci_variable(monkeypatch, value, expected):
    monkeypatch.setenv("CI", value)
    assert _tools.in_ci() is expected


def test_a_missing_tool_skips_outside_ci(no_ci):
    with pytest.raises(pytest.skip.Exception, match=f"`{ABSENT}` is not on PATH: to test"):
        _tools.require(ABSENT, "to test")


def test_a_missing_tool_fails_under_ci(ci):
    with pytest.raises(pytest.fail.Exception, match="a missing tool is a failure under CI"):
        _tools.require(ABSENT, "to test")


def test_a_present_tool_is_found(ci):
    assert _tools.require("sh", "to test") == shutil.which("sh")


def test_a_missing_compiler_names_the_variable(no_ci, monkeypatch):
    monkeypatch.setenv("CXX", f"{ABSENT} -O2")
    with pytest.raises(pytest.skip.Exception, match=rf"no CXX compiler: \$CXX \({ABSENT} -O2\)"):
        _tools.require_compiler("CXX", "to test")
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception, match="no CXX compiler"):
        _tools.require_compiler("CXX", "to test")


def test_a_compiler_without_the_sanitizer_runtime_skips(no_ci, tmp_path):
    """`true` links nothing and succeeds; `false` stands for a compiler that cannot."""
    _tools.require_sanitizer_runtime("true", ("-fsanitize=address",), tmp_path, "to test")
    with pytest.raises(pytest.skip.Exception, match="false cannot build with -fsanitize=address"):
        _tools.require_sanitizer_runtime("false", ("-fsanitize=address",), tmp_path, "to test")


def _path_without(tool: str) -> str:
    return os.pathsep.join(d for d in os.environ.get("PATH", "").split(os.pathsep)
                           if d and not (Path(d) / tool).exists())


def _short_fuzz_run(tmp_path: Path, ci: bool) -> subprocess.CompletedProcess:
    """The libFuzzer tests of test_fuzz_short.py in a pytest of their own, clang hidden."""
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "LORAQUANT_SKIP_FUZZ")}
    env["PATH"] = _path_without("clang++")
    if ci:
        env["CI"] = "true"
    return subprocess.run([sys.executable, "-m", "pytest", "tests/test_fuzz_short.py",
                           "-k", "libfuzzer", "-p", "no:cacheprovider",
                           f"--basetemp={tmp_path / 'inner'}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_short_fuzz_run_skips_without_clang(tmp_path):
    res = _short_fuzz_run(tmp_path, ci=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "3 skipped" in res.stdout and "passed" not in res.stdout, res.stdout[-3000:]
    assert "`clang++` is not on PATH" in res.stdout
    assert "apt-get install -y clang" in res.stdout


def test_short_fuzz_run_fails_without_clang_under_ci(tmp_path):
    res = _short_fuzz_run(tmp_path, ci=True)
    assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-2000:]
    assert "3 errors" in res.stdout and "skipped" not in res.stdout, res.stdout[-3000:]
    assert "a missing tool is a failure under CI" in res.stdout
