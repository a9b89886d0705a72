"""compress at magnitudes near and beyond what float32 factors can hold.

Regressions of two lq_fuzz_compress findings (fuzz/cpp/sanitize_check.cpp replays the
inputs under the sanitizers): factors beyond float32 turned into NaN codes through an
undefined float-to-int conversion, and so did factors near 2^-120.
"""
import numpy as np
import pytest

import loraquant
from _hostile import pair

A0, B0 = pair(3, 64, 48, 6)


@pytest.mark.parametrize("scale, match", [
    (1e60, "too large to store: its factors reach"),        # factors past 2^100
    (1e80, "too large to store: its factors reach inf"),    # factors past float32
    (1e160, "its factorisation overflows double precision"),  # squares past float64
])
def test_update_too_large_for_the_format_is_refused(scale, match):
    with pytest.raises(ValueError, match=match):
        loraquant.compress(A0 * scale, B0)
    with pytest.raises(ValueError, match=match):
        loraquant.compress_adapter({"m": (A0, B0 * scale, 1.0)})


@pytest.mark.parametrize("scale", [1e-80, 1e-72, 1e-30, 1.0, 1e12, 1e28])
def test_large_and_tiny_updates_compress_to_finite_modules(scale):
    q = loraquant.compress(A0 * scale, B0, bits=3.0)
    assert any(b > 0 for b, _ in q.widths) and np.isfinite(q.rel_error)
    a, b = (t.numpy() for t in q.dequantize())
    assert np.isfinite(a).all() and np.isfinite(b).all()
    x = np.ones((2, 48), dtype=np.float32)
    assert np.isfinite(q.apply(x)).all()
