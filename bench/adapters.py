"""Synthetic LoRA modules with realistic shapes and spectra, for the weight-space bench.

Each module is built from its update dW = B @ A = U diag(s) V^T:
- shapes (m, n) of real layers: 768 (GPT-2 / BERT base), 2048, 4096 (LLaMA-7B
  attention) and 11008 (LLaMA-7B MLP), at ranks 4 to 64;
- a decaying spectrum s: power law s_i = i^-p or exponential s_i = exp(-c (i - 1)).
  LoRAQuant's published bits (1.52 at rho 0.8, 1.68 at rho 0.9, r = 16, 2-bit head)
  mean about half the components hold 80 % of the energy, which a power law with p
  near 0.5 reproduces; flatter and steeper spectra are included too;
- channel scales: every output row of U and input row of V gets a lognormal scale
  (sigma 0.25), and with `outliers` about 1 % of channels (at least 2) are scaled up
  4-10x before orthonormalising, giving heavy-tailed rows of B and columns of A
  (LLM activations and LoRA factors have such outlier channels);
- non-orthogonal factors: B = U diag(s)^1/2 M, A = M^-1 diag(s)^1/2 V^T with a random
  well-conditioned r x r mixing M, then B and A rebalanced so that A's entries have
  the size of a Kaiming-initialised lora_A (RMS 1 / sqrt(3 n)), as in trained LoRA.
- scaling = lora_alpha / r with lora_alpha = 16.
Everything is drawn from torch.Generator seeded by the spec, so a spec always gives
the same module.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

LORA_ALPHA = 16.0
CHANNEL_SIGMA = 0.25      # lognormal spread of per-channel scales
OUTLIER_SHARE = 0.01      # share of outlier channels when `outliers` is set
OUTLIER_GAIN = (4.0, 10.0)
MIXING = 0.5              # size of the random part of the r x r mixing


@dataclass(frozen=True)
class Spec:
    """One synthetic module: shape, rank, spectrum and seed."""
    m: int
    n: int
    r: int
    spectrum: str        # "power" (s_i = i^-decay) or "exp" (s_i = exp(-decay (i - 1)))
    decay: float
    outliers: bool
    seed: int

    @property
    def name(self) -> str:
        tail = "+out" if self.outliers else ""
        return f"{self.m}x{self.n} r{self.r} {self.spectrum}{self.decay:g}{tail}"


@dataclass
class Case:
    """A LoRA pair as the benches use it: update = scaling * B @ A."""
    name: str
    A: torch.Tensor      # (r, n) float32
    B: torch.Tensor      # (m, r) float32
    scaling: float


def spectrum(spec: Spec) -> torch.Tensor:
    i = torch.arange(1, spec.r + 1, dtype=torch.float64)
    if spec.spectrum == "power":
        return i ** -spec.decay
    if spec.spectrum == "exp":
        return torch.exp(-spec.decay * (i - 1))
    raise ValueError(f"spectrum must be 'power' or 'exp', got {spec.spectrum!r}")


def _channel_scales(k, outliers, g):
    c = torch.exp(CHANNEL_SIGMA * torch.randn(k, generator=g, dtype=torch.float64))
    if outliers:
        count = max(2, round(OUTLIER_SHARE * k))
        idx = torch.randperm(k, generator=g)[:count]
        lo, hi = OUTLIER_GAIN
        c[idx] *= lo + (hi - lo) * torch.rand(count, generator=g, dtype=torch.float64)
    return c


def _orthonormal(k, r, outliers, g):
    X = torch.randn(k, r, generator=g, dtype=torch.float64)
    return torch.linalg.qr(X * _channel_scales(k, outliers, g)[:, None])[0]


def make(spec: Spec) -> Case:
    """The module of `spec` (deterministic)."""
    g = torch.Generator().manual_seed(spec.seed)
    U = _orthonormal(spec.m, spec.r, spec.outliers, g)
    V = _orthonormal(spec.n, spec.r, spec.outliers, g)
    root = spectrum(spec).sqrt()
    M = (torch.eye(spec.r, dtype=torch.float64)
         + MIXING * torch.randn(spec.r, spec.r, generator=g, dtype=torch.float64) / math.sqrt(spec.r))
    B = (U * root) @ M
    A = torch.linalg.solve(M, root[:, None] * V.T)
    gain = A.pow(2).mean().sqrt().item() * math.sqrt(3 * spec.n)
    return Case(spec.name, (A / gain).float(), (B * gain).float(), LORA_ALPHA / spec.r)


# The default suite: the shapes of the layers LoRA is put on, ranks 4-64, spectra from
# flat (p 0.3) to steep (p 1.0, exp), half with outlier channels.
SUITE = [
    Spec(768, 768, 8, "power", 0.5, False, 1),
    Spec(768, 768, 16, "power", 0.8, True, 2),
    Spec(2048, 2048, 8, "exp", 0.3, False, 3),
    Spec(2048, 2048, 32, "power", 0.5, True, 4),
    Spec(4096, 4096, 16, "power", 0.5, False, 5),
    Spec(4096, 4096, 16, "power", 0.3, True, 6),
    Spec(4096, 4096, 4, "power", 1.0, False, 7),
    Spec(4096, 4096, 8, "exp", 0.5, True, 8),
    Spec(4096, 4096, 64, "power", 0.8, False, 9),
    Spec(11008, 4096, 16, "power", 0.5, True, 10),
    Spec(4096, 11008, 16, "exp", 0.15, False, 11),
    Spec(11008, 4096, 32, "power", 0.4, False, 12),
    Spec(4096, 11008, 64, "power", 0.6, True, 13),
    Spec(2048, 768, 16, "power", 0.5, True, 14),
]
QUICK = [SUITE[0], SUITE[1], SUITE[2], SUITE[13]]


def suite(quick=False) -> list[Case]:
    return [make(s) for s in (QUICK if quick else SUITE)]
