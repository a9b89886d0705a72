"""compress(): factors, widths, honest bits, paper mode against the published recipe."""
import numpy as np
import pytest
import torch

import loraquant
from loraquant import _core
from _refs import HEADER_BYTES, lora_like, paper_reference, payload_bytes, rtn_pair_reference

DIMS = [1, 3, 127, 129, 1000]
RANKS = [1, 3, 16, 64]


def rel_err(A, B, q, scaling=1.0):
    Ah, Bh = q.dequantize()
    ref = scaling * (torch.as_tensor(B, dtype=torch.float64) @ torch.as_tensor(A, dtype=torch.float64))
    got = Bh.double() @ Ah.double()
    return float(torch.linalg.norm(ref - got) / torch.linalg.norm(ref))


@pytest.mark.parametrize("r", RANKS)
def test_awkward_shapes_all_consistent(r):
    for m in DIMS:
        for n in DIMS:
            A, B = lora_like(m, n, r, 0.8, seed=m * 7 + n + r)
            q = loraquant.compress(A, B, bits=2.5, scaling=0.5)
            assert q.shape == (m, n) and q.rank == r and len(q.widths) == r
            payload = q.core.payload()
            # honest bits, recomputed from the buffer's own widths and shifts
            assert q.nbytes == len(payload) == payload_bytes(payload, m, n, r, 128)
            assert q.avg_bits == pytest.approx(8 * q.nbytes / (r * (m + n)))
            blob = q.to_bytes()
            assert len(blob) == q.nbytes + HEADER_BYTES
            Ah, Bh = q.dequantize()
            assert tuple(Ah.shape) == (r, n) and tuple(Bh.shape) == (m, r)
            assert Ah.dtype == torch.float32
            assert rel_err(A, B, q, 0.5) == pytest.approx(q.rel_error, rel=1e-6, abs=1e-9)
            # no component beyond the rank of B @ A can carry a width
            assert all(w == (0, 0) for w in q.widths[min(m, n, r):])


def test_thin_svd_matches_full_svd_and_is_deterministic():
    A, B = lora_like(300, 200, 16, 0.7, seed=1)
    sigma, b, a = _core.thin_svd(A, B, 2.0)
    full = np.linalg.svd(2.0 * B @ A, compute_uv=False)[:16]
    assert np.allclose(sigma, full, rtol=1e-10, atol=1e-14)
    assert np.allclose(b.T @ a, 2.0 * B @ A, atol=1e-12)
    assert np.allclose(np.sum(b * b, axis=1), sigma) and np.allclose(np.sum(a * a, axis=1), sigma)
    idx = np.argmax(np.abs(b), axis=1)
    assert np.all(b[np.arange(16), idx] > 0)  # sign convention: largest |u_i| entry positive
    sigma2, b2, a2 = _core.thin_svd(A, B, 2.0)
    assert np.array_equal(b, b2) and np.array_equal(a, a2)


def test_negative_scaling_is_folded_into_b():
    A, B = lora_like(64, 48, 4, 0.7, seed=2)
    sigma, b, a = _core.thin_svd(A, B, -1.5)
    assert np.all(sigma >= 0)
    assert np.allclose(b.T @ a, -1.5 * B @ A, atol=1e-12)


def test_paper_split_follows_the_papers_text():
    s = np.sqrt([50.0, 30.0, 15.0, 5.0])  # shares .5 .8 .95 1.0
    assert _core.paper_split(s, 0.8) == 2
    assert _core.paper_split(s, 0.81) == 3
    assert _core.paper_split(s, 0.5) == 1
    assert _core.paper_split(s, 1.0) == 4
    assert _core.paper_split(np.zeros(4), 0.9) == 0


@pytest.mark.parametrize("rho,high", [(0.8, 2), (0.9, 2), (0.9, 3)])
def test_paper_mode_no_worse_than_the_published_recipe(rho, high):
    for seed, (m, n, r, decay) in enumerate([(512, 384, 16, 0.8), (1000, 129, 8, 0.9), (256, 700, 4, 0.95)]):
        A, B = lora_like(m, n, r, decay, seed=seed)
        q = loraquant.compress(A, B, rho=rho, high_bits=high)
        Bh, Ah, h = paper_reference(A, B, rho, high)
        ref = torch.as_tensor(B @ A)
        ref_err = float(torch.linalg.norm(ref - Bh @ Ah) / torch.linalg.norm(ref))
        assert q.widths[:h] == [(high, high)] * h and q.widths[h:] == [(1, 1)] * (r - h)
        assert q.rel_error <= ref_err, (seed, q.rel_error, ref_err)


