"""Quantizer levers at 1-3 bits per entry: a measured ablation (issue 11).

    OMP_NUM_THREADS=1 python bench/quantizer_levers.py            # 5 min on one free core
    OMP_NUM_THREADS=1 python bench/quantizer_levers.py --quick    # 1 min smoke run
    python bench/quantizer_levers.py --out /tmp/levers.md          # where the tables go too
                                                                   # (default /tmp/levers)
    python bench/quantizer_levers.py --modules-only --tcq-L 12 --max-modules 3 --max-trained 14
                                       # module level with the L = 12 trellis, on a subset

Needs the installed loraquant (for the checks and the loraquant.compress column) and
reads the trained modules from the e2e cache (bench/e2e.py makes them; without them
only the synthetic suite runs). Tables print as markdown and go to --out.

loraquant stores each SVD component i of a LoRA update as two vectors b_i (length m)
and a_i (length n), b_i = u_i sqrt(s sigma_i), a_i = v_i sqrt(s sigma_i), each quantized
on its own. Issue 11 asks whether better vector quantizers, chosen per component, bring
the module error |sBA - B_hat A_hat|_F / |sBA|_F down to 0.45x the published LoRAQuant
method's (bench/paper_method.py, +SGD) at equal honest bits. This script measures, with
every stored bit counted (codes, scales, codebooks, the padding of each vector block
to 4 bytes as in format.h, and loraquant's per-module prefix of widths and unit):

1. per-vector relative MSE |x - x_hat|^2 / |x|^2 of each quantizer on i.i.d. Gaussian
   vectors of length 4096 and on the real component vectors of the synthetic suite
   (bench/adapters.py) and of the trained modules in the e2e cache, and the
   rate-distortion hull of each lever's menu at 1, 1.5, 2, 3 and 4 bits per entry;
2. the module error under a greedy allocator (best marginal error reduction per stored
   byte over every (b option, a option) pair of a component, within the module's byte
   budget) for each menu, at the published method's honest bits for 2@0.8 and 2@0.9
   and at 60 % of them, as a ratio to the published method with its SGD refinement;
   and the baseline menu against loraquant.compress at the same bits;
3. decode cost: operations per weight and a timed vectorized numpy decode of 1M weights.

The quantizers (all numpy/torch, simulated in float64; scales rounded to fp16 in units
of a power of two, as loraquant stores them):
- rtn w (2..8): asymmetric RTN, fp16 delta and zmin per group, the range shrunk about
  its middle by the best of loraquant's factors (1, .8, .64, .512, .41, .328, then 0.9x
  and 1.1x the best). A reimplementation of cpp/src/quantize.cpp, checked against
  loraquant.compress on rank-1 pairs at the start of the run.
- sign (w = 1): sign(x) * mean|x| per group (fp16 scale).
- tern: {-a, 0, +a} per group, the threshold that minimises the error (sort, cumsum),
  5 trits per byte (1.6 bits) + fp16 a per group.
- lloyd k: a Lloyd-Max codebook of 2^k fp16 levels per vector + k-bit codes.
- tcq L k: trellis-coded quantization with QTIP's bitshift trellis. The code stream
  has k bits per step (V weights per step: V = 1, or 2 for 0.5 / 1.5 bits per entry);
  the state is the last L bits of the stream and each weight decodes from its window
  of L bits through a fixed codebook: "hash" is QTIP's 1MAD (x = 34038481 s + 76625530
  mod 2^32, sum of its 4 bytes, standardised: computed, no table), "lut" a fixed table
  of the 2^L Gaussian quantiles in a random order (V = 2: Gaussian pairs). The real
  vectors use "lut" (a little better than "hash" at k = 1, the same at k = 2, 3 in 1a).
  Encoding is a Viterbi search (torch), then the fp16 scale of each group (128 entries,
  or one per vector) is refitted by least squares; with --tcq-passes 2 the search runs
  once more with those scales (about 1 % lower MSE on Gaussian vectors, twice the time).
  Tail-biting (the stream wraps around; a free search over the 64 steps either side
  of the wrap point fixes the wrap bits, then a search that keeps them), so exactly k
  bits per step are stored.
- H (prefix "H "): a random Hadamard rotation before the quantizer: random signs, then
  a fast Walsh-Hadamard transform of blocks of h = the largest power of two <= min(n,
  4096) (n: vector length); when h does not divide n the last block overlaps the one
  before, so nothing is padded and the map stays orthogonal. The signs come from a
  fixed seed (no stored bits). The error is measured in the original basis.
- dr R (a reference, not a quantizer): the Gaussian distortion-rate bound 2^(-2R) at R
  bits per entry with no side information.
Menus: "baseline" is loraquant's own (sign and rtn 2..8, groups 128, 512 and one per
vector); each lever's menu is the baseline plus that lever's options. The menus
"baseline" and "all" also run with each vector's bytes counted exactly (", unpadded"),
as the published method's honest bits count them.
"""
from __future__ import annotations

import argparse
import heapq
import math
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import adapters  # noqa: E402
import paper_method as P  # noqa: E402
from tables import geomean, markdown  # noqa: E402

E2E_CACHE = Path("~/.cache/loraquant-bench/e2e").expanduser()
COARSE = (1.0, 0.8, 0.64, 0.512, 0.41, 0.328)   # loraquant's range-search grid
FINE = (0.9, 1.1)
HADAMARD_CAP = 4096
BP_BYTES = 192 << 20   # Viterbi back-pointer memory per batch


# --- options and their stored bytes ------------------------------------------------------

@dataclass(frozen=True)
class Opt:
    """One way to store one vector. group: entries per scale, 0 = one per vector."""
    family: str          # sign, rtn, tern, lloyd, tcq, dr
    width: float         # code bits: w (sign 1, rtn), k (lloyd, tcq: per step), R (dr)
    group: int = 0
    rot: bool = False    # random Hadamard rotation first
    L: int = 0           # tcq: window bits
    V: int = 1           # tcq: weights per step
    cb: str = ""         # tcq: codebook, "hash" or "lut"

    @property
    def name(self) -> str:
        g = f"g{self.group}" if self.group else "vec"
        h = "H " if self.rot else ""
        if self.family == "tcq":
            v = f"/{self.V}" if self.V > 1 else ""
            return f"{h}tcq L{self.L} k{self.width:g}{v} {self.cb} {g}"
        if self.family in ("sign", "tern"):
            return f"{h}{self.family} {g}"
        if self.family == "lloyd":
            return f"{h}lloyd k{self.width:g} vec"
        if self.family == "dr":
            return f"D(R) {self.width:g}"
        return f"{h}rtn{self.width:g} {g}"


def pad4(nbytes):
    return (nbytes + 3) // 4 * 4


