"""Checks that bench/paper_method.py does what METHOD.md says the published method does."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import paper_method as P  # noqa: E402

EXACT = 1e-12      # float64 arithmetic on a handful of numbers
SVD_TOL = 1e-9     # two float64 SVD routes to the same factors
GRAD_TOL = 1e-10   # written-out gradient against autograd, float64


def _pair(m, n, r, seed, decay=0.7):
    g = torch.Generator().manual_seed(seed)
    s = torch.arange(1, r + 1, dtype=torch.float64) ** -decay
    U = torch.linalg.qr(torch.randn(m, r, generator=g, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(n, r, generator=g, dtype=torch.float64))[0]
    M = torch.eye(r, dtype=torch.float64) + 0.3 * torch.randn(r, r, generator=g, dtype=torch.float64)
    return torch.linalg.solve(M, s[:, None] * V.T), U @ M   # A (r, n), B (m, r)


# --- split --------------------------------------------------------------------------

ENERGY = torch.tensor([50.0, 30.0, 10.0, 5.0, 5.0], dtype=torch.float64).sqrt()   # shares .5 .8 .9 .95 1


@pytest.mark.parametrize("rho, text, code", [
    (0.5, 1, 1), (0.8, 2, 1), (0.85, 3, 2), (0.9, 3, 2), (0.99, 5, 4), (1.0, 5, 4)])
def test_split_rules_on_a_hand_made_spectrum(rho, text, code):
    assert P.energy_split(ENERGY, rho, "text") == text
    assert P.energy_split(ENERGY, rho, "code") == code


def test_split_default_is_the_public_code_rule():
    assert P.energy_split(ENERGY, 0.8) == 1


def test_split_rejects_bad_input():
    with pytest.raises(ValueError):
        P.energy_split(ENERGY, 0.0)
    with pytest.raises(ValueError):
        P.energy_split(ENERGY, 0.8, "paper")


# --- quantizers --------------------------------------------------------------------

def test_rtn_2bit_levels_on_a_tiny_vector():
    # scale = 3/3 = 1, zero = round(1) = 1: levels -1, 0, 1, 2
    x = torch.tensor([[-1.0, -0.2, 0.3, 2.0, 1.6]], dtype=torch.float64)
    got = P.rtn_rows(x, 2)
    assert torch.allclose(got, torch.tensor([[-1.0, 0.0, 0.0, 2.0, 2.0]], dtype=torch.float64),
                          atol=EXACT)


def test_rtn_3bit_integer_zero_point_shifts_the_grid():
    # scale = 3/7, zero = round(7/3) = 2: levels (q - 2) * 3/7, so -1 is not a level
    x = torch.tensor([[-1.0, 2.0]], dtype=torch.float64)
    got = P.rtn_rows(x, 3)
    assert torch.allclose(got, torch.tensor([[-6 / 7, 15 / 7]], dtype=torch.float64), atol=EXACT)


def test_rtn_last_group_is_shorter_and_has_its_own_range():
    x = torch.zeros(1, 130, dtype=torch.float64)
    x[0, :128] = torch.linspace(-50, 50, 128, dtype=torch.float64)
    x[0, 128:] = torch.tensor([0.0, 3.0])          # scale 1, zero 0: both exact
    got = P.rtn_rows(x, 2)
    assert torch.allclose(got[0, 128:], x[0, 128:], atol=EXACT)


def test_sign_uses_the_mean_magnitude_of_each_group():
    x = torch.tensor([[1.0, -3.0, 2.0, -2.0, 4.0, -8.0]], dtype=torch.float64)
    got = P.sign_rows(x, group=4)                    # groups [1,-3,2,-2] and [4,-8]
    want = torch.tensor([[2.0, -2.0, 2.0, -2.0, 6.0, -6.0]], dtype=torch.float64)
    assert torch.allclose(got, want, atol=EXACT)


def test_groups_run_down_columns_of_b_and_along_rows_of_a():
    # one column of B with a huge entry must not change the other column's grid
    B = torch.tensor([[-1.0, -1.0], [0.0, 0.0], [1.0, 1.0], [2.0, 1000.0]], dtype=torch.float64)
    Bq, Aq = P.quantize_factors(B, B.T, lambda x: P.rtn_rows(x, 2, group=4))
    assert torch.allclose(Bq[:, 0], B[:, 0], atol=EXACT)   # -1..2 is exactly a 2-bit grid
    assert torch.allclose(Aq[0], B[:, 0], atol=EXACT)


def test_rtn_integer_zero_point_cannot_reach_the_top_of_a_positive_group():
    # as in the public code: zero = round(-1) = -1 is clamped to 0, levels 0..3
    got = P.rtn_rows(torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64), 2)
    assert torch.allclose(got, torch.tensor([[1.0, 2.0, 3.0, 3.0]], dtype=torch.float64), atol=EXACT)


# --- SVD and the method ---------------------------------------------------------------

def test_both_svd_routes_give_the_same_factors():
    A, B = _pair(70, 90, 6, seed=1)
    Bp1, s1, Ap1 = P.svd_factors(A, B, "product")
    Bp2, s2, Ap2 = P.svd_factors(A, B, "qr")
    assert torch.allclose(s1, s2, atol=SVD_TOL)
    assert torch.allclose(Bp1 @ Ap1, B @ A, atol=SVD_TOL)
    for i in range(6):   # rank-1 pieces agree, whatever the signs
        assert torch.allclose(torch.outer(Bp1[:, i], Ap1[i]), torch.outer(Bp2[:, i], Ap2[i]),
                              atol=SVD_TOL)
    assert torch.allclose(Bp2.norm(dim=0) ** 2, s2, atol=SVD_TOL)   # B' = U S^1/2


def test_rel_error_matches_the_explicit_matrix():
    A, B = _pair(50, 40, 5, seed=2)
    Ah, Bh = A + 0.01 * torch.ones_like(A), B * 1.1
    want = ((2.0 * B @ A - Bh @ Ah).norm() / (2.0 * B @ A).norm()).item()
    assert P.rel_error(A, B, 2.0, Ah, Bh) == pytest.approx(want, rel=1e-9)


def test_paper_method_bits_on_a_known_shape():
    # m=256, n=384: 2 + 3 = 5 groups per component. h=2 at 2 bits, 2 at 1 bit:
    # high 2*(2*640 + 32*5), low 2*(640 + 16*5), over 4*640 weights.
    A, B = _pair(256, 384, 4, seed=3, decay=0.3)
    q = P.paper_method(A, B, rho=0.6, refine=False, split_rule="text")
    assert q.h == 2
    assert q.honest_bits == pytest.approx((2 * (1280 + 160) + 2 * (640 + 80)) / 2560, abs=EXACT)
    assert q.paper_bits == pytest.approx(1.5, abs=EXACT)


def test_baselines_bits():
    assert P.honest_bits(4096, 4096, [2] * 16) == pytest.approx(2.25, abs=EXACT)
    assert P.honest_bits(4096, 4096, [1] * 16) == pytest.approx(1.125, abs=EXACT)
    A, B = _pair(256, 384, 4, seed=4)
    assert P.rtn_baseline(A, B, bits=3).honest_bits == pytest.approx(3 + 32 * 5 / 640, abs=EXACT)
    assert P.sign_baseline(A, B).honest_bits == pytest.approx(1 + 16 * 5 / 640, abs=EXACT)


def test_paper_method_folds_the_scaling_and_beats_sign():
    A, B = _pair(300, 200, 8, seed=5)
    q = P.paper_method(A, B, 3.0, rho=0.9, high_bits=3, refine=False)
    sign = P.sign_baseline(A, B, 3.0)
    err = P.rel_error(A, B, 3.0, q.A_hat, q.B_hat)
    assert err < 0.5 * P.rel_error(A, B, 3.0, sign.A_hat, sign.B_hat)
    assert err == pytest.approx(P.rel_error(A, 3.0 * B, 1.0, q.A_hat, q.B_hat), rel=1e-12)


# --- refinement -----------------------------------------------------------------------

def _autograd_step(refiner, x, lr):
    """What torch.optim.SGD on the refiner's parameters would do, through autograd."""
    b, a = x
    if refiner is P._EntrySGD:
        leaves = [t.clone().requires_grad_(True) for t in (b, a)]
        groups = [P._groups(t, 128, "edge") for t in leaves]
        ranges = [(g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)) for g in groups]
    else:
        groups = [P._groups(t, 128, "edge") for t in (b, a)]
        leaves = [t.clone().requires_grad_(True) for g in groups
                  for t in (g.amin(-1, keepdim=True), g.amax(-1, keepdim=True))]
        ranges = [leaves[:2], leaves[2:]]
    p, q = (P._ungroup(P.rtn_apply(g, *P.rtn_grid(lo, hi, 2), 2), t.shape[1])
            for g, (lo, hi), t in zip(groups, ranges, (b, a)))
    P._pair_loss(b, a, p, q).sum().backward()
    return [(t - lr * t.grad).detach() for t in leaves], [t.grad for t in leaves]


