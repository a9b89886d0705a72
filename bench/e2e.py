"""End-to-end: held-out perplexity of a small LM's LoRA adapters after compression.

    python bench/e2e.py            # about 10-15 min on 2 cores the first time, cached after
    python bench/e2e.py --quick    # a smoke test with a few training steps

1. A byte-level Llama (4 layers, hidden 128, random init) is trained on Python's
   standard library source; 2. LoRA adapters (r = 8, 16, all linear layers) are trained
   with PEFT on English prose (perl's .pod documentation); 3. held-out prose perplexity
   is measured for the base model, the fp32 adapter, the published method at 2@0.8 and
   2@0.9 (with SGD refinement), loraquant.compress_adapter (one budget shared by all
   modules) at the same honest bits as each published setting and at 60 % of them,
   and loraquant.compress on each module alone at that module's published bits (which
   separates the quantizer from the cross-module allocation), and compress_adapter with
   a loraquant.calibrate of the base model on windows of the adapters' training text
   (never the held-out blocks) at the same two budgets; 4. the share of the
   base-to-adapter gain each keeps: (ppl_base - ppl) / (ppl_base - ppl_fp32), and each
   method's output error |(dW - dW_hat) X|_F / |dW X|_F on the calibration inputs and
   on the held-out text's own inputs, with the calibrated / data-free ratio per module.
Models and adapters are cached under --cache, keyed by their configuration.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import time
from pathlib import Path

import torch

import corpora
import paper_method as P
import peft_pairs
import tinylm
from tables import markdown

import loraquant

DEFAULT_CACHE = Path(os.environ.get("LORAQUANT_BENCH_CACHE", "~/.cache/loraquant-bench")).expanduser()
LORA_ALPHA = 16
PUBLISHED_RHOS = (0.8, 0.9)      # 2-bit head, with SGD refinement
LOWER_SHARE = 0.6                # loraquant also at 60 % of the published bits
FULL = dict(pretrain=tinylm.TrainConfig(steps=500), ranks=(8, 16), eval_blocks=None,
            lora=tinylm.TrainConfig(steps=250, lr=2e-3, warmup=20, weight_decay=0.0, seed=1))
QUICK = dict(pretrain=tinylm.TrainConfig(steps=20), ranks=(8,), eval_blocks=4,
             lora=tinylm.TrainConfig(steps=10, lr=2e-3, warmup=2, weight_decay=0.0, seed=1))


def _key(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


def base_model(lm, tc, corpus, root: Path):
    """The pretrained base model, from the cache or trained now. Returns (model, key)."""
    from safetensors.torch import load_model, save_model

    key = _key(dict(tinylm.key_fields(lm, tc), corpus=corpus.sha))
    path = root / f"base-{key}" / "model.safetensors"
    model = tinylm.build(lm)
    if path.exists():
        load_model(model, str(path))
        print(f"  base model from {path.parent}")
    else:
        print(f"  training the base model on {corpus.describe()}")
        tinylm.train(model, corpus.ids, tc, lm.context, "base")
        path.parent.mkdir(parents=True, exist_ok=True)
        save_model(model, str(path))
    model.eval()
    return model, key


def adapter(lm, pre, r, tc, base_corpus, stream, prose_sha, root: Path):
    """A PEFT model holding the rank-r adapter, from the cache or trained now."""
    from peft import LoraConfig, PeftModel, get_peft_model

    base, base_key = base_model(lm, pre, base_corpus, root)
    key = _key(dict(base=base_key, r=r, alpha=LORA_ALPHA, train=tinylm.key_fields(tc), prose=prose_sha))
    folder = root / f"lora-r{r}-{key}"
    if (folder / "adapter_config.json").exists():
        print(f"  r={r} adapter from {folder}")
        return PeftModel.from_pretrained(base, str(folder)).eval()
    torch.manual_seed(tc.seed)
    cfg = LoraConfig(r=r, lora_alpha=LORA_ALPHA, target_modules="all-linear", lora_dropout=0.0)
    model = get_peft_model(base, cfg)
    print(f"  training the r={r} adapter on prose")
    tinylm.train(model, stream, tc, lm.context, f"lora r={r}")
    model.save_pretrained(str(folder))
    return model.eval()


# --- compression -------------------------------------------------------------------

def _weights(pairs):
    return {n: A.shape[0] * (A.shape[1] + B.shape[0]) for n, (A, B, _) in pairs.items()}


def weight_errors(pairs, factors) -> tuple[float, float]:
    """(adapter error, worst module error): sqrt(sum |s B A - B_hat A_hat|^2 / sum |s B A|^2)
    over the modules, and the largest relative error of one module."""
    num = den = worst = 0.0
    for n, (A, B, s) in pairs.items():
        A64, B64 = A.double(), B.double()
        ref = s * s * torch.sum((B64.T @ B64) * (A64 @ A64.T)).item()
        err = P.rel_error(A, B, s, *factors[n])
        num, den, worst = num + err ** 2 * ref, den + ref, max(worst, err)
    return math.sqrt(num / den), worst


def output_errors(pairs, factors, calibration) -> tuple[float, list]:
    """(adapter output error, per-module output errors): the error that reaches each
    layer's output over the calibration inputs, |(s B A - B_hat A_hat) L|_F / |s B A L|_F,
    pooled as weight_errors pools the weight error."""
    from loraquant.calibration import output_error
    num = den = 0.0
    per = []
    for n, (A, B, s) in pairs.items():
        H = calibration.moment(n)
        A64, B64 = A.double().numpy(), B.double().numpy()
        ref = s * s * float(((B64.T @ B64) * (A64 @ H @ A64.T)).sum())
        err = output_error(A64, B64, s, *(t.double().numpy() for t in factors[n]), H)
        num, den = num + err ** 2 * ref, den + ref
        per.append(err)
    return math.sqrt(num / den), per


def calibration_windows(stream, context, samples, seed=7):
    """`samples` windows of `context` bytes from the adapter's training text (never the
    held-out blocks), as LongTensor batches of 16."""
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(stream) - context, (samples,), generator=g)
    windows = torch.stack([stream[s:s + context] for s in starts])
    return list(windows.split(16))


def _adapter_bits(pairs, module_bits):
    w = _weights(pairs)
    return sum(module_bits[n] * w[n] for n in pairs) / sum(w.values())


def published(pairs, rho):
    """The published method (2-bit head, SGD refinement) on every module alone:
    (factors, honest bits of each module)."""
    out, bits = {}, {}
    for n, (A, B, s) in pairs.items():
        q = P.paper_method(A, B, s, rho=rho, high_bits=2)
        out[n], bits[n] = (q.A_hat, q.B_hat), q.honest_bits
    return out, bits


def loraquant_shared(pairs, bits, balance="relative", calibration=None):
    """loraquant.compress_adapter: one budget over all modules; (factors, bits used)."""
    qs = loraquant.compress_adapter(pairs, bits=bits, balance=balance, calibration=calibration)
    return {n: q.dequantize() for n, q in qs.items()}, _adapter_bits(
        pairs, {n: q.avg_bits for n, q in qs.items()})


def loraquant_per_module(pairs, module_bits):
    """loraquant.compress on each module alone at that module's own budget."""
    qs = {n: loraquant.compress(A, B, bits=module_bits[n], scaling=s) for n, (A, B, s) in pairs.items()}
    return {n: q.dequantize() for n, q in qs.items()}, _adapter_bits(
        pairs, {n: q.avg_bits for n, q in qs.items()})


