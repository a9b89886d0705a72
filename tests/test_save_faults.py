"""A read-only or full destination: save raises the OSError naming the file, the old
file stays as it was and no temporary file is left.

Tests run as root, where chmod does not stop writes, so the faults are injected where
save meets the file system; a real full and read-only tmpfs is used too where this
machine lets the tests mount one.
"""
import errno
import os
import subprocess

import pytest
import torch

import loraquant
from loraquant import adapter_file
from _hostile import modules

# Bigger than the tmpfs below, so writing it must run out of space.
TMPFS_BYTES = 64 * 1024
BIG_EXTRA = torch.ones(64 * 1024)


def _raise(code):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))
    return fail


class _Failing:
    """A file object whose method `name` fails with errno `code`."""

    def __init__(self, f, name, code):
        self.f, self.name, self.code = f, name, code

    def __getattr__(self, attr):
        if attr == self.name:
            return _raise(self.code)
        return getattr(self.f, attr)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()
        if self.name == "close":
            _raise(self.code)()


def _file_fault(name, code):
    real = os.fdopen
    return "fdopen", lambda *a, **kw: _Failing(real(*a, **kw), name, code)


#: (what is patched on adapter_file.os, the replacement, errno, exception type)
FAULTS = {
    "read-only: create refused": ("open", _raise(errno.EACCES), errno.EACCES, PermissionError),
    "read-only file system": ("open", _raise(errno.EROFS), errno.EROFS, OSError),
    "full: no inode for the temporary": ("open", _raise(errno.ENOSPC), errno.ENOSPC, OSError),
    "full at write": (*_file_fault("write", errno.ENOSPC), errno.ENOSPC, OSError),
    "full at flush": (*_file_fault("flush", errno.ENOSPC), errno.ENOSPC, OSError),
    "full at close": (*_file_fault("close", errno.ENOSPC), errno.ENOSPC, OSError),
    "quota at fsync": ("fsync", _raise(errno.EDQUOT), errno.EDQUOT, OSError),
    "rename refused": ("replace", _raise(errno.EACCES), errno.EACCES, PermissionError),
    "rename onto a busy file": ("replace", _raise(errno.EBUSY), errno.EBUSY, OSError),
}


def _leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("case", sorted(FAULTS))
def test_fault_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch, case):
    attr, replacement, code, kind = FAULTS[case]
    path = tmp_path / "a.lqa"
    loraquant.save(path, modules())
    old = path.read_bytes()
    monkeypatch.setattr(adapter_file.os, attr, replacement)
    with pytest.raises(kind, match=f"cannot save the adapter to {path}") as info:
        loraquant.save(path, modules(), scalings={n: 3.0 for n in modules()})
    monkeypatch.undo()
    assert info.value.errno == code
    assert path.read_bytes() == old
    assert _leftovers(tmp_path) == []


def test_cleanup_failure_still_reports_the_first_error(tmp_path, monkeypatch):
    path = tmp_path / "a.lqa"
    loraquant.save(path, modules())
    old = path.read_bytes()
    monkeypatch.setattr(adapter_file.os, "replace", _raise(errno.ENOSPC))
    monkeypatch.setattr(adapter_file.os, "unlink", _raise(errno.EIO))
    with pytest.raises(OSError, match="No space left") as info:
        loraquant.save(path, modules(), scalings={n: 3.0 for n in modules()})
    assert info.value.errno == errno.ENOSPC
    assert path.read_bytes() == old


@pytest.fixture
def tiny_tmpfs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", str(mnt)],
                         capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip()}); the faults above are "
                    f"simulated instead")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True, timeout=60)


def test_real_full_then_read_only_tmpfs(tiny_tmpfs):
    path = tiny_tmpfs / "a.lqa"
    loraquant.save(path, modules())
    old = path.read_bytes()
    with pytest.raises(OSError, match=f"cannot save the adapter to {path}") as info:
        loraquant.save(path, modules(), extras={"big": BIG_EXTRA})
    assert info.value.errno == errno.ENOSPC
    assert path.read_bytes() == old and _leftovers(tiny_tmpfs) == []
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_tmpfs)], check=True, timeout=60)
    with pytest.raises(OSError, match=f"cannot save the adapter to {path}") as info:
        loraquant.save(path, modules(), scalings={n: 3.0 for n in modules()})
    assert info.value.errno == errno.EROFS
    assert path.read_bytes() == old and _leftovers(tiny_tmpfs) == []
