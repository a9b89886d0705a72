"""The packed CPU kernel against dequantize-then-matmul (apply_ref) and torch."""
import numpy as np
import pytest
import torch

import loraquant
from _refs import lora_like

# float32 accumulation over n terms against a double reference
REL_TOL = 2e-5


@pytest.mark.parametrize("m,n,r", [(1, 1, 1), (3, 129, 3), (127, 1000, 16), (1000, 3, 64), (129, 127, 8)])
@pytest.mark.parametrize("batch", [1, 5, 33])
def test_apply_matches_reference(m, n, r, batch):
    A, B = lora_like(m, n, r, 0.85, seed=m + n + r)
    for kw in [dict(bits=1.5), dict(bits=3.0), dict(rho=0.9, high_bits=3), dict(bits=2.0, group_size=7)]:
        q = loraquant.compress(A, B, **kw)
        x = np.random.default_rng(batch).standard_normal((batch, n)).astype(np.float32)
        fast = q.core.apply(x, False)
        ref = q.core.apply(x, True)
        scale = np.abs(ref).max() + 1e-30
        assert np.abs(fast - ref).max() <= REL_TOL * scale * max(1, np.sqrt(n) / 8)
        Ah, Bh = q.dequantize()
        want = (torch.from_numpy(x).double() @ (Bh.double() @ Ah.double()).T).numpy()
        assert np.abs(ref - want).max() <= 1e-6 * scale