@pytest.mark.parametrize("refiner", [P._EntrySGD, P._RangeSGD])
def test_refinement_gradient_matches_autograd(refiner):
    g = torch.Generator().manual_seed(6)
    b = torch.randn(3, 300, generator=g, dtype=torch.float64)
    a = torch.randn(3, 200, generator=g, dtype=torch.float64)
    want, grads = _autograd_step(refiner, (b, a), lr=0.5)
    assert all(gr.abs().max() > 0 for gr in grads)
    rb, ra = refiner(b, 2, 128), refiner(a, 2, 128)
    (p, off_b), (q, off_a) = rb.dequant(), ra.dequant()
    gp, gq = P._refine_grad(b, a, p, q)
    rb.step(off_b, gp, 0.5)
    ra.step(off_a, gq, 0.5)
    got = [rb.x, ra.x] if refiner is P._EntrySGD else [rb.lo, rb.hi, ra.lo, ra.hi]
    for w, gt in zip(want, got):
        assert torch.allclose(gt, w, atol=GRAD_TOL)


@pytest.mark.parametrize("params", ["entries", "range"])
def test_refinement_lowers_the_error_of_each_high_component(params):
    A, B = _pair(640, 384, 4, seed=7, decay=0.2)
    Bp, _, Ap = P.svd_factors(A, B)
    plain = P.quantize_factors(Bp, Ap, lambda x: P.rtn_rows(x, 2))
    tuned = P.refine_high(Bp, Ap, 2, params=params)
    for i in range(4):
        target = torch.outer(Bp[:, i], Ap[i])
        e_plain = (target - torch.outer(plain[0][:, i], plain[1][i])).norm()
        e_tuned = (target - torch.outer(tuned[0][:, i], tuned[1][i])).norm()
        assert e_tuned < 0.97 * e_plain


@pytest.mark.parametrize("params", ["entries", "range"])
def test_refinement_with_no_steps_is_plain_rtn(params):
    A, B = _pair(200, 130, 3, seed=8)
    Bp, _, Ap = P.svd_factors(A, B)
    Bq, Aq = P.quantize_factors(Bp, Ap, lambda x: P.rtn_rows(x, 3))
    Bt, At = P.refine_high(Bp, Ap, 3, steps=0, params=params)
    assert torch.allclose(Bt, Bq, rtol=1e-6, atol=1e-7)   # float32 inside refine_high
    assert torch.allclose(At, Aq, rtol=1e-6, atol=1e-7)


def test_refinement_rejects_unknown_params():
    with pytest.raises(ValueError):
        P.refine_high(torch.ones(4, 1), torch.ones(1, 4), 2, params=True)
