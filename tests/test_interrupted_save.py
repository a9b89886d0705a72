"""A save killed at any point leaves the old file or the new one, never a torn one.

Two ways to kill it: a child process that SIGKILLs itself at the k-th file-system call
of save (before or after the call, for every k), and a child saving in a loop that the
test SIGKILLs after a random delay. After each, the destination must load and hold
exactly the bytes of the old or of the new adapter.
"""
import random
import signal
import subprocess
import sys
import time

import pytest

import loraquant
from _hostile import modules

# save() touches the file system through these; each call is a point to die at.
KILL_AT_CALL = r"""
import os, signal, sys
import loraquant
from loraquant import adapter_file

target, source, k, when = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
adapter = loraquant.load(source)
calls = [0]

def point(fn):
    def wrapped(*args, **kwargs):
        if when == "before" and calls[0] == k:
            os.kill(os.getpid(), signal.SIGKILL)
        result = fn(*args, **kwargs)
        if when == "after" and calls[0] == k:
            os.kill(os.getpid(), signal.SIGKILL)
        calls[0] += 1
        return result
    return wrapped

class File:
    def __init__(self, f):
        self.f = f
        self.write, self.flush, self.close = point(f.write), point(f.flush), point(f.close)
    def __getattr__(self, name):
        return getattr(self.f, name)
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        self.close()

real_fdopen = os.fdopen
for name in ("open", "fsync", "replace", "close"):
    setattr(os, name, point(getattr(os, name)))
os.fdopen = lambda *a, **kw: File(real_fdopen(*a, **kw))
adapter_file.save(target, adapter)
print(calls[0])
"""

SAVE_IN_A_LOOP = r"""
import sys
import loraquant

target, sources = sys.argv[1], sys.argv[2:]
adapters = [loraquant.load(s) for s in sources]
print("ready", flush=True)
k = 0
while True:
    loraquant.save(target, adapters[k % len(adapters)])
    k += 1
"""

RANDOM_KILLS = 8
MAX_DELAY = 0.05


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    """Two saved adapters of different content: (path, bytes) each."""
    tmp = tmp_path_factory.mktemp("versions")
    mods = modules()
    out = []
    for k, scaling in enumerate((1.0, 2.0)):
        path = tmp / f"v{k}.lqa"
        loraquant.save(path, mods, scalings={n: scaling for n in mods})
        out.append((path, path.read_bytes()))
    assert out[0][1] != out[1][1]
    return out


def _check(target, allowed) -> int:
    """Which of the allowed versions the target holds (it must load as well)."""
    data = target.read_bytes()
    assert data in allowed, "the destination holds neither the old nor the new file"
    loraquant.load(target)
    return allowed.index(data)


def test_kill_at_every_file_system_call(tmp_path, versions):
    (_, old), (new_path, new) = versions
    target = tmp_path / "a.lqa"
    seen = set()
    for when in ("before", "after"):
        for k in range(100):
            target.write_bytes(old)
            res = subprocess.run([sys.executable, "-c", KILL_AT_CALL, str(target),
                                  str(new_path), str(k), when],
                                 capture_output=True, text=True, timeout=120)
            seen.add(_check(target, [old, new]))
            if res.returncode == 0:  # k is past the last call: the save completed
                assert int(res.stdout) == k and target.read_bytes() == new
                break
            assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
        else:
            pytest.fail("save made more than 100 file-system calls")
        assert k >= 5, f"only {k} calls were intercepted: the patching missed save()"
    assert seen == {0, 1}


def test_sigkill_after_a_random_delay(tmp_path, versions):
    (old_path, old), (new_path, new) = versions
    target = tmp_path / "b.lqa"
    rng = random.Random(5)
    for _ in range(RANDOM_KILLS):
        target.write_bytes(old)
        child = subprocess.Popen([sys.executable, "-c", SAVE_IN_A_LOOP, str(target),
                                  str(new_path), str(old_path)],
                                 stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout.readline().strip() == "ready"
            time.sleep(rng.uniform(0, MAX_DELAY))
        finally:
            child.kill()
            child.wait(timeout=60)
            child.stdout.close()
        assert child.returncode == -signal.SIGKILL
        _check(target, [old, new])
