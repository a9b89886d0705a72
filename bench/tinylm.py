"""A small byte-level causal LM (transformers' Llama, random init): build, train, score."""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch

VOCAB = 256   # bytes


@dataclass(frozen=True)
class LMConfig:
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    intermediate: int = 344     # Llama's 2.6875 x hidden; 344 = 2 * 128 + 88
    context: int = 256


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    batch: int = 16
    lr: float = 3e-3
    warmup: int = 30
    weight_decay: float = 0.1
    seed: int = 0


def build(cfg: LMConfig, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    hf = LlamaConfig(vocab_size=VOCAB, hidden_size=cfg.hidden, intermediate_size=cfg.intermediate,
                     num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
                     num_key_value_heads=cfg.heads, max_position_embeddings=cfg.context,
                     tie_word_embeddings=True, bos_token_id=None, eos_token_id=None,
                     pad_token_id=None)
    return LlamaForCausalLM(hf)


def _lr_at(step, tc: TrainConfig):
    if step < tc.warmup:
        return tc.lr * (step + 1) / tc.warmup
    frac = (step - tc.warmup) / max(1, tc.steps - tc.warmup)
    return tc.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * frac)))   # cosine down to 10 %


def train(model, stream: torch.Tensor, tc: TrainConfig, context: int, label: str):
    """AdamW on random windows of `stream` (byte ids); only parameters that require
    grad are trained. Prints progress; returns the last logged loss."""
    g = torch.Generator().manual_seed(tc.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=tc.lr, betas=(0.9, 0.95), weight_decay=tc.weight_decay)
    model.train()
    t0, running = time.time(), None
    for step in range(tc.steps):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, tc)
        starts = torch.randint(0, len(stream) - context, (tc.batch,), generator=g)
        x = torch.stack([stream[s:s + context] for s in starts])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        if (step + 1) % max(1, tc.steps // 10) == 0 or step + 1 == tc.steps:
            print(f"    {label} step {step + 1}/{tc.steps}: loss {running:.3f} nats/byte, "
                  f"{time.time() - t0:.0f}s", flush=True)
    model.eval()
    return running


@torch.no_grad()
def perplexity(model, blocks, context: int, batch=32) -> float:
    """exp(mean next-byte NLL) over non-overlapping windows of `context` bytes cut from
    each held-out block (a block's tail shorter than 2 bytes is dropped)."""
    windows = [w for b in blocks for w in b.split(context) if len(w) >= 2]
    total, count = 0.0, 0
    model.eval()
    for i in range(0, len(windows), batch):
        chunk = windows[i:i + batch]
        L = max(len(w) for w in chunk)
        x = torch.zeros(len(chunk), L, dtype=torch.long)
        mask = torch.zeros(len(chunk), L, dtype=torch.bool)
        for j, w in enumerate(chunk):
            x[j, :len(w)], mask[j, :len(w)] = w, True
        logits = model(input_ids=x).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none")
        keep = mask[:, 1:]
        total += nll[keep].sum().item()
        count += int(keep.sum())
    return math.exp(total / count)


def key_fields(*configs) -> dict:
    return {type(c).__name__ + str(i): asdict(c) for i, c in enumerate(configs)}
