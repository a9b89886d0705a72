"""Weight-space quality: relative error of each method against honest bits.

    python bench/quality.py            # synthetic suite + trained adapters in the e2e cache
    python bench/quality.py --quick    # 4 small synthetic modules, a smoke test
    python bench/quality.py --readme   # and write the tables of README.md, bench/README.md

For every LoRA module (A, B, scaling) it measures |s B A - B_hat A_hat|_F / |s B A|_F
for loraquant budget mode (1.25 .. 3 bits), the published method (2@0.8, 2@0.9, 3@0.8,
3@0.9, with and without its SGD refinement), loraquant at exactly the published
method's honest bits, plain RTN at 2 and 3 bits and 1-bit sign. Bits are honest: every
stored number counted (loraquant's avg_bits counts every stored byte). Writes
quality.md, quality.json and quality.png to --out.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict
from pathlib import Path

import torch

import adapters
import paper_method as P
import peft_pairs
from tables import geomean, markdown, replace_block

import loraquant

BUDGETS = [1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 2.75, 3.0]
PUBLISHED = [(2, 0.8), (2, 0.9), (3, 0.8), (3, 0.9)]
READMES = [Path(__file__).resolve().parents[1] / "README.md", Path(__file__).resolve().parent / "README.md"]
DEFAULT_CACHE = Path(os.environ.get("LORAQUANT_BENCH_CACHE", "~/.cache/loraquant-bench")).expanduser()


def _row(method, q_bits, err, paper_bits=None, h=None):
    return dict(method=method, bits=q_bits, err=err, paper_bits=paper_bits, h=h)


def measure(case: adapters.Case, svd="qr") -> list[dict]:
    """Every method on one module: a list of rows (method, bits, err, ...)."""
    A, B, s = case.A, case.B, case.scaling
    err = lambda Ah, Bh: P.rel_error(A, B, s, Ah, Bh)
    rows = []
    for b in BUDGETS:
        q = loraquant.compress(A, B, bits=b, scaling=s)
        rows.append(_row(f"loraquant {b:g}", q.avg_bits, err(*q.dequantize())))
    for hb, rho in PUBLISHED:
        tag = f"{hb}@{rho:g}"
        for refine, label in (("entries", f"published {tag} +SGD"), (None, f"published {tag}")):
            p = P.paper_method(A, B, s, rho=rho, high_bits=hb, refine=refine, svd=svd)
            rows.append(_row(label, p.honest_bits, err(p.A_hat, p.B_hat), p.paper_bits, p.h))
            if refine:
                q = loraquant.compress(A, B, bits=p.honest_bits, scaling=s)
                rows.append(_row(f"loraquant ={tag}", q.avg_bits, err(*q.dequantize())))
    for bits in (2, 3):
        p = P.rtn_baseline(A, B, s, bits=bits)
        rows.append(_row(f"RTN {bits}-bit", p.honest_bits, err(p.A_hat, p.B_hat), p.paper_bits))
    p = P.sign_baseline(A, B, s)
    rows.append(_row("sign 1-bit", p.honest_bits, err(p.A_hat, p.B_hat), p.paper_bits))
    return rows


def trained_cases(cache: Path) -> list[adapters.Case]:
    cases = []
    for folder in peft_pairs.adapter_dirs(cache):
        for name, (A, B, s) in peft_pairs.pairs_from_dir(folder).items():
            short = name.replace("base_model.model.model.layers.", "L")
            cases.append(adapters.Case(f"{folder.name}:{short}", A, B, s))
    return cases


# --- tables -------------------------------------------------------------------------

def summary(results: dict) -> tuple[list, list]:
    """Per method: mean honest bits, mean paper bits, geometric-mean error."""
    by = defaultdict(list)
    for rows in results.values():
        for r in rows:
            by[r["method"]].append(r)
    out = []
    for method, rs in by.items():
        pb = [r["paper_bits"] for r in rs if r["paper_bits"] is not None]
        out.append([method, f"{sum(r['bits'] for r in rs) / len(rs):.3f}",
                    f"{sum(pb) / len(pb):.3f}" if pb else "-",
                    f"{geomean(r['err'] for r in rs):.4f}"])
    out.sort(key=lambda row: float(row[1]))
    return ["method", "honest bits (mean)", "paper bits (mean)", "rel. error (geo-mean)"], out


def equal_bits(results: dict) -> tuple[list, list]:
    """loraquant / published+SGD error ratio at the published method's honest bits."""
    rows = []
    for hb, rho in PUBLISHED:
        tag = f"{hb}@{rho:g}"
        pairs = []
        for case_rows in results.values():
            get = {r["method"]: r for r in case_rows}
            pairs.append((get[f"published {tag} +SGD"], get[f"loraquant ={tag}"]))
        ratios = [lq["err"] / pub["err"] for pub, lq in pairs]
        rows.append([tag, f"{sum(p['bits'] for p, _ in pairs) / len(pairs):.3f}",
                     f"{sum(q['bits'] for _, q in pairs) / len(pairs):.3f}",
                     f"{geomean(p['err'] for p, _ in pairs):.4f}",
                     f"{geomean(q['err'] for _, q in pairs):.4f}",
                     f"{geomean(ratios):.3f}", f"{min(ratios):.3f}", f"{max(ratios):.3f}",
                     f"{sum(x > 1 for x in ratios)}/{len(ratios)}"])
    head = ["published", "bits published", "bits loraquant", "err published+SGD",
            "err loraquant", "ratio (geo)", "ratio min", "ratio max", "loraquant worse"]
    return head, rows


