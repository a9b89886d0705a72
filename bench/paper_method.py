"""The published LoRAQuant method (METHOD.md, steps 1-6), written plainly in torch.

This is the reference the benches compare loraquant against. It simulates quantization
in floating point, as the published method does; nothing here is packed.

Conventions: A is lora_A.weight (r, n), B is lora_B.weight (m, r), the update is
scaling * B @ A. Every function returns factors with the scaling folded into B_hat, so
B_hat @ A_hat approximates scaling * B @ A.

Quantizer (RTN, asymmetric min/max): in each group, scale = (max - min) / (2^b - 1),
zero = clamp(round(-min / scale), 0, 2^b - 1) (an integer zero point, as in the
public code), x_hat = (clamp(round(x / scale) + zero, 0, 2^b - 1) - zero) * scale.
A group whose range is zero gets the smallest positive scale instead of dividing by
zero (the public code clamps the range at an absolute 1e-5, which is not scale-free).
Binary quantizer: x_hat = sign(x) * mean(|x|) over the group.
Groups hold `group` consecutive entries down each column of B' and along each row of
A' (the last group of a vector is shorter), so a group never mixes components.

Refinement (METHOD.md step 5), as read here: 300 steps of plain SGD, lr 1e-2, on
|b a - Q(b) Q(a)|_F for each high component (b, a). Rounding has zero gradient and the
zero point is rounded too, so the loss reaches a group only through its scale, that is
through its range. Two parameterisations, selectable:
- "entries" (default): as in the public code, the entries of b and a are trained; a
  group's range is its min and max entry, so those two carry all of the gradient, and
  the moved entries are quantized in the end.
- "range": each group's (min, max) are trained directly, initialised at the extremes,
  and the original entries are quantized with the trained range (clamped outside it).
The two agree while a group's extreme entry stays its extreme; they part when a moving
extreme passes another entry. On synthetic adapters "entries" ends 0.2-1 % lower. The loss uses
the exact identity |b a - p q|_F^2 = |b|^2|a|^2 - 2 (b.p)(a.q) + |p|^2|q|^2, so no m x n
matrix is formed. Components are independent, so summing their losses and stepping
once is the same as 300 separate SGD runs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

GROUP = 128
REFINE_STEPS = 300
REFINE_LR = 1e-2
SCALE_BITS = 16          # one fp16 number
SPLIT_TOL = 1e-12        # relative slack when comparing a cumulative share with rho


@dataclass
class Quantized:
    """Dequantized factors and their bit counts. B_hat @ A_hat ~ scaling * B @ A."""
    A_hat: torch.Tensor       # (r, n) float64
    B_hat: torch.Tensor       # (m, r) float64
    honest_bits: float        # every stored number counted, per weight of the pair
    paper_bits: float         # codes only, as the paper reports
    h: int | None = None      # components in the high part (paper method only)


# --- step 1: SVD reparameterization ---------------------------------------------

def svd_factors(A, B, method="product"):
    """(B' (m, r), s (r,), A' (r, n)) with B @ A = B' A', B' = U S^1/2, A' = S^1/2 V^T.

    method="product": SVD of the m x n product, as the public code does (slow for big
    shapes). method="qr": QR of B and of A^T, then SVD of the r x r core: the same
    factors (up to the signs of singular vector pairs) in O((m + n) r^2).
    """
    A = torch.as_tensor(A, dtype=torch.float64)
    B = torch.as_tensor(B, dtype=torch.float64)
    r = A.shape[0]
    if method == "product":
        U, s, Vh = torch.linalg.svd(B @ A, full_matrices=False)
        U, s, Vh = U[:, :r], s[:r], Vh[:r]
    elif method == "qr":
        Qb, Rb = torch.linalg.qr(B)
        Qa, Ra = torch.linalg.qr(A.T)
        Uc, s, Vch = torch.linalg.svd(Rb @ Ra.T)
        U, Vh = Qb @ Uc, (Qa @ Vch.T).T
    else:
        raise ValueError(f"svd method must be 'product' or 'qr', got {method!r}")
    root = s.clamp(min=0).sqrt()
    return U * root, s, root[:, None] * Vh


# --- step 2: the split ---------------------------------------------------------------

def energy_split(s, rho, rule="code"):
    """Number h of high components for energy ratio rho over singular values s.

    rule="text": the smallest count whose cumulative share of sum(s^2) reaches rho.
    rule="code": the public code's variant, the 0-based index of the first crossing
    (one fewer than "text"), at least 1.
    """
    if not 0.0 < rho <= 1.0:
        raise ValueError(f"rho must be in (0, 1], got {rho}")
    e = torch.as_tensor(s, dtype=torch.float64) ** 2
    share = torch.cumsum(e, 0) / e.sum()
    reached = (share >= rho * (1 - SPLIT_TOL)).nonzero()
    text = int(reached[0]) + 1 if len(reached) else len(e)
    if rule == "text":
        return text
    if rule == "code":
        return max(1, text - 1)
    raise ValueError(f"split rule must be 'text' or 'code', got {rule!r}")


# --- steps 3-4: group quantizers ------------------------------------------------------

def _groups(x, group, fill):
    """Rows of x (k, L) cut into (k, G, group); the tail is padded with `fill`:
    "edge" repeats the row's last entry (min and max unchanged), "zero" pads zeros."""
    k, L = x.shape
    G = -(-L // group)
    pad = G * group - L
    if pad:
        tail = x[:, -1:].expand(k, pad) if fill == "edge" else x.new_zeros(k, pad)
        x = torch.cat([x, tail], 1)
    return x.reshape(k, G, group)


def _ungroup(xg, L):
    k = xg.shape[0]
    return xg.reshape(k, -1)[:, :L]


def rtn_grid(lo, hi, bits):
    """(scale, zero) of the asymmetric grid for group range [lo, hi]."""
    qmax = 2 ** bits - 1
    tiny = torch.finfo(hi.dtype).tiny
    scale = (hi - lo).clamp(min=tiny) / qmax
    zero = torch.round(-lo / scale).clamp(0, qmax)
    return scale, zero


def rtn_apply(xg, scale, zero, bits):
    """Dequantized values of grouped xg on the grid (scale, zero)."""
    qmax = 2 ** bits - 1
    q = (torch.round(xg / scale) + zero).clamp(0, qmax)
    return (q - zero) * scale


def rtn_rows(x, bits, group=GROUP):
    """Min/max RTN of each row of x (k, L) in groups of `group` along the row."""
    xg = _groups(x, group, "edge")
    scale, zero = rtn_grid(xg.amin(-1, keepdim=True), xg.amax(-1, keepdim=True), bits)
    return _ungroup(rtn_apply(xg, scale, zero, bits), x.shape[1])


def sign_rows(x, group=GROUP):
    """1-bit sign(x) * mean(|x|) of each row of x (k, L), groups along the row."""
    L = x.shape[1]
    xg = _groups(x, group, "zero")
    counts = torch.full((xg.shape[1],), group, dtype=x.dtype)
    counts[-1] = L - group * (xg.shape[1] - 1)
    mean_abs = xg.abs().sum(-1, keepdim=True) / counts[:, None]
    return _ungroup(torch.sign(xg) * mean_abs, L)


def quantize_factors(Bp, Ap, quant_rows):
    """Apply a row quantizer down each column of Bp (m, k) and along each row of Ap (k, n)."""
    return quant_rows(Bp.T).T, quant_rows(Ap)


# --- step 5: refinement ---------------------------------------------------------------

def _pair_loss(b, a, p, q):
    """|b a^T - p q^T|_F per row pair (rows of b, p: (k, m); of a, q: (k, n))."""
    sq = ((b * b).sum(1) * (a * a).sum(1) - 2 * (b * p).sum(1) * (a * q).sum(1)
          + (p * p).sum(1) * (q * q).sum(1))
    return sq.clamp(min=0).sqrt()


def _refine_grad(b, a, p, q):
    """(dL/dp, dL/dq) of L = sum over rows of |b a^T - p q^T|_F (see _pair_loss)."""
    bp, aq = (b * p).sum(1, keepdim=True), (a * q).sum(1, keepdim=True)
    pp, qq = (p * p).sum(1, keepdim=True), (q * q).sum(1, keepdim=True)
    loss = _pair_loss(b, a, p, q)[:, None].clamp(min=torch.finfo(b.dtype).tiny)
    return (qq * p - aq * b) / loss, (pp * q - bp * a) / loss


class _RangeSGD:
    """SGD on each group's (lo, hi) directly; the original entries are quantized."""

    def __init__(self, x, bits, group):
        self.bits, self.group, self.qmax, self.L = bits, group, 2 ** bits - 1, x.shape[1]
        self.xg = _groups(x, group, "edge")
        self.lo, self.hi = self.xg.amin(-1, keepdim=True), self.xg.amax(-1, keepdim=True)

    def dequant(self):
        """Dequantized values (k, L), and d(values)/d(scale) grouped: codes minus zero."""
        scale, zero = rtn_grid(self.lo, self.hi, self.bits)
        offset = (torch.round(self.xg / scale) + zero).clamp(0, self.qmax) - zero
        return _ungroup(offset * scale, self.L), offset

    def step(self, offset, grad, lr):
        """One SGD step given dL/d(values) (k, L). Rounding passes no gradient, so the
        loss reaches lo and hi only through scale = (hi - lo) / qmax."""
        g_scale = (offset * _groups(grad, self.group, "zero")).sum(-1, keepdim=True) / self.qmax
        self._move(lr * g_scale)

    def _move(self, d):
        self.hi = self.hi - d
        self.lo = self.lo + d


class _EntrySGD(_RangeSGD):
    """The public code's parameters: the entries. A group's range is its min and max
    entry, so those two entries carry the whole gradient; the moved entries are what
    gets quantized in the end."""

    def __init__(self, x, bits, group):
        super().__init__(x, bits, group)
        self.x = x.clone()

    def dequant(self):
        self.xg = _groups(self.x, self.group, "edge")
        self.lo, self.i_lo = self.xg.min(-1, keepdim=True)
        self.hi, self.i_hi = self.xg.max(-1, keepdim=True)
        return super().dequant()

    def _move(self, d):
        # first occurrences: a padded copy of the last entry never comes before it
        start = torch.arange(self.xg.shape[1])[:, None] * self.group
        self.x.scatter_add_(1, (start + self.i_hi)[..., 0], -d[..., 0])
        self.x.scatter_add_(1, (start + self.i_lo)[..., 0], d[..., 0])


REFINERS = {"entries": _EntrySGD, "range": _RangeSGD}


def refine_high(Bh, Ah, bits, group=GROUP, steps=REFINE_STEPS, lr=REFINE_LR, params="entries"):
    """Quantize high components (columns of Bh (m, h), rows of Ah (h, n)) at `bits`
    after SGD; params="entries" (the public code) or "range" (see the module
    docstring). float32 inside; the gradient is written out (tests check it against
    autograd)."""
    if params not in REFINERS:
        raise ValueError(f"refinement params must be one of {sorted(REFINERS)}, got {params!r}")
    b, a = Bh.T.to(torch.float32), Ah.to(torch.float32)
    rb, ra = REFINERS[params](b, bits, group), REFINERS[params](a, bits, group)
    for _ in range(steps):
        (p, off_b), (q, off_a) = rb.dequant(), ra.dequant()
        gp, gq = _refine_grad(b, a, p, q)
        rb.step(off_b, gp, lr)
        ra.step(off_a, gq, lr)
    return rb.dequant()[0].T.to(torch.float64), ra.dequant()[0].to(torch.float64)


# --- step 6: bits -------------------------------------------------------------------

def honest_bits(m, n, widths, group=GROUP):
    """Bits per weight of r*(m+n) counting codes, an fp16 scale and zero per RTN group
    (width >= 2) and an fp16 scale per binary group (width 1). widths: one per component."""
    groups = -(-m // group) + -(-n // group)
    total = 0
    for w in widths:
        per_group = 2 * SCALE_BITS if w >= 2 else SCALE_BITS
        total += w * (m + n) + per_group * groups
    return total / (len(widths) * (m + n))


def paper_bits(widths):
    """The paper's count: code bits only, per weight."""
    return sum(widths) / len(widths)


# --- the methods ----------------------------------------------------------------------

def paper_method(A, B, scaling=1.0, *, rho, high_bits=2, refine="entries",
                 split_rule="code", svd="product", group=GROUP):
    """LoRAQuant as published: SVD split at rho, RTN high part, binary low part.
    refine: None (no refinement), "entries" (the public code) or "range"."""
    A = torch.as_tensor(A, dtype=torch.float64)
    B = torch.as_tensor(B, dtype=torch.float64)
    r, n = A.shape
    m = B.shape[0]
    Bp, s, Ap = svd_factors(A, B, svd)
    h = energy_split(s, rho, split_rule)
    if refine:
        Bh, Ah = refine_high(Bp[:, :h], Ap[:h], high_bits, group, params=refine)
    else:
        Bh, Ah = quantize_factors(Bp[:, :h], Ap[:h], lambda x: rtn_rows(x, high_bits, group))
    Bl, Al = quantize_factors(Bp[:, h:], Ap[h:], lambda x: sign_rows(x, group))
    widths = [high_bits] * h + [1] * (r - h)
    return Quantized(A_hat=torch.cat([Ah, Al], 0), B_hat=scaling * torch.cat([Bh, Bl], 1),
                     honest_bits=honest_bits(m, n, widths, group),
                     paper_bits=paper_bits(widths), h=h)


def rtn_baseline(A, B, scaling=1.0, *, bits, group=GROUP):
    """Plain min/max RTN of the raw factors at `bits`, grouped like the method."""
    A = torch.as_tensor(A, dtype=torch.float64)
    B = torch.as_tensor(B, dtype=torch.float64)
    Bq, Aq = quantize_factors(B, A, lambda x: rtn_rows(x, bits, group))
    widths = [bits] * A.shape[0]
    return Quantized(Aq, scaling * Bq, honest_bits(B.shape[0], A.shape[1], widths, group),
                     paper_bits(widths))


def sign_baseline(A, B, scaling=1.0, *, group=GROUP):
    """1-bit sign(w) * mean(|w|) of the raw factors, grouped like the method."""
    A = torch.as_tensor(A, dtype=torch.float64)
    B = torch.as_tensor(B, dtype=torch.float64)
    Bq, Aq = quantize_factors(B, A, lambda x: sign_rows(x, group))
    widths = [1] * A.shape[0]
    return Quantized(Aq, scaling * Bq, honest_bits(B.shape[0], A.shape[1], widths, group),
                     paper_bits(widths))


def rel_error(A, B, scaling, A_hat, B_hat):
    """|s B A - B_hat A_hat|_F / |s B A|_F in float64, through r x r Gram matrices."""
    A, B, A_hat, B_hat = (torch.as_tensor(t, dtype=torch.float64) for t in (A, B, A_hat, B_hat))
    B = scaling * B

    def inner(B1, A1, B2, A2):  # <B1 A1, B2 A2>_F = tr((B1^T B2)(A2 A1^T))
        return torch.sum((B1.T @ B2) * (A1 @ A2.T)).item()

    ref = inner(B, A, B, A)
    err = ref - 2 * inner(B, A, B_hat, A_hat) + inner(B_hat, A_hat, B_hat, A_hat)
    return math.sqrt(max(err, 0.0) / ref) if ref > 0 else 0.0
