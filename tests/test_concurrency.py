"""Several Python threads at once: compress, apply, dequantize and from_bytes give
exactly what one thread gives, and the long C++ calls let other threads run (they
release the GIL)."""
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import loraquant
from _hostile import pair

THREADS = 8
# Awkward shapes; batch sizes below, at and above apply's 8-row blocks (OpenMP inside).
SHAPES = [(40, 23, 5), (64, 33, 6), (17, 90, 4), (130, 7, 3), (31, 31, 8), (9, 70, 2),
          (1, 5, 1), (200, 50, 7)]
BATCHES = [1, 7, 8, 33]
# A call is long enough to observe when it runs this long; the ticker must run
# strictly inside it, away from both ends by MARGIN.
LONG_CALL = 0.2
MARGIN = 0.03


@pytest.fixture(scope="module")
def pairs():
    return [pair(i, *s) for i, s in enumerate(SHAPES)]


@pytest.fixture(scope="module")
def modules(pairs):
    return [loraquant.compress(A, B, bits=3.0, group_size=16) for A, B in pairs]


def _parallel(fn, items):
    with ThreadPoolExecutor(THREADS) as pool:
        return list(pool.map(fn, items))


def test_compress_in_threads_gives_the_same_bytes(pairs):
    def run(p):
        return loraquant.compress(*p, bits=2.5).to_bytes()

    want = [run(p) for p in pairs]
    assert _parallel(run, pairs * 3) == want * 3


def test_compress_adapter_calls_in_threads_give_the_same_bytes(pairs):
    def run(k):
        named = {f"m{i}": (A, B, 0.5 + k) for i, (A, B) in enumerate(pairs)}
        return [q.to_bytes() for q in loraquant.compress_adapter(named, bits=2.0).values()]

    want = [run(k) for k in range(3)]
    assert _parallel(run, [0, 1, 2, 0, 1, 2]) == want + want


def test_apply_dequantize_and_from_bytes_in_threads_give_the_same_results(modules):
    jobs = [(i, b) for i in range(len(modules)) for b in BATCHES]

    def run(job):
        i, batch = job
        q = modules[i]
        x = np.cos(np.arange(batch * q.shape[1], dtype=np.float32)).reshape(batch, -1)
        again = loraquant.QuantizedLoRA.from_bytes(q.to_bytes())
        a, b = q.dequantize()
        return q.apply(x), again.apply(x), a.numpy(), b.numpy()

    want = [run(j) for j in jobs]
    got = _parallel(run, jobs * 2)
    for w, g in zip(want * 2, got):
        for wa, ga in zip(w, g):
            assert np.array_equal(wa, ga)


def _ticks_inside(call) -> int:
    """How often another Python thread ran while `call` was inside C++."""
    ticks, stop = [], threading.Event()

    def ticker():
        while not stop.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.001)

    t = threading.Thread(target=ticker)
    t.start()
    time.sleep(0.02)
    start = time.perf_counter()
    call()
    end = time.perf_counter()
    stop.set()
    t.join()
    assert end - start > LONG_CALL, f"the call took only {end - start:.3f} s; make it longer"
    return sum(start + MARGIN < x < end - MARGIN for x in ticks)


def test_long_core_calls_release_the_gil():
    """One call each (between calls the GIL is free anyway): compress and apply."""
    A, B = pair(0, 4096, 4096, 192)
    q = loraquant.compress(A, B, bits=3.0)
    x = np.ones((2048, 4096), dtype=np.float32)
    assert _ticks_inside(lambda: loraquant.compress(A, B, bits=3.0)) > 0
    assert _ticks_inside(lambda: q.apply(x)) > 0