def eff_group(opt: Opt, n: int) -> int:
    """Entries per group for a vector of length n (a group >= n is one per vector)."""
    return n if (opt.group == 0 or opt.group >= n) else opt.group


def vector_bytes(opt: Opt, n: int, padded=True) -> float:
    """Stored bytes of one vector of length n: scales, then codes. padded: as format.h
    lays out loraquant's blocks (scales padded to 4 bytes, codes in 32-bit words);
    else the exact bits / 8 (as the published method's honest bits count)."""
    G = -(-n // eff_group(opt, n))
    w = int(opt.width)
    if opt.family == "dr":
        return opt.width * n / 8
    scale_bytes, code_bits = {
        "sign": (2 * G, n),
        "rtn": (4 * G, w * n),
        "tern": (2 * G, 8 * -(-n // 5)),                 # 5 trits per byte
        "lloyd": (2 * 2 ** w, w * n),                    # the fp16 codebook
        "tcq": (2 * G, w * -(-n // opt.V)),              # tail-biting: no start state
    }[opt.family]
    if not padded:
        return scale_bytes + code_bits / 8
    return pad4(scale_bytes) + 4 * -(-code_bits // 32)


# --- fp16 scales in units of a power of two (loraquant's choose_unit) -----------------------

def choose_unit(max_abs: float) -> float:
    if not max_abs > 0 or not math.isfinite(max_abs):
        return 1.0
    e = math.ceil(math.log2(2.0 * max_abs)) - 14
    return math.ldexp(1.0, max(-126, min(e, 127)))


def fp16(v, unit):
    """v rounded to the fp16 number of units it is stored as (unit broadcasts)."""
    return (np.asarray(v / unit, dtype=np.float64).astype(np.float16).astype(np.float64)) * unit


# --- groups ------------------------------------------------------------------------------

def groups(X, g):
    """(N, n) -> (N, G, g) zero-padded, and a (G, g) mask of real entries."""
    N, n = X.shape
    G = -(-n // g)
    Xg = np.zeros((N, G * g))
    Xg[:, :n] = X
    mask = np.zeros(G * g, bool)
    mask[:n] = True
    return Xg.reshape(N, G, g), mask.reshape(G, g)


def ungroup(Xg, n):
    return Xg.reshape(Xg.shape[0], -1)[:, :n]


# --- the quantizers: X (N, n) float64, unit (N, 1) -> X_hat (N, n) -------------------------

def q_sign(X, g, unit):
    Xg, mask = groups(X, g)
    alpha = fp16(np.abs(Xg).sum(-1, keepdims=True) / mask.sum(-1)[None, :, None], unit[:, :, None])
    return ungroup(np.where(Xg >= 0, alpha, -alpha), X.shape[1])


def _rtn_params(lo, hi, p, qmax, unit):
    mid, half = 0.5 * (lo + hi), 0.5 * (hi - lo)
    clo, chi = mid - half * p, mid + half * p
    return fp16((chi - clo) / qmax, unit), fp16(clo, unit)


def _rtn_apply(Xg, delta, zmin, qmax):
    inv = np.divide(1.0, delta, out=np.zeros_like(delta), where=delta > 0)
    lev = np.floor(np.clip((Xg - zmin) * inv, 0, qmax) + 0.5)
    return zmin + lev * delta


def q_rtn(X, w, g, unit, search=True):
    """loraquant's RTN: min/max range, shrunk by the best factor p of COARSE, then FINE."""
    qmax = 2.0 ** w - 1
    Xg, mask = groups(X, g)
    lo = np.where(mask, Xg, np.inf).min(-1, keepdims=True)
    hi = np.where(mask, Xg, -np.inf).max(-1, keepdims=True)
    u = unit[:, :, None]

    def err(p):
        d, z = _rtn_params(lo, hi, p, qmax, u)
        return (((_rtn_apply(Xg, d, z, qmax) - Xg) ** 2) * mask).sum(-1, keepdims=True)

    best_p = np.ones_like(lo)
    if search:
        best = np.full_like(lo, np.inf)
        for p in COARSE:
            e = err(p)
            better = e < best
            best, best_p = np.where(better, e, best), np.where(better, p, best_p)
        centre = best_p.copy()
        for f in FINE:
            p = centre * f
            e = np.where(p <= 1.0, err(np.minimum(p, 1.0)), np.inf)
            better = e < best
            best, best_p = np.where(better, e, best), np.where(better, p, best_p)
    d, z = _rtn_params(lo, hi, best_p, qmax, u)
    return ungroup(_rtn_apply(Xg, d, z, qmax), X.shape[1])


def q_tern(X, g, unit):
    """{-a, 0, a} per group: keep the k largest |x| (k maximising (sum of them)^2 / k)."""
    Xg, mask = groups(X, g)
    A = np.abs(Xg)
    order = np.argsort(-A, axis=-1)
    top = np.take_along_axis(A, order, -1)
    csum = np.cumsum(top, -1)
    k = np.arange(1, A.shape[-1] + 1)
    kbest = np.argmax(csum ** 2 / k, -1)[..., None]                  # index: keep kbest + 1
    alpha = fp16(np.take_along_axis(csum, kbest, -1) / (kbest + 1), unit[:, :, None])
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(A.shape[-1]), A.shape), -1)
    out = np.where(rank <= kbest, np.sign(Xg) * alpha, 0.0)
    return ungroup(out, X.shape[1])


def q_lloyd(X, k, unit, iters=20):
    """Lloyd-Max codebook of 2^k levels per vector (levels stored fp16)."""
    from statistics import NormalDist
    K = 2 ** k
    N, n = X.shape
    Xs = np.sort(X, 1)
    csum = np.concatenate([np.zeros((N, 1)), np.cumsum(Xs, 1)], 1)
    rows = np.arange(N)[:, None]
    z = np.array([NormalDist().inv_cdf((i + 0.5) / K) for i in range(K)])
    lev = X.mean(1, keepdims=True) + X.std(1, keepdims=True) * z[None, :]
    for _ in range(iters):      # cells are runs of the sorted entries between midpoints
        mid = 0.5 * (lev[:, 1:] + lev[:, :-1])
        cut = np.concatenate([np.zeros((N, 1), int), (Xs[:, None, :] <= mid[:, :, None]).sum(-1),
                              np.full((N, 1), n)], 1)
        cnt = np.diff(cut, axis=1)
        tot = csum[rows, cut[:, 1:]] - csum[rows, cut[:, :-1]]
        lev = np.sort(np.where(cnt > 0, tot / np.maximum(cnt, 1), lev), 1)
    lev = fp16(lev, unit)
    idx = np.abs(X[:, :, None] - lev[:, None, :]).argmin(-1)
    return np.take_along_axis(lev, idx, 1)


# --- random Hadamard rotation ---------------------------------------------------------------

def _fwht(Y):
    """Orthonormal Walsh-Hadamard transform of the last axis (a power of two), in place."""
    h = Y.shape[-1]
    s = 1
    lead = Y.shape[:-1]
    while s < h:
        Z = Y.reshape(*lead, h // (2 * s), 2, s)
        a, b = Z[..., 0, :].copy(), Z[..., 1, :]
        Z[..., 0, :] += b
        Z[..., 1, :] = a - b
        s *= 2
    Y *= 1.0 / math.sqrt(h)
    return Y


def _hadamard_plan(n):
    h = 1 << int(math.floor(math.log2(min(n, HADAMARD_CAP))))
    starts = list(range(0, n - h + 1, h))
    if starts[-1] + h < n:
        starts.append(n - h)          # overlapping last block: no padding
    signs = np.where(np.random.default_rng(1000 + n).random(n) < 0.5, -1.0, 1.0)
    return h, starts, signs


def rotate(X, inverse=False):
    """Random signs then blockwise FWHT (inverse: the same steps backwards)."""
    n = X.shape[1]
    h, starts, signs = _hadamard_plan(n)
    Y = X * signs if not inverse else X.copy()
    for s in (reversed(starts) if inverse else starts):
        blk = Y[:, s:s + h].copy()
        Y[:, s:s + h] = _fwht(blk)
    return Y * signs if inverse else Y


# --- trellis-coded quantization (QTIP bitshift trellis) -------------------------------------

_CB_CACHE = {}


def codebook(L, V, kind):
    """(2^L, V) float32 values of the window states: unit RMS, zero mean."""
    key = (L, V, kind)
    if key in _CB_CACHE:
        return _CB_CACHE[key]
    S = 1 << L
    s = np.arange(S, dtype=np.uint64)
    if kind == "hash":   # QTIP 1MAD: LCG, sum of the 4 bytes (a sum of 4 uniforms)
        cols, x = [], s
        for _ in range(V):
            x = (np.uint64(34038481) * x + np.uint64(76625530)) & np.uint64(0xFFFFFFFF)
            cols.append(sum(((x >> np.uint64(8 * j)) & np.uint64(255)).astype(np.float64) for j in range(4)))
        cb = np.stack(cols, 1)
    elif kind == "lut":  # Gaussian quantiles in a fixed random order (a 2^L x V table)
        from statistics import NormalDist
        rng = np.random.default_rng(7 + L)
        if V == 1:
            nd = NormalDist()
            cb = rng.permutation([nd.inv_cdf((i + 0.5) / S) for i in range(S)])[:, None]
        else:
            cb = rng.standard_normal((S, V))
    else:
        raise ValueError(kind)
    cb = (cb - cb.mean(0)) / np.sqrt(((cb - cb.mean(0)) ** 2).mean())
    _CB_CACHE[key] = cb.astype(np.float32)
    return _CB_CACHE[key]


def viterbi(X, scale, L, k, V, cb, overlap=None):
    """Best state path of the bitshift trellis for X (N, T*V) with per-entry scales:
    minimises sum_t |x_t - scale_t * cb[state_t]|^2. overlap (N,): tail-biting, the
    start state's high L - k bits and the end state's low L - k bits are these (the
    stream wraps around). Returns the states (N, T). torch, float32, batched over N."""
    N, n = X.shape
    T = n // V
    S, K = 1 << L, 1 << k
    x = torch.from_numpy(X.reshape(N, T, V)).float()
    sc = torch.from_numpy(scale.reshape(N, T, V)).float()
    c = torch.from_numpy(cb)                                # (S, V)
    # distortion up to a per-step constant: sum_v sc^2 cb^2 - 2 x sc cb
    coefs = torch.cat([sc * sc, -2 * x * sc], -1)           # (N, T, 2V)
    basis = torch.cat([c * c, c], 1).T.contiguous()         # (2V, S)
    bp = torch.empty((T, N, S // K), dtype=torch.uint8)
    cost = coefs[:, 0] @ basis
    states_all = torch.arange(S)
    if overlap is not None:
        ov = torch.from_numpy(overlap).long()[:, None]
        cost = cost.masked_fill((states_all >> k)[None] != ov, math.inf)
    for t in range(1, T):
        # state s' = (q, u) comes from the K states (j, q); torch's min with indices over
        # a middle axis is slow, so: the minimum, then which j attains it (ties: any)
        ct = cost.view(N, K, S // K)
        m = ct.amin(1)
        j = bp[t]
        j.zero_()
        for u in range(K - 1, 0, -1):
            j.masked_fill_(ct[:, u] == m, u)
        if t % 64 == 0:
            m -= m.amin(1, keepdim=True)
        d = coefs[:, t] @ basis
        cost = (d.view(N, S // K, K) + m.unsqueeze(-1)).view(N, S)
    if overlap is not None:
        cost = cost.masked_fill((states_all & ((1 << (L - k)) - 1))[None] != ov, math.inf)
    state = cost.argmin(1)
    states = torch.empty((T, N), dtype=torch.long)
    ar = torch.arange(N)
    for t in range(T - 1, -1, -1):
        states[t] = state
        if t:
            q = state >> k
            state = q + (bp[t, ar, q].long() << (L - k))
    return states.T.numpy()


def tcq_path(X, scale, L, k, V, cb, window=64):
    """A tail-biting path, found as QTIP does: a free search across the wrap point (the
    last `window` steps, then the first) fixes the L - k bits where the stream wraps; a
    second search over the whole sequence keeps them. Returns the decoded codebook
    values (N, T*V), unscaled."""
    N, n = X.shape
    T = n // V
    W = min(window, T // 2)
    wrap = lambda Y: np.concatenate([Y[:, (T - W) * V:], Y[:, :W * V]], 1)
    end = viterbi(wrap(X), wrap(scale), L, k, V, cb)[:, W - 1]     # the state of step T-1
    states = viterbi(X, scale, L, k, V, cb, overlap=end & ((1 << (L - k)) - 1))
    return cb[states].reshape(N, n).astype(np.float64)


TCQ_GAIN = {1: 0.85, 2: 0.95, 3: 1.0}   # first-pass scale / group RMS (then refitted)


def q_tcq(X, opt: Opt, unit, passes=1):
    """Trellis-coded X: per pass, a Viterbi search with the current group scales, then
    the scales refitted by least squares (fp16). The first pass starts from the RMS."""
    N, n = X.shape
    V, k = opt.V, int(opt.width)
    g = eff_group(opt, n)
    T = -(-n // V)
    Xp = np.zeros((N, T * V))
    Xp[:, :n] = X
    cb = codebook(opt.L, V, opt.cb)
    Xg, mask = groups(X, g)
    rms = np.sqrt((Xg ** 2).sum(-1, keepdims=True) / mask.sum(-1)[None, :, None])
    sc = fp16(rms * TCQ_GAIN.get(k, 1.0), unit[:, :, None])
    per = max(1, int(BP_BYTES // (T * (1 << opt.L) >> k)))
    out = np.zeros_like(X)
    for p in range(passes):
        pos = np.zeros((N, T * V))
        pos[:, :n] = ungroup(np.broadcast_to(sc, Xg.shape), n)
        C = np.concatenate([tcq_path(Xp[i:i + per], pos[i:i + per], opt.L, k, V, cb)
                            for i in range(0, N, per)])[:, :n]
        Cg, _ = groups(C, g)
        cc = (Cg * Cg).sum(-1, keepdims=True)
        sc = fp16(np.divide((Xg * Cg).sum(-1, keepdims=True), cc, out=np.zeros_like(cc), where=cc > 0),
                  unit[:, :, None])
        out = ungroup(Cg * sc, n)
    return out


def quantize(opt: Opt, X, unit, tcq_passes=1):
    """Decoded X (N, n) under option opt; unit (N,) the fp16 unit of each vector."""
    unit = np.asarray(unit, dtype=np.float64).reshape(-1, 1)
    if opt.rot:
        Y = rotate(X)
        return rotate(quantize(replace(opt, rot=False), Y, unit, tcq_passes), inverse=True)
    n = X.shape[1]
    g = eff_group(opt, n)
    X32 = X.astype(np.float32).astype(np.float64)      # loraquant quantizes float32 factors
    if opt.family == "sign":
        return q_sign(X32, g, unit)
    if opt.family == "rtn":
        return q_rtn(X32, int(opt.width), g, unit)
    if opt.family == "tern":
        return q_tern(X32, g, unit)
    if opt.family == "lloyd":
        return q_lloyd(X32, int(opt.width), unit)
    if opt.family == "tcq":
        return q_tcq(X32, opt, unit, tcq_passes)
    raise ValueError(opt.family)


def side_stats(opt: Opt, X, unit, tcq_passes=1):
    """(x . x_hat, |x_hat|^2) per row, and encode seconds. dr: the Gaussian bound."""
    if opt.family == "dr":
        keep = (1 - 2.0 ** (-2 * opt.width)) * (X * X).sum(1)
        return keep, keep, 0.0
    t = time.perf_counter()
    Xh = quantize(opt, X, unit, tcq_passes)
    dt = time.perf_counter() - t
    return (X * Xh).sum(1), (Xh * Xh).sum(1), dt


# --- menus ---------------------------------------------------------------------------------

GROUPS = (128, 512, 0)


def baseline_opts(rot=False):
    return ([Opt("sign", 1, g, rot) for g in GROUPS]
            + [Opt("rtn", w, g, rot) for w in range(2, 9) for g in GROUPS])


def tern_opts(rot=False):
    return [Opt("tern", 1.6, g, rot) for g in GROUPS]


def lloyd_opts(rot=False):
    return [Opt("lloyd", k, 0, rot) for k in (1, 2, 3)]


def tcq_opts(L, cb, rot=False):
    out = [Opt("tcq", k, g, rot, L, 1, cb) for k in (1, 2, 3, 4) for g in (128, 0)]
    out += [Opt("tcq", k, 0, rot, L, 2, cb) for k in (1, 3)]
    return out


def dr_opts():
    return [Opt("dr", R) for R in np.arange(0.25, 8.01, 0.25)]


def menus(L, cb):
    base = baseline_opts()
    hb = baseline_opts(True)
    return {
        "baseline": base,
        "+Hadamard": base + hb,
        "+ternary": base + tern_opts(),
        "+Lloyd-Max": base + lloyd_opts(),
        "+TCQ": base + tcq_opts(L, cb),
        "+H +TCQ": base + hb + tcq_opts(L, cb) + tcq_opts(L, cb, True),
        "all": base + hb + tern_opts() + tern_opts(True) + lloyd_opts() + lloyd_opts(True)
        + tcq_opts(L, cb) + tcq_opts(L, cb, True),
        "Gaussian D(R) bound": dr_opts(),
    }


UNPADDED = ("baseline", "all")     # menus also run with unpadded byte counts


# --- rate-distortion hull -------------------------------------------------------------------

def hull_at(points, rates):
    """MSE on the lower convex hull of (bits, mse) points at each rate: time sharing
    between two options over the vectors. (0 bits, MSE 1), dropping, is always a point."""
    pts = sorted(set(points) | {(0.0, 1.0)})
    hull = []                                    # Andrew's monotone chain, lower part
    for p in pts:
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) <= 0:
                hull.pop()
            else:
                break
        hull.append(p)
    low = min(range(len(hull)), key=lambda i: hull[i][1])
    hull = hull[:low + 1]                        # past the best point: spend no more
    out = []
    for R in rates:
        val = hull[-1][1]
        for (x1, y1), (x2, y2) in zip(hull, hull[1:]):
            if x1 <= R <= x2:
                val = y1 + (y2 - y1) * (R - x1) / (x2 - x1)
                break
        out.append(val)
    return out


# --- modules: factors, per-vector stats, allocation ----------------------------------------

@dataclass
class Module:
    name: str
    m: int
    n: int
    r: int
    sig2: np.ndarray        # (r,) component energies |b_i|^2 |a_i|^2
    bvec: np.ndarray        # (r, m)
    avec: np.ndarray        # (r, n)
    unit: float
    case: object


def module_of(case) -> Module:
    Bp, s, Ap = P.svd_factors(case.A, case.B.double() * case.scaling, "qr")
    b, a = Bp.T.numpy().copy(), Ap.numpy().copy()
    unit = choose_unit(4 * max(np.abs(b).max(), np.abs(a).max()))
    return Module(case.name, b.shape[1], a.shape[1], b.shape[0], (s.numpy() ** 2), b, a, unit, case)


class VectorTable:
    """Stats of every option on every component vector of a set of modules; vectors of
    one length are quantized together."""

    def __init__(self, mods, tcq_passes):
        self.mods, self.passes = mods, tcq_passes
        self.by_len = defaultdict(list)      # n -> [(module idx, side, comp)]
        for mi, md in enumerate(mods):
            for i in range(md.r):
                if md.sig2[i] > 0:
                    self.by_len[md.m].append((mi, 0, i))
                    self.by_len[md.n].append((mi, 1, i))
        self.stats = {}                      # (opt, mi, side, i) -> (x . x_hat, |x_hat|^2)
        self.norm2 = {}
        self.seconds = defaultdict(float)
        self.weights = defaultdict(int)

    def vec(self, mi, side, i):
        md = self.mods[mi]
        return (md.avec if side else md.bvec)[i]

    def add(self, opts):
        for opt in opts:
            for n, keys in self.by_len.items():
                if eff_group(opt, n) == n and opt.group:    # the same as one group per vector
                    same = replace(opt, group=0)
                    self.add([same])
                    for key in keys:
                        self.stats[(opt,) + key] = self.stats[(same,) + key]
                    continue
                todo = [key for key in keys if (opt,) + key not in self.stats]
                if not todo:
                    continue
                X = np.stack([self.vec(*key) for key in todo])
                unit = np.array([self.mods[key[0]].unit for key in todo])
                dot, nrm, dt = side_stats(opt, X, unit, self.passes)
                self.seconds[opt] += dt
                self.weights[opt] += X.size
                x2 = (X * X).sum(1)
                for key, d, q, xx in zip(todo, dot, nrm, x2):
                    self.stats[(opt,) + key] = (d, q)
                    self.norm2[key] = xx

    def points(self, opt):
        """(mean bits per entry, mean relative MSE) of opt over all vectors."""
        bits, mse = [], []
        for n, keys in self.by_len.items():
            for key in keys:
                d, q = self.stats[(opt,) + key]
                xx = self.norm2[key]
                bits.append(8 * vector_bytes(opt, n) / n)
                mse.append(max(0.0, xx - 2 * d + q) / xx)
        return float(np.mean(bits)), float(np.mean(mse))


def _pareto(cost, err):
    order = np.lexsort((err, cost))
    cost, err = cost[order], err[order]
    keep = err < np.minimum.accumulate(np.concatenate([[np.inf], err[:-1]]))
    return cost[keep], err[keep]


def allocate(md: Module, table: VectorTable, mi: int, menu, budget_bytes, padded=True):
    """Greedy: repeatedly take the component move (to any dearer (b, a) configuration)
    of the best error reduction per byte that fits the remaining budget. Returns the
    relative error and the bytes spent."""
    bb = np.array([vector_bytes(o, md.m, padded) for o in menu])
    ab = np.array([vector_bytes(o, md.n, padded) for o in menu])
    comps = []
    for i in range(md.r):
        s2 = md.sig2[i]
        if not s2 > 0:
            comps.append((np.array([0.0]), np.array([0.0])))
            continue
        B = np.array([table.stats[(o, mi, 0, i)] for o in menu])
        A = np.array([table.stats[(o, mi, 1, i)] for o in menu])
        cost = (bb[:, None] + ab[None, :]).ravel()
        err = np.maximum(0.0, s2 - 2 * np.outer(B[:, 0], A[:, 0]) + np.outer(B[:, 1], A[:, 1])).ravel()
        comps.append(_pareto(np.concatenate([[0.0], cost]), np.concatenate([[s2], err])))
    cur = [0] * md.r
    left = float(budget_bytes)

    def best_move(i):
        cost, err = comps[i]
        c0, e0 = cost[cur[i]], err[cur[i]]
        ok = (cost > c0) & (cost - c0 <= left + 1e-9)
        if not ok.any():
            return None
        ratio = np.where(ok, (e0 - err) / np.maximum(cost - c0, 1e-12), -np.inf)
        j = int(np.argmax(ratio))
        return (ratio[j], j) if ratio[j] > 0 else None

    heap = []
    for i in range(md.r):
        mv = best_move(i)
        if mv:
            heapq.heappush(heap, (-mv[0], i, mv[1]))
    while heap:
        _, i, j = heapq.heappop(heap)
        cost = comps[i][0]
        if cur[i] >= j or cost[j] - cost[cur[i]] > left + 1e-9:   # stale or too dear now
            mv = best_move(i)
            if mv:
                heapq.heappush(heap, (-mv[0], i, mv[1]))
            continue
        left -= cost[j] - cost[cur[i]]
        cur[i] = j
        mv = best_move(i)
        if mv:
            heapq.heappush(heap, (-mv[0], i, mv[1]))
    total = sum(comps[i][1][cur[i]] for i in range(md.r))
    return math.sqrt(total / md.sig2.sum()), budget_bytes - left


def budget_bytes(md: Module, bits: float) -> float:
    """Block bytes that `bits` per weight leave after loraquant's prefix (widths, unit)."""
    return math.floor(bits * md.r * (md.m + md.n) / 8 - (pad4(4 * md.r) + 4))


# --- checks against loraquant ----------------------------------------------------------------

def check_against_loraquant(rng):
    """Our RTN against loraquant.compress on rank-1 pairs (paper mode, all components
    at high_bits): largest relative difference of the decoded vectors."""
    import loraquant
    worst = 0.0
    rows = []
    for n, w, g in [(4096, 2, 128), (4096, 3, 128), (768, 2, 512), (344, 4, 128), (2048, 2, 4096)]:
        x = rng.standard_normal(n)
        x[rng.integers(0, n, 4)] *= 6          # a few outliers
        y = rng.standard_normal(n)
        q = loraquant.compress(torch.tensor(y[None], dtype=torch.float32),
                               torch.tensor(x[:, None], dtype=torch.float32),
                               rho=1.0, high_bits=w, group_size=g)
        Ah, Bh = (t.double().numpy() for t in q.dequantize())
        Bp, s, Ap = P.svd_factors(torch.tensor(y[None], dtype=torch.float32),
                                  torch.tensor(x[:, None], dtype=torch.float32), "qr")
        b, a = Bp[:, 0].numpy(), Ap[0].numpy()
        sgn = np.sign(b @ Bh[:, 0]) or 1.0
        b, a = sgn * b, sgn * a
        unit = choose_unit(4 * max(np.abs(b).max(), np.abs(a).max()))
        opt = Opt("rtn", w, g)
        mine_b = quantize(opt, b[None], [unit])[0]
        mine_a = quantize(opt, a[None], [unit])[0]
        db = np.abs(mine_b - Bh[:, 0]).max() / np.abs(b).max()
        da = np.abs(mine_a - Ah[0]).max() / np.abs(a).max()
        mse = lambda v, vh: ((v - vh) ** 2).sum() / (v * v).sum()
        rows.append([f"n={n} rtn{w} g{g}", f"{mse(b, Bh[:, 0]):.5f}", f"{mse(b, mine_b):.5f}",
                     f"{mse(a, Ah[0]):.5f}", f"{mse(a, mine_a):.5f}", f"{max(db, da):.1e}"])
        worst = max(worst, db, da)
    head = ["vector pair", "b MSE loraquant", "b MSE ours", "a MSE loraquant", "a MSE ours",
            "max |diff| / max |x|"]
    return head, rows, worst


# --- decode cost -----------------------------------------------------------------------------

def decode_timings(n=1 << 20, reps=3):
    """Vectorized numpy decode of n weights from a packed stream, best of reps:
    (decode, work per weight, ops per weight, ns per weight)."""
    rng = np.random.default_rng(0)
    g = np.arange(n) // 128                                  # group of each weight
    delta, zmin = rng.random(n // 128).astype(np.float32), rng.random(n // 128).astype(np.float32)
    j = np.arange(n, dtype=np.uint64)

    def stream(bits_per_weight):
        """64-bit windows w64[i] = words[i] | words[i + 1] << 32 of a random stream."""
        words = rng.integers(0, 2 ** 32, n * bits_per_weight // 32 + 2, dtype=np.uint64)
        return words[:-1] | (words[1:] << np.uint64(32))

    def field(w64, step, width):
        """The `width` bits at bit step * j of the stream, for every weight j."""
        bit = j * np.uint64(step)
        word = w64[(bit >> np.uint64(5)).astype(np.int64)]
        return ((word >> (bit & np.uint64(31))) & np.uint64((1 << width) - 1)).astype(np.int64)

    def ns(fn):
        fn()
        best = math.inf
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t)
        return best / n * 1e9

    out = []
    for w, name in ((1, "sign (1 bit)"), (2, "rtn2 (2 bits)")):
        s = stream(w)
        out.append((name, "bit offset, load, shift, mask, cvt, fma with the group's scale(s)", "~6",
                    ns(lambda s=s, w=w: zmin[g] + field(s, w, w).astype(np.float32) * delta[g])))
    trits = np.array([[(b // 3 ** i) % 3 - 1 for i in range(5)] for b in range(243)], np.float32)
    tb = rng.integers(0, 243, n // 5, dtype=np.uint8)
    out.append(("ternary (1.6 bits)", "byte load, 243 x 5 table (or a div/mod per trit), mul", "~4-6",
                ns(lambda: trits[tb].reshape(-1) * delta[g[:len(tb) * 5]])))
    levels = rng.random((n // 4096, 4)).astype(np.float32).reshape(-1)
    s = stream(2)
    out.append(("lloyd k2 (4 levels per vector)", "code extract (4 ops), lookup in 4 levels", "~5",
                ns(lambda: levels[(np.arange(n) // 4096) * 4 + field(s, 2, 2)])))
    for L in (8, 12, 16):
        s, k = stream(2), 2
        table = codebook(L, 1, "lut")[:, 0]

        def mad(s=s, L=L):   # QTIP's 1MAD: LCG, sum of the 4 bytes
            x = (34038481 * field(s, k, L) + 76625530) & 0xFFFFFFFF
            b = sum((x >> (8 * i)) & 255 for i in range(4))
            return (b.astype(np.float32) - 510.0) * (delta[g] / 147.8)
        out.append((f"tcq L{L} k2 hash (1MAD)", "L-bit window (load 64 bits, shift, mask); LCG "
                    "mul-add; sum of 4 bytes (one dp4a); cvt, fma", "~10", ns(mad)))
        out.append((f"tcq L{L} k2 table", f"L-bit window (4 ops); lookup in 2^{L} fp16 "
                    f"({2 ** (L + 1) // 1024 or 1} KiB); mul", "~6",
                    ns(lambda s=s, L=L, table=table: table[field(s, k, L)] * delta[g])))
    X = rng.standard_normal((n // 4096, 4096))
    out.append(("Hadamard, h = 4096 (per input entry, once per token and layer)",
                "log2(h) = 12 add/sub + 1 sign flip per input entry", "13 per input entry",
                ns(lambda: _fwht(X.copy()))))
    return out


# --- the parts of the report ------------------------------------------------------------

def fmt(x, nd=4):
    return "-" if x is None else f"{x:.{nd}f}"


def rel_mse(X, dot, nrm):
    x2 = (X * X).sum(1)
    return (x2 - 2 * dot + nrm) / x2


def part_gaussian(args, rng, emit):
    """1a: every quantizer on i.i.d. Gaussian vectors; returns (bits, mse) by family."""
    n = 4096
    X = rng.standard_normal((args.gauss, n))
    unit = np.full(args.gauss, choose_unit(4 * np.abs(X).max()))
    opts = [Opt("sign", 1, g) for g in (128, 0)] + [Opt("rtn", w, g) for w in (2, 3, 4) for g in (128, 0)]
    opts += [Opt("tern", 1.6, g) for g in (128, 0)] + lloyd_opts()
    for cb in ("hash", "lut"):          # L = 8: both codebooks
        opts += [Opt("tcq", k, g, False, 8, 1, cb) for k in (1, 2, 3, 4) for g in (128, 0)]
        opts += [Opt("tcq", k, 0, False, 8, 2, cb) for k in (1, 3)]
    opts += [Opt("tcq", k, 0, False, 12, 1, "hash") for k in (1, 2, 3)]
    opts += [Opt("tcq", k, g, False, 12, 1, "lut") for k in (1, 2, 3, 4) for g in (128, 0)
             if not (args.quick and g == 128)]
    opts += [Opt("tcq", k, 0, False, 12, 2, "lut") for k in (1, 3)]
    # L = 16 on a few vectors, one pass: its encoder is 256x the L = 8 one
    few = 1 if args.quick else 2
    opts16 = [Opt("tcq", k, 0, False, 16, 1, "hash") for k in ((2,) if args.quick else (1, 2, 3))]
    rows, points = [], defaultdict(list)
    for opt in opts + opts16:
        Xs, us, passes, tag = X, unit, args.tcq_passes, ""
        if opt.L == 16:
            Xs, us, passes, tag = X[:few], unit[:few], 1, f" ({few} vectors, 1 pass)"
        dot, nrm, dt = side_stats(opt, Xs, us, passes)
        mse = float(np.mean(rel_mse(Xs, dot, nrm)))
        bits = 8 * vector_bytes(opt, n) / n
        rows.append([opt.name + tag, f"{bits:.3f}", f"{mse:.4f}", f"{10 * math.log10(1 / mse):.2f}",
                     f"{10 * math.log10(mse / 2.0 ** (-2 * bits)):.2f}", f"{dt / Xs.size * 1e6:.2f}"])
        points[opt.family].append((bits, mse))
        print(f"  gaussian {opt.name}{tag}: {bits:.3f} bits, mse {mse:.4f} ({dt:.1f}s)", flush=True)
    emit(f"1a. i.i.d. Gaussian vectors, length 4096 ({args.gauss} vectors)",
         ["option", "bits/entry (all counted)", "rel. MSE", "SNR dB", "gap to D(R) dB",
          "encode us/weight"], rows,
         "Gap to D(R): 10 log10(MSE / 2^(-2 bits)), the distance to the Gaussian distortion-rate "
         "bound at the same honest bits. A rotation changes nothing on i.i.d. Gaussian vectors, so "
         "H is left out here. Encode time: this script's numpy/torch on one thread (RTN: its "
         "8-candidate range search; TCQ: Viterbi, batched over the vectors).")
    return points


def load_suites(args):
    trained = []
    try:
        import quality
        trained = quality.trained_cases(args.cache)
    except Exception as e:  # noqa: BLE001
        print(f"  no trained modules ({e})")
    suites = {"synthetic": adapters.suite(args.quick)}
    if trained:
        suites["trained"] = trained[:4] if args.quick else trained
    if args.max_modules:   # the first (smallest) synthetic ones
        suites["synthetic"] = suites["synthetic"][:args.max_modules]
    k = args.max_trained if args.max_trained is not None else args.max_modules
    if k and "trained" in suites:   # trained ones evenly spaced
        v = suites["trained"]
        suites["trained"] = [v[i] for i in np.linspace(0, len(v) - 1, min(k, len(v))).round().astype(int)]
    return suites


def part_real_vectors(tables, emit):
    """1b: mean bits and relative MSE of every option on the real component vectors."""
    opts = list(dict.fromkeys(o for tab in tables.values() for o, *_ in tab.stats))
    rows = []
    for opt in [o for o in opts if o.family != "dr" and o.width <= 4]:
        row = [opt.name]
        for tab in tables.values():
            b, e = tab.points(opt)
            row += [f"{b:.3f}", f"{e:.4f}"]
        tab = tables["synthetic"]
        row.append(f"{tab.seconds[opt] / max(1, tab.weights[opt]) * 1e6:.2f}")
        rows.append(row)
    head = ["option"] + [f"{s} {c}" for s in tables for c in ("bits", "rel. MSE")] + [
        "encode us/weight (synthetic)"]
    emit("1b. Real component vectors b_i, a_i: mean bits per entry and mean relative MSE", head, rows,
         "Means over every component vector of the suite (each vector counts once). Options up to "
         "4 code bits shown; rtn 5..8 are in the menus too.")


def part_sample_L12(args, tables, emit):
    """1c: the trellis at the bench's L against L = 12 on a sample of real vectors."""
    rows = []
    for sname, tab in tables.items():
        keys = [key for ks in tab.by_len.values() for key in ks]
        pick = np.random.default_rng(3).choice(len(keys), min(args.sample, len(keys)), replace=False)
        by_n = defaultdict(list)
        for i in pick:
            by_n[len(tab.vec(*keys[i]))].append(keys[i])
        for opt in [Opt("tcq", k, 0, rot, Lx, 1, "lut") for k in (1, 2, 3)
                    for rot in (False, True) for Lx in sorted({args.tcq_L, 12})]:
            bits, mse, sec, w = [], [], 0.0, 0
            for nn, ks in by_n.items():
                Xs = np.stack([tab.vec(*key) for key in ks])
                us = np.array([tab.mods[key[0]].unit for key in ks])
                d, q, dt = side_stats(opt, Xs, us, args.tcq_passes)
                mse += list(rel_mse(Xs, d, q))
                bits += [8 * vector_bytes(opt, nn) / nn] * len(ks)
                sec, w = sec + dt, w + Xs.size
            rows.append([sname, opt.name, f"{np.mean(bits):.3f}", f"{np.mean(mse):.4f}",
                         f"{sec / w * 1e6:.2f}"])
    emit(f"1c. Trellis window L = {args.tcq_L} against L = 12 on a sample of real vectors "
         f"({args.sample} per suite)", ["suite", "option", "bits/entry", "rel. MSE", "encode us/weight"],
         rows)


def part_hulls(gpoints, tables, menu, args, emit):
    """1d: each menu's rate-distortion hull at 1, 1.5, 2, 3, 4 bits per entry."""
    rates = [1.0, 1.5, 2.0, 3.0, 4.0]
    rows = []

    def add(label, name, vals, base):
        rows.append([label, name] + [f"{v:.4f} ({v / b:.2f}x)" for v, b in zip(vals, base)])

    if gpoints:
        fams = {"baseline": ("sign", "rtn"), "+ternary": ("sign", "rtn", "tern"),
                "+Lloyd-Max": ("sign", "rtn", "lloyd"), "+TCQ (L 8, 12, 16)": ("sign", "rtn", "tcq"),
                "all": ("sign", "rtn", "tern", "lloyd", "tcq")}
        base = hull_at(gpoints["sign"] + gpoints["rtn"], rates)
        for name, f in fams.items():
            add("gaussian", name, hull_at([p for x in f for p in gpoints[x]], rates), base)
        add("gaussian", "D(R) = 2^-2R", [2.0 ** (-2 * R) for R in rates], base)
    for sname, tab in tables.items():
        base = hull_at([tab.points(o) for o in menu["baseline"]], rates)
        for mname, opts in menu.items():
            if not mname.startswith("Gaussian"):
                add(sname, mname, hull_at([tab.points(o) for o in opts], rates), base)
    emit("1d. Rate-distortion hull: mean relative MSE at R bits per entry (ratio to baseline)",
         ["vectors", "menu"] + [f"R = {R:g}" for R in rates], rows,
         "Lower convex hull of each menu's (bits, MSE) points and (0 bits, MSE 1), linear between "
         "them (time sharing between vectors). Real vectors: TCQ at L = "
         f"{args.tcq_L}, codebook lut; Gaussian: TCQ at L = 8, 12 (both codebooks) and 16.")


def part_modules(mods, tables, menu, args, emit):
    """2: module error of each menu under the greedy allocator, over published +SGD."""
    import loraquant
    settings = [(0.8, 1.0), (0.9, 1.0), (0.8, 0.6), (0.9, 0.6)]
    cols = ["loraquant.compress"] + list(menu) + [m + ", unpadded" for m in UNPADDED]
    rows, detail = [], []
    for sname, md_list in mods.items():
        tab = tables[sname]
        pub, t0 = {}, time.time()
        for md in md_list:
            c = md.case
            for rho in (0.8, 0.9):
                p = P.paper_method(c.A, c.B, c.scaling, rho=rho, high_bits=2, refine="entries", svd="qr")
                pub[(md.name, rho)] = (p.honest_bits, P.rel_error(c.A, c.B, c.scaling, p.A_hat, p.B_hat))
        print(f"  {sname}: published +SGD in {time.time() - t0:.0f}s", flush=True)
        for rho, frac in settings:
            label = f"{'=' if frac == 1 else '60% of '}2@{rho:g}"
            errs, bits_used = defaultdict(list), []
            for mi, md in enumerate(md_list):
                hb, perr = pub[(md.name, rho)]
                bits, c = hb * frac, md.case
                q = loraquant.compress(c.A, c.B, bits=bits, scaling=c.scaling)
                errs["loraquant.compress"].append(P.rel_error(c.A, c.B, c.scaling, *q.dequantize()) / perr)
                for mname, opts in menu.items():
                    e, used = allocate(md, tab, mi, opts, budget_bytes(md, bits))
                    errs[mname].append(e / perr)
                    if mname == "baseline":
                        spent = (used + pad4(4 * md.r) + 4) * 8 / (md.r * (md.m + md.n))
                        bits_used.append((bits, q.avg_bits, spent))
                    if mname in UNPADDED:
                        e, _ = allocate(md, tab, mi, opts, budget_bytes(md, bits), padded=False)
                        errs[mname + ", unpadded"].append(e / perr)
            mean = lambda j: f"{np.mean([b[j] for b in bits_used]):.3f}"
            rows.append([sname, label, mean(0)] + [f"{geomean(errs[m]):.3f} ({max(errs[m]):.2f})"
                                                   for m in cols])
            lq, ours = np.array(errs["loraquant.compress"]), np.array(errs["baseline"])
            detail.append([sname, label, mean(0), mean(1), mean(2), f"{geomean(lq):.3f}",
                           f"{geomean(ours):.3f}", f"{geomean(ours / lq):.3f}",
                           f"{(ours / lq).min():.3f} .. {(ours / lq).max():.3f}"])
    counts = ", ".join(f"{len(v)} {k}" for k, v in mods.items())
    emit("2. Module error / published +SGD at the same honest bits: geometric mean (worst module)",
         ["suite", "budget", "bits"] + cols, rows,
         f"Modules: {counts}. Published: bench/paper_method.py, 2-bit head at rho, its SGD "
         "refinement, group 128, every scale counted; the 60 % rows are divided by the published "
         f"error at the full bits too. Menus: the options of 1b (TCQ: L = {args.tcq_L}, codebook "
         "lut). Each module alone gets its budget, every stored byte counted (loraquant's prefix "
         "of widths and unit, each vector block padded to 4 bytes). 'Gaussian D(R) bound' gives "
         "the same vectors ideal 2^(-2R) quantizers (R in steps of 1/4, no side information): "
         "what no quantizer of Gaussian-like vectors can beat. ', unpadded': the same menu with "
         "each vector's bytes counted exactly (no 4-byte padding of scales and code words), as "
         "the published method's honest bits are. Goal of issue 11: <= 0.45 (geometric mean) and "
         "<= 0.8 (worst).")
    emit("2b. The baseline menu against loraquant.compress on the same modules",
         ["suite", "budget", "budget bits", "loraquant avg_bits", "ours: bits spent",
          "loraquant / published", "ours / published", "ours / loraquant (geo)",
          "ours / loraquant (range)"], detail)


def part_decode(args, emit):
    n = 1 << 18 if args.quick else 1 << 20
    rows = [[a, b, c, f"{d:.2f}"] for a, b, c, d in decode_timings(n)]
    emit("3. Decode cost per weight", ["decode", "work per weight", "ops", "numpy ns/weight"], rows,
         f"numpy on one thread, vectorized over {n >> 10}K weights: a rough relative figure (numpy pays a "
         "memory pass per operation; a GPU kernel does the same work in registers). Hadamard: per "
         "input entry of the layer, once per token, not per weight.")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a 1-minute smoke run")
    ap.add_argument("--out", type=Path, default=Path("/tmp/levers"),
                    help="file to write the tables to too (a folder: FOLDER/levers.md)")
    ap.add_argument("--cache", type=Path, default=E2E_CACHE, help="e2e cache (trained modules)")
    ap.add_argument("--tcq-L", type=int, default=8, help="trellis window L for the real vectors")
    ap.add_argument("--tcq-passes", type=int, default=1,
                    help="Viterbi passes: each refits the group scales by least squares")
    ap.add_argument("--gauss", type=int, default=32, help="Gaussian vectors of length 4096")
    ap.add_argument("--sample", type=int, default=32,
                    help="real vectors per suite for the L = 12 trellis")
    ap.add_argument("--max-modules", type=int, default=0,
                    help="at most this many modules per suite (0: all): the first synthetic "
                         "ones (the smallest), trained ones evenly spaced")
    ap.add_argument("--max-trained", type=int, default=None,
                    help="at most this many trained modules (default: as --max-modules)")
    ap.add_argument("--modules-only", action="store_true",
                    help="skip the Gaussian vectors, the L = 12 sample and the decode timings")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.gauss, args.sample = 6, 8
    t_start = time.time()
    rng = np.random.default_rng(0)
    parts = ["# Quantizer levers at 1-3 bits per entry (bench/quantizer_levers.py)\n",
             f"command: `python bench/quantizer_levers.py "
             f"{' '.join(sys.argv[1:] if argv is None else argv)}`\n"]

    def emit(title, head, rows, note=""):
        text = f"## {title}\n\n{markdown(head, rows)}\n" + (f"\n{note}\n" if note else "")
        print("\n" + text, flush=True)
        parts.append(text)

    head, rows, worst = check_against_loraquant(rng)
    emit("0. Check: this script's RTN + range search against loraquant.compress", head, rows,
         f"Rank-1 pairs in paper mode (every component at high_bits); largest decoded difference "
         f"{worst:.1e} of the vector's largest entry.")
    gpoints = {} if args.modules_only else part_gaussian(args, rng, emit)

    menu = menus(args.tcq_L, "lut")
    all_opts = list(dict.fromkeys(o for m in menu.values() for o in m))
    tables, mods = {}, {}
    for sname, cases in load_suites(args).items():
        t0 = time.time()
        mods[sname] = [module_of(c) for c in cases]
        tab = VectorTable(mods[sname], args.tcq_passes)
        for opt in all_opts:
            t = time.time()
            tab.add([opt])
            if time.time() - t > 5:
                print(f"  {sname} {opt.name}: {time.time() - t:.1f}s", flush=True)
        tables[sname] = tab
        print(f"  {sname}: {len(cases)} modules, {sum(len(v) for v in tab.by_len.values())} vectors, "
              f"every option in {time.time() - t0:.0f}s", flush=True)
    part_real_vectors(tables, emit)
    if not args.modules_only:
        part_sample_L12(args, tables, emit)
    part_hulls(gpoints, tables, menu, args, emit)
    part_modules(mods, tables, menu, args, emit)
    if not args.modules_only:
        part_decode(args, emit)
    parts.append(f"\nrun time {time.time() - t_start:.0f} s\n")
    out = args.out / "levers.md" if args.out.is_dir() else args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(parts))
    print(f"wrote {out} ({time.time() - t_start:.0f} s)")


if __name__ == "__main__":
    main()