# --- evaluation ----------------------------------------------------------------------

def evaluate(model, held, context, calib_batches) -> tuple[list[dict], dict]:
    pairs = peft_pairs.pairs_from_model(model)
    ppl = lambda: tinylm.perplexity(model, held, context)
    with model.disable_adapter():
        rows = [dict(method="base model (no adapter)", bits=None, err=1.0, out=1.0,
                     out_held=1.0, ppl=ppl())]
        t = time.time()
        cal = loraquant.calibrate(model, calib_batches, progress=False)
        print(f"    calibration: {len(cal)} layers, {time.time() - t:.1f}s", flush=True)
        # the held-out text's own statistics, to measure the output error where the
        # compression did not look (the full-length windows of the held-out blocks)
        held_windows = [w for b in held for w in b.split(context) if len(w) == context]
        held_cal = loraquant.calibrate(model, list(torch.stack(held_windows).split(16)),
                                       progress=False)
    rows[0]["worst"] = 1.0
    rows.append(dict(method="fp32 adapter", bits=32.0, err=0.0, worst=0.0, out=0.0, out_held=0.0,
                     ppl=ppl()))
    ratio_rows = []
    for rho in PUBLISHED_RHOS:
        t = time.time()
        fac, module_bits = published(pairs, rho)
        bits = _adapter_bits(pairs, module_bits)
        print(f"    published 2@{rho:g}: {time.time() - t:.1f}s", flush=True)
        tag = f"2@{rho:g}"
        settings = [(f"published {tag} +SGD", (fac, bits)),
                    (f"loraquant shared budget = {tag}", loraquant_shared(pairs, bits)),
                    (f"loraquant shared, absolute balance = {tag}",
                     loraquant_shared(pairs, bits, "absolute")),
                    (f"loraquant shared budget {LOWER_SHARE:.0%} of {tag}",
                     loraquant_shared(pairs, LOWER_SHARE * bits)),
                    (f"loraquant per module = {tag}", loraquant_per_module(pairs, module_bits)),
                    (f"loraquant calibrated, shared = {tag}",
                     loraquant_shared(pairs, bits, calibration=cal)),
                    (f"loraquant calibrated, shared {LOWER_SHARE:.0%} of {tag}",
                     loraquant_shared(pairs, LOWER_SHARE * bits, calibration=cal))]
        per_module, per_held = {}, {}
        for name, (factors, b) in settings:
            err, worst = weight_errors(pairs, factors)
            out, per_module[name] = output_errors(pairs, factors, cal)
            out_held, per_held[name] = output_errors(pairs, factors, held_cal)
            with peft_pairs.swapped_factors(model, factors):
                rows.append(dict(method=name, bits=b, err=err, worst=worst, out=out,
                                 out_held=out_held, ppl=ppl()))
        for label in ("=", f"{LOWER_SHARE:.0%} of"):
            row = dict(setting=f"{label} {tag}")
            for inputs, per in (("calibration", per_module), ("held-out", per_held)):
                free = per[f"loraquant shared budget {label} {tag}"]
                calib = per[f"loraquant calibrated, shared {label} {tag}"]
                ratios = [c / f for c, f in zip(calib, free) if f > 0]
                row[inputs] = (math.exp(sum(map(math.log, ratios)) / len(ratios)), max(ratios),
                               sum(r < 1 for r in ratios), len(ratios))
            ratio_rows.append(row)
    base, fp = rows[0]["ppl"], rows[1]["ppl"]
    for row in rows:
        row["kept"] = (base - row["ppl"]) / (base - fp)
    return rows, ratio_rows