def test_budget_mode_stays_in_budget_and_improves_with_bits():
    A, B = lora_like(1000, 700, 16, 0.85, seed=3)
    errs = []
    for bits in [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0]:
        q = loraquant.compress(A, B, bits=bits)
        assert q.avg_bits <= bits + 1e-12
        errs.append(q.rel_error)
    assert all(e1 <= e0 * (1 + 1e-9) for e0, e1 in zip(errs, errs[1:]))
    assert errs[-1] < 0.15 * errs[3]  # four more bits: error about halves per bit


@pytest.mark.parametrize("bits", [2, 3])
def test_budget_mode_beats_plain_rtn_at_the_same_bits(bits):
    for seed, (m, n, r, decay) in enumerate([(512, 512, 16, 0.85), (768, 256, 4, 0.97), (300, 900, 8, 0.9)]):
        A, B = lora_like(m, n, r, decay, seed=10 + seed)
        Bh, Ah, honest = rtn_pair_reference(A, B, bits)
        ref = torch.as_tensor(B @ A)
        rtn_err = float(torch.linalg.norm(ref - Bh @ Ah) / torch.linalg.norm(ref))
        q = loraquant.compress(A, B, bits=honest)
        assert q.avg_bits <= honest
        assert q.rel_error < rtn_err, (seed, q.rel_error, rtn_err)


def test_all_zero_adapter_is_a_valid_zero_result():
    A = np.zeros((4, 33))
    B = np.zeros((17, 4))
    for kw in [dict(bits=2.0), dict(rho=0.9)]:
        q = loraquant.compress(A, B, **kw)
        assert q.widths == [(0, 0)] * 4 and q.rel_error == 0.0
        Ah, Bh = q.dequantize()
        assert float(Ah.abs().sum()) == 0.0 and float(Bh.abs().sum()) == 0.0
        y = q.apply(torch.randn(3, 33))
        assert float(y.abs().sum()) == 0.0
        assert loraquant.QuantizedLoRA.from_bytes(q.to_bytes()).to_bytes() == q.to_bytes()


def _sq_error(out, pairs, relative):
    total = 0.0
    for k, q in out.items():
        A, B, _ = pairs[k]
        norm2 = 1.0 if relative else float(np.sum((B @ A) ** 2))
        total += q.rel_error ** 2 * norm2
    return total


@pytest.mark.parametrize("balance", ["relative", "absolute"])
def test_compress_adapter_spreads_one_budget(balance):
    # modules differ in spectrum shape (decay) and in norm (scale)
    specs = [(0.6, 0.01), (0.95, 0.01), (0.8, 0.002), (0.8, 0.05)]
    pairs = {f"m{i}": (*lora_like(256, 256, 8, d, seed=i, scale=s), 1.0) for i, (d, s) in enumerate(specs)}
    out = loraquant.compress_adapter(pairs, bits=2.0, balance=balance)
    assert list(out) == list(pairs)
    assert sum(q.nbytes for q in out.values()) * 8 <= 2.0 * len(pairs) * 8 * (256 + 256)
    bits = {k: q.avg_bits for k, q in out.items()}
    assert bits["m1"] > bits["m0"]  # the flatter spectrum needs more bits either way
    if balance == "absolute":
        assert bits["m3"] > bits["m2"]  # the larger update wins under the plain sum
    else:
        assert bits["m2"] > 0.5  # a small update is not starved
    # one shared budget beats compressing each module alone at the same average
    alone = {k: loraquant.compress(A, B, bits=2.0) for k, (A, B, _) in pairs.items()}
    rel = balance == "relative"
    assert _sq_error(out, pairs, rel) < _sq_error(alone, pairs, rel)


def test_compress_adapter_rejects_an_unknown_balance():
    pairs = {"a": (*lora_like(32, 32, 4, 0.8, seed=0), 1.0)}
    with pytest.raises(ValueError, match="balance"):
        loraquant.compress_adapter(pairs, bits=2.0, balance="fair")


def test_compress_adapter_names_the_bad_module():
    pairs = {"good": (*lora_like(32, 32, 4, 0.8, seed=0), 1.0),
             "bad": (np.full((4, 32), np.nan), np.ones((32, 4)), 1.0)}
    with pytest.raises(ValueError, match="'bad'.*NaN"):
        loraquant.compress_adapter(pairs, bits=2.0)
