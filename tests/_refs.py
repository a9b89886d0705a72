"""Plain references the tests compare the core against: numpy/torch, written for clarity."""
from __future__ import annotations

import numpy as np
import torch

HEADER_BYTES = 48


def pad4(x: int) -> int:
    return (x + 3) // 4 * 4


def vector_bytes(length: int, width: int, group: int) -> int:
    """format.h: scales (2 or 4 bytes per group) padded to 4, then ceil(L*w/32) words."""
    if width == 0:
        return 0
    groups = -(-length // group)
    scales = groups * (2 if width == 1 else 4)
    return pad4(scales) + 4 * (-(-(length * width) // 32))


def payload_bytes(payload: bytes, m: int, n: int, r: int, group_size: int) -> int:
    """Recompute the payload size from its own widths and shifts, as format.h says."""
    bw, aw, bsh, ash = (payload[k * r:(k + 1) * r] for k in range(4))
    total = pad4(4 * r) + 4
    for i in range(r):
        total += vector_bytes(m, bw[i], group_size << bsh[i])
        total += vector_bytes(n, aw[i], group_size << ash[i])
    return total


def pack_ref(codes, width: int) -> bytes:
    """Bit stream: entry j at bits j*w.. of little-endian uint32 words."""
    nbits = len(codes) * width
    words = np.zeros(-(-nbits // 32), dtype=np.uint64)
    for j, c in enumerate(codes):
        for b in range(width):
            if (int(c) >> b) & 1:
                bit = j * width + b
                words[bit // 32] |= np.uint64(1 << (bit % 32))
    return words.astype("<u4").tobytes()


def fp16_round(v: float, unit: float) -> np.float32:
    """A stored scale: fp16 of v/unit, times unit (float32 arithmetic, as the core)."""
    return np.float32(np.float16(np.float32(v) / np.float32(unit))) * np.float32(unit)


def rtn_minmax_ref(x: np.ndarray, width: int, group: int, unit: float) -> np.ndarray:
    """Decoded values of min/max RTN (no range search) with fp16 scales, float32 math."""
    x = x.astype(np.float32)
    out = np.empty_like(x)
    qmax = np.float32(2 ** width - 1)
    for beg in range(0, len(x), group):
        g = x[beg:beg + group]
        lo, hi = g.min(), g.max()
        mid, half = np.float32(0.5) * (lo + hi), np.float32(0.5) * (hi - lo)
        clo, chi = mid - half, mid + half
        delta = fp16_round((chi - clo) / qmax, unit)
        zmin = fp16_round(clo, unit)
        inv = np.float32(1) / delta if delta > 0 else np.float32(0)
        v = np.clip((g - zmin) * inv, 0, qmax)
        q = np.floor(v + np.float32(0.5)).astype(np.float32)
        out[beg:beg + group] = zmin + q * delta
    return out


def sign_ref(x: np.ndarray, group: int, unit: float) -> np.ndarray:
    x = x.astype(np.float32)
    out = np.empty_like(x)
    for beg in range(0, len(x), group):
        g = x[beg:beg + group]
        alpha = fp16_round(float(np.abs(g.astype(np.float64)).mean()), unit)
        out[beg:beg + group] = np.where(g >= 0, alpha, -alpha)
    return out


# --- the published method, written plainly in torch -----------------------------

def _rtn_torch(v: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    out = torch.empty_like(v)
    qmax = 2 ** bits - 1
    for beg in range(0, v.numel(), group):
        g = v[beg:beg + group]
        lo, hi = g.min(), g.max()
        d = (hi - lo) / qmax
        if d == 0:
            out[beg:beg + group] = g
            continue
        out[beg:beg + group] = lo + torch.clamp(torch.round((g - lo) / d), 0, qmax) * d
    return out


def _sign_torch(v: torch.Tensor, group: int) -> torch.Tensor:
    out = torch.empty_like(v)
    for beg in range(0, v.numel(), group):
        g = v[beg:beg + group]
        out[beg:beg + group] = torch.where(g >= 0, 1.0, -1.0).to(g) * g.abs().mean()
    return out


def paper_reference(A, B, rho: float, high_bits: int = 2, group: int = 128, scaling=1.0):
    """LoRAQuant as described: full SVD of B @ A, split at h (the paper's text: the
    smallest count whose energy share reaches rho), RTN min/max on the high part, sign
    times mean |w| on the rest. Returns (B_hat, A_hat, h)."""
    A = torch.as_tensor(A, dtype=torch.float64)
    B = torch.as_tensor(B, dtype=torch.float64)
    r = A.shape[0]
    U, S, Vh = torch.linalg.svd(scaling * (B @ A), full_matrices=False)
    k = min(r, S.numel())
    U, S, Vh = U[:, :k], S[:k], Vh[:k]
    share = torch.cumsum(S ** 2, 0) / torch.sum(S ** 2)
    h = int(torch.nonzero(share >= rho * (1 - 1e-12))[0]) + 1
    Bp, Ap = U * S.sqrt(), S.sqrt()[:, None] * Vh
    Bh, Ah = torch.zeros_like(Bp), torch.zeros_like(Ap)
    for i in range(k):
        if i < h:
            Bh[:, i], Ah[i] = _rtn_torch(Bp[:, i], high_bits, group), _rtn_torch(Ap[i], high_bits, group)
        else:
            Bh[:, i], Ah[i] = _sign_torch(Bp[:, i], group), _sign_torch(Ap[i], group)
    return Bh, Ah, h


def rtn_pair_reference(A, B, bits: int, group: int = 128):
    """Plain RTN of A's rows and B's columns at `bits` (min/max, fp16 scale and zero per
    group counted): returns (B_hat, A_hat, honest bits per weight)."""
    A = torch.as_tensor(A, dtype=torch.float64)
    B = torch.as_tensor(B, dtype=torch.float64)
    Ah = torch.stack([_rtn_torch(row, bits, group) for row in A])
    Bh = torch.stack([_rtn_torch(col, bits, group) for col in B.T], dim=1)
    r, n = A.shape
    m = B.shape[0]
    groups = r * (-(-n // group)) + r * (-(-m // group))
    honest = (r * (m + n) * bits + 32 * groups) / (r * (m + n))
    return Bh, Ah, honest


def lora_like(m: int, n: int, r: int, decay: float, seed: int, scale: float = 0.02):
    """A LoRA pair with a decaying spectrum and non-orthogonal factors (numpy float64)."""
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((m, r)))
    V, _ = np.linalg.qr(rng.standard_normal((n, r)))
    k = min(m, n, r)
    s = np.zeros(r)
    s[:k] = scale * decay ** np.arange(k)
    M = rng.standard_normal((r, r)) + 3 * np.eye(r)
    B = (U[:, :r] * s) @ M if m >= r else rng.standard_normal((m, r)) * scale
    A = np.linalg.solve(M, V[:, :r].T) if n >= r else rng.standard_normal((r, n))
    return A, B