def table(rows) -> str:
    body = [[r["method"], "-" if r["bits"] is None else f"{r['bits']:.3f}", f"{r['err']:.4f}",
             f"{r['worst']:.4f}", f"{r['out']:.4f}", f"{r['out_held']:.4f}", f"{r['ppl']:.4f}",
             f"{r['kept']:.1%}"] for r in rows]
    return markdown(["method", "honest bits", "weight rel. error", "worst module error",
                     "output error (calib. inputs)", "output error (held-out inputs)",
                     "held-out ppl (per byte)", "kept gain"], body)


def ratio_table(ratio_rows) -> str:
    """Output error calibrated / data-free, per module, at the same shared budget: geo
    mean over modules, worst module, modules lower; on the calibration text's inputs
    and on the held-out text's."""
    body = []
    for r in ratio_rows:
        row = [r["setting"]]
        for inputs in ("calibration", "held-out"):
            geo, worst, lower, n = r[inputs]
            row += [f"{geo:.3f}", f"{worst:.3f}", f"{lower}/{n}"]
        body.append(row)
    return markdown(["budget", "calibrated / data-free output error, calib. inputs (geo mean)",
                     "worst", "lower", "held-out inputs (geo mean)", "worst", "lower"], body)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few training steps, a smoke test")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--out", type=Path, default=None, help="folder for e2e.md (default: under the cache)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadiest)")
    ap.add_argument("--calib-samples", type=int, default=64,
                    help="calibration windows (of the context length) for the calibrated rows")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    plan = QUICK if args.quick else FULL
    root = args.cache / ("e2e-quick" if args.quick else "e2e")
    out = args.out or args.cache / "out"
    out.mkdir(parents=True, exist_ok=True)
    lm, t0 = tinylm.LMConfig(), time.time()

    base_corpus, prose = corpora.python_stdlib(), corpora.prose()
    stream, held = corpora.split(prose.ids)
    held = held[:plan["eval_blocks"]] if plan["eval_blocks"] else held
    print(f"base corpus  {base_corpus.describe()}\nprose corpus {prose.describe()}: "
          f"{len(stream) / 1e3:.0f} kB to train, {sum(map(len, held)) / 1e3:.0f} kB held out")
    parts = [f"Base: {base_corpus.describe()}. Adapters: {prose.describe()}, "
             f"{sum(map(len, held)) / 1e3:.0f} kB held out. Model {lm}."]
    calib = calibration_windows(stream, lm.context, args.calib_samples)
    parts.append(f"Calibration: {args.calib_samples} windows of {lm.context} bytes of the "
                 f"adapters' training text (disjoint from the held-out blocks).")
    for r in plan["ranks"]:
        t = time.time()
        model = adapter(lm, plan["pretrain"], r, plan["lora"], base_corpus, stream, prose.sha, root)
        rows, ratio_rows = evaluate(model, held, lm.context, calib)
        text = table(rows) + "\n\n" + ratio_table(ratio_rows)
        print(f"\n### r = {r} ({time.time() - t:.0f}s)\n\n{text}\n", flush=True)
        parts.append(f"### r = {r}\n\n{text}\n")
    (out / "e2e.md").write_text("\n".join(parts))
    print(f"wrote {out / 'e2e.md'}; total {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