def per_case(results: dict) -> tuple[list, list]:
    cols = ["published 2@0.8 +SGD", "loraquant =2@0.8", "published 2@0.9 +SGD",
            "loraquant =2@0.9", "published 3@0.8 +SGD", "loraquant =3@0.8",
            "published 3@0.9 +SGD", "loraquant =3@0.9"]
    rows = []
    for name, case_rows in results.items():
        get = {r["method"]: r for r in case_rows}
        h = [str(get[f"published {t} +SGD"]["h"]) for t in ("2@0.8", "2@0.9")]
        rows.append([name, "/".join(h)] + [f"{get[c]['err']:.4f} ({get[c]['bits']:.2f})" for c in cols])
    return ["module", "h at 0.8/0.9"] + cols, rows


# --- plot ---------------------------------------------------------------------------

def plot(groups: dict, path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(groups), figsize=(7.5 * len(groups), 5.5), squeeze=False)
    for ax, (title, results) in zip(axes[0], groups.items()):
        _, rows = summary(results)
        pts = {row[0]: (float(row[1]), float(row[3])) for row in rows}
        lq = sorted(v for k, v in pts.items() if k.startswith("loraquant ") and "=" not in k)
        ax.plot(*zip(*lq), "o-", color="tab:blue", lw=2, label="loraquant (budget 1.25..3)")
        for marker, pick, color, label in (
                ("s", lambda k: k.endswith("+SGD"), "tab:red", "published +SGD"),
                ("x", lambda k: k.startswith("published") and not k.endswith("+SGD"),
                 "tab:orange", "published, no SGD"),
                ("D", lambda k: k.startswith("loraquant ="), "tab:cyan",
                 "loraquant at published bits"),
                ("^", lambda k: k.startswith(("RTN", "sign")), "gray", "RTN 2/3-bit, sign")):
            sel = [(k, v) for k, v in pts.items() if pick(k)]
            ax.scatter([v[0] for _, v in sel], [v[1] for _, v in sel], marker=marker, s=60,
                       color=color, label=label, zorder=3)
            for k, (x, y) in sel:
                if not k.startswith("loraquant ="):
                    ax.annotate(k.replace("published ", "").replace(" +SGD", ""), (x, y),
                                textcoords="offset points", xytext=(5, 4), fontsize=8)
        ax.set_yscale("log")
        ax.set_xlabel("honest bits per weight (every stored number counted)")
        ax.set_ylabel("relative error |sBA - B̂Â|_F / |sBA|_F (geo-mean)")
        ax.set_title(f"{title}: {len(results)} modules")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- main -----------------------------------------------------------------------------

def run(cases, label):
    results, t0 = {}, time.time()
    for i, case in enumerate(cases):
        t = time.time()
        results[case.name] = measure(case)
        print(f"  [{label} {i + 1}/{len(cases)}] {case.name}: {time.time() - t:.1f}s", flush=True)
    print(f"  {label}: {len(cases)} modules in {time.time() - t0:.0f}s")
    return results


def report(groups: dict) -> str:
    parts = []
    for title, results in groups.items():
        parts.append(f"## {title} ({len(results)} modules)\n")
        for name, (head, rows) in (("Error against honest bits", summary(results)),
                                   ("loraquant / published at equal honest bits", equal_bits(results)),
                                   ("Per module: error (honest bits)", per_case(results))):
            parts.append(f"### {name}\n\n{markdown(head, rows)}\n")
    return "\n".join(parts)


def ratio_table(groups: dict) -> str:
    """The READMEs' table: equal_bits() of every suite, one row per suite and setting."""
    rows = []
    for title, results in groups.items():
        rows += [[title.split(" ")[0]] + row for row in equal_bits(results)[1]]
    return markdown(["suite", "setting", "bits published", "bits loraquant", "err published+SGD",
                     "err loraquant", "ratio (geo)", "min", "max", "loraquant worse"], rows)


def write_readmes(groups: dict) -> None:
    """The tables of README.md and bench/README.md from these results (--readme)."""
    replace_block(READMES[1], "quality-synthetic", markdown(*summary(groups["synthetic"])))
    if len(groups) < 2:  # the ratio table shows both suites; half of it would mislead
        print("  README ratio table left as it was: it needs the trained adapters too")
        return
    for path in READMES:
        replace_block(path, "quality-ratios", ratio_table(groups))
    print(f"  wrote the tables of {' and '.join(map(str, READMES))}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="4 small synthetic modules")
    ap.add_argument("--out", type=Path, default=DEFAULT_CACHE / "out",
                    help="folder for quality.md, .json, .png (default: under the cache)")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                    help="e2e cache to take trained adapters from, when present")
    ap.add_argument("--no-trained", action="store_true", help="skip the e2e cache's adapters")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadiest)")
    ap.add_argument("--readme", action="store_true",
                    help="also write the tables of README.md and bench/README.md")
    ap.add_argument("--readme-from", type=Path, metavar="JSON",
                    help="only write those tables, from the quality.json of an earlier run")
    args = ap.parse_args(argv)
    if args.readme_from:
        write_readmes(json.loads(args.readme_from.read_text()))
        return
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    groups = {"synthetic": run(adapters.suite(args.quick), "synthetic")}
    trained = [] if args.no_trained else trained_cases(args.cache)
    if args.quick:
        trained = trained[:4]
    if trained:
        groups["trained (e2e cache)"] = run(trained, "trained")
    else:
        print(f"  no trained adapters under {args.cache} (run bench/e2e.py to make some)")

    text = report(groups)
    print("\n" + text)
    (args.out / "quality.md").write_text(text)
    (args.out / "quality.json").write_text(json.dumps(groups, indent=1))
    plot(groups, args.out / "quality.png")
    print(f"wrote {args.out}/quality.md, quality.json, quality.png")
    if args.readme:
        write_readmes(groups)


if __name__ == "__main__":
    main()
