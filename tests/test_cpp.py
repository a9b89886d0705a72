"""The C++ unit tests (cpp/tests), run through ctest on the shared session build."""
from __future__ import annotations

import re

import pytest

from _cppbuild import installed, run, tool  # noqa: F401  (installed is a fixture)

# One ctest per group of cases (cpp/tests/CMakeLists.txt), and the C program.
GROUPS = ["half", "pack", "vector", "kernels", "tall", "allocate", "svd", "module", "blob", "json", "adapter_file",
          "adapter_malformed", "c_api", "c_api_from_c"]


def test_ctest_lists_every_group(installed):
    out = run([tool("ctest"), "--test-dir", installed.build, "-N"]).stdout
    names = re.findall(r"Test\s+#\d+: (\S+)", out)
    assert sorted(names) == sorted(GROUPS), out


@pytest.mark.parametrize("group", GROUPS)
def test_ctest_group(installed, group):
    p = run([tool("ctest"), "--test-dir", installed.build, "--output-on-failure",
             "-R", f"^{group}$"], check=False)
    assert p.returncode == 0, p.stdout[-8000:] + p.stderr[-2000:]
    # Exactly this one test ran, and passed.
    assert re.search(rf"Test\s+#\d+: {group} \.+\s+Passed", p.stdout), p.stdout
    assert re.search(r"100% tests passed.* out of 1\b", p.stdout), p.stdout
