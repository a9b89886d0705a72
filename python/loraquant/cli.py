"""The `loraquant` command (also `python -m loraquant`).

    loraquant compress ADAPTER_DIR OUT [--bits 2 | --rho R [--high-bits H]] [--group-size G]
                       [--calibration BASE.lqc [--damping D]]
    loraquant calibrate BASE_DIR --data FILE -o BASE.lqc [--samples N] [--seq-len L]
    loraquant batch ROOT OUT [compress options] [--calibration BASE.lqc [--damping D]]
                    [--workers N] [--ray [ADDRESS|local]]
    loraquant inspect FILE [--plot OUT.png] [--probe]
    loraquant export FILE OUT_DIR [--dtype float32] [--force]

Each subcommand is an `add_<name>(subparsers)` function that registers its parser and
its `run` function; to add one, write another and list it in SUBCOMMANDS. Errors of
the library (ValueError, FormatError, TypeError, OSError, MemoryError, a missing
optional dependency) become one line on stderr and exit status 1, never a traceback.
Output into a pipe that its reader closed (`loraquant inspect FILE | head`) ends
quietly: the command still does what does not need stdout (a --plot, the compressed
file) and exits with status 141, as a shell reports for a Unix tool stopped by SIGPIPE.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

from ._closed_pipe import EXIT_CLOSED_PIPE, tolerate_closed_stdout
from ._core import FormatError
from .adapter_file import load
from ._api import DEFAULT_DAMPING
from .peft_io import EXPORT_DTYPES, LORA_BIAS, PREFIX, compress_peft_file, export_peft

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130


# --- compress -----------------------------------------------------------------------

def add_compress(sub) -> None:
    p = sub.add_parser("compress", help="compress a PEFT LoRA adapter directory into one file",
                       description="Compress every LoRA module of a PEFT adapter directory "
                                   "under one budget and write one .lqa file.")
    p.add_argument("adapter_dir", help="PEFT directory: adapter_config.json and "
                                       "adapter_model.safetensors (or .bin)")
    p.add_argument("out", help="the compressed file to write")
    add_compress_options(p)
    add_calibration_option(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run_compress)


def add_calibration_option(p, more: str = "") -> None:
    p.add_argument("--calibration", metavar="LQC", help="statistics of the base model "
                   "(`loraquant calibrate`): minimise the error at the layers' outputs"
                   + more)
    p.add_argument("--damping", type=float, help="with --calibration: the ridge added to "
                   "the inputs' second moment H, as a share of trace(H) / n (default 0.01)")


def calibration_options(args) -> dict:
    """calibration (a path or None) and damping, checked together."""
    if args.damping is not None and not args.calibration:
        raise ValueError("--damping applies to output-aware compression: give --calibration too")
    return dict(calibration=args.calibration,
                damping=DEFAULT_DAMPING if args.damping is None else args.damping)


def add_compress_options(p) -> None:
    """The options of compress_peft, shared by compress and batch."""
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--bits", type=float, help="average bits per weight over the whole "
                      "adapter, every stored byte counted (default 2)")
    mode.add_argument("--rho", type=float, help="paper mode: the leading components holding "
                      "this share of the energy get --high-bits, the rest 1 bit")
    p.add_argument("--high-bits", type=int, help="paper mode: width of the head (default 2)")
    p.add_argument("--group-size", type=int, default=128, help="entries per quantization "
                   "group (default 128)")


def compress_options(args) -> dict:
    return dict(bits=args.bits, rho=args.rho, high_bits=args.high_bits,
                group_size=args.group_size)


def run_compress(args) -> int:
    cal = calibration_options(args)
    if cal["calibration"]:
        from .calibration import Calibration
        cal["calibration"] = Calibration.load(cal["calibration"])
    src, adapter = compress_peft_file(args.adapter_dir, args.out, progress=not args.quiet,
                                      **cal, **compress_options(args))
    print(compress_summary(src, adapter, os.path.getsize(args.out), args.out))
    return 0


def _size(nbytes: int) -> str:
    """Bytes in B, KiB, MiB or GiB."""
    i = min(int(math.log(max(nbytes, 1), 1024)), 3)
    return f"{nbytes} B" if i == 0 else f"{nbytes / 1024 ** i:.1f} {('KiB', 'MiB', 'GiB')[i - 1]}"


def error_summary(adapter) -> tuple[float, float, str]:
    """(overall relative error, worst module's, its name).

    overall = sqrt(sum_i err_i^2) / sqrt(sum_i |dW_i|_F^2), err_i the absolute
    Frobenius error of module i, |dW_i|_F from its singular values.
    """
    err2 = norm2 = 0.0
    worst, worst_name = -1.0, ""
    for name, q in adapter.items():
        if q.rel_error is None or q.singular_values is None:
            continue
        n2 = float((q.singular_values ** 2).sum())
        err2 += q.rel_error ** 2 * n2
        norm2 += n2
        if q.rel_error > worst:
            worst, worst_name = q.rel_error, name
    overall = math.sqrt(err2 / norm2) if norm2 > 0 else float("nan")
    return overall, worst, worst_name


def compress_summary(src, adapter, file_bytes: int, out: str) -> str:
    fp16 = 2 * adapter.n_weights
    overall, worst, worst_name = error_summary(adapter)
    n_bias = sum(k.endswith(LORA_BIAS) for k in adapter.extras)
    lines = [
        f"compressed {len(adapter)} LoRA modules: {src.path} -> {out}",
        f"  bits/weight  {adapter.avg_bits:.3f} on average (every stored byte counted)",
        f"  size         fp16 {_size(fp16)}, as stored ({'/'.join(src.stored_dtypes)}) "
        f"{_size(src.stored_bytes)} -> packed {_size(adapter.nbytes)} "
        f"({fp16 / adapter.nbytes:.1f}x smaller than fp16); file {_size(file_bytes)}",
        f"  extras       {len(adapter.extras)} tensors kept unchanged ({n_bias} LoRA biases, "
        f"{len(adapter.extras) - n_bias} others: modules_to_save weights, trained biases)",
        f"  rel. error   {overall:.4f} overall (|dW - dW_hat|_F / |dW|_F over all modules); "
        f"worst {worst:.4f} in {worst_name}",
    ]
    outs = [(q.out_error, name) for name, q in adapter.items() if q.out_error is not None]
    if outs:
        mean = math.sqrt(sum(e * e for e, _ in outs) / len(outs))
        worst_out, worst_out_name = max(outs)
        lines.append(f"  output err.  {mean:.4f} rms over {len(outs)} calibrated modules "
                     f"(|(dW - dW_hat) X| / |dW X| on the calibration inputs); worst "
                     f"{worst_out:.4f} in {worst_out_name}")
    return "\n".join(lines)


# --- calibrate ----------------------------------------------------------------------

def add_calibrate(sub) -> None:
    p = sub.add_parser("calibrate", help="measure a base model's layer inputs once, for "
                       "output-aware compression of all its adapters",
                       description="Run a transformers base model on text and write the "
                                   "second moment of every linear layer's input (.lqc).")
    p.add_argument("base_dir", help="transformers model directory (or hub id), with its tokenizer")
    p.add_argument("--data", required=True, help="text, one sample a line, or .jsonl with a "
                   "\"text\" field")
    p.add_argument("-o", "--out", required=True, help="the .lqc file to write")
    p.add_argument("--samples", type=int, default=128, help="samples used (default 128)")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per sample at most "
                   "(default 512)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run_calibrate)


def read_samples(path: str, samples: int) -> list:
    """Up to `samples` non-empty texts: lines of a text file, or the "text" field of the
    lines of a .jsonl file."""
    import json
    out = []
    with open(path, encoding="utf-8") as f:
        for k, line in enumerate(f, 1):
            if len(out) >= samples:
                break
            if path.endswith(".jsonl"):
                if not line.strip():
                    continue
                try:
                    text = json.loads(line)["text"]
                except (ValueError, KeyError, TypeError):
                    raise ValueError(f"{path}:{k}: not a JSON object with a \"text\" field") from None
            else:
                text = line.rstrip("\n")
            if isinstance(text, str) and text.strip():
                out.append(text)
    if not out:
        raise ValueError(f"{path}: no non-empty sample")
    return out


def run_calibrate(args) -> int:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from .calibration import calibrate
    if args.samples < 1 or args.seq_len < 1:
        raise ValueError("--samples and --seq-len must be at least 1")
    texts = read_samples(args.data, args.samples)
    tokenizer = AutoTokenizer.from_pretrained(args.base_dir)
    model = AutoModelForCausalLM.from_pretrained(args.base_dir)
    batches = [tokenizer(t, return_tensors="pt", truncation=True,
                         max_length=args.seq_len)["input_ids"] for t in texts]
    cal = calibrate(model, batches, progress=not args.quiet, base=args.base_dir)
    cal.save(args.out)
    tokens = max(cal.tokens.values())
    print(f"calibrated {len(cal)} linear layers of {args.base_dir} on {len(texts)} samples "
          f"({tokens} tokens) -> {args.out} ({_size(os.path.getsize(args.out))})")
    return 0


# --- batch --------------------------------------------------------------------------

def add_batch(sub) -> None:
    p = sub.add_parser("batch", help="compress every PEFT adapter folder under a folder",
                       description="Compress every folder under ROOT that holds "
                                   "adapter_config.json into OUT/<its path under ROOT>.lqa. "
                                   "Outputs already made with the same options are "
                                   "skipped; a broken adapter is reported and the others "
                                   "go on; the exit status is 1 if any failed.")
    p.add_argument("root", help="the folder to search for adapters")
    p.add_argument("out", help="the folder to write the .lqa files to")
    add_compress_options(p)
    add_calibration_option(p, " (every adapter must be of that base)")
    p.add_argument("--workers", type=int, help="adapters compressed at once (default 1; "
                   "with --ray: tasks in flight, and the CPUs of a local cluster)")
    p.add_argument("--ray", nargs="?", const="auto", metavar="ADDRESS|local",
                   help="run each adapter as a Ray task: on a local cluster started for "
                        "the job ('local'), or on an existing one (an address; alone, "
                        "--ray means 'auto', the cluster this machine belongs to)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run_batch)


def run_batch(args) -> int:
    from .batch import FAILED, compress_many

    def report_failure(outcome) -> None:
        if outcome.status == FAILED:
            _write_line(f"loraquant batch: error: {outcome.name}: {outcome.error}")

    report = compress_many(args.root, args.out, workers=args.workers, ray=args.ray,
                           progress=not args.quiet, on_outcome=report_failure,
                           **calibration_options(args), **compress_options(args))
    print(batch_summary(report, args.root, args.out))
    return 0 if report.ok else EXIT_ERROR


def _write_line(text: str) -> None:
    """One line on stderr that does not break a progress bar."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        print(text, file=sys.stderr)
        return
    tqdm.write(text, file=sys.stderr)


def batch_summary(report, root: str, out: str) -> str:
    n = len(report.done) + len(report.skipped) + len(report.failed)
    before, after = report.bytes_before, report.bytes_after
    per = (f", {report.seconds / len(report.done):.2f} s per adapter done"
           if report.done else "")
    ratio = f" ({before / after:.1f}x smaller)" if after else ""
    lines = [
        f"batch: {n} adapters under {root} -> {out}",
        f"  done     {len(report.done)} compressed",
        f"  skipped  {len(report.skipped)} already compressed with these options",
        f"  failed   {len(report.failed)}" + (" (named above)" if report.failed else ""),
        f"  size     {_size(before)} -> {_size(after)}{ratio}: weights files of the "
        f"adapters done and skipped -> their .lqa files",
        f"  time     {report.seconds:.1f} s in all{per}",
    ]
    return "\n".join(lines)


# --- inspect ------------------------------------------------------------------------

def add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="list the modules of a compressed file",
                       description="Print a table of the modules of a compressed file.")
    p.add_argument("file")
    p.add_argument("--plot", metavar="PNG", help="also draw each module's singular values "
                   "with the width chosen per component")
    p.add_argument("--probe", action="store_true", help="print only `NAME NORM` per module: "
                   "the norm of the packed update applied to the fixed probe vector")
    p.set_defaults(run=run_inspect)


def widths_text(widths) -> str:
    """Run-length form of (b, a) width pairs: [(3,3), (2,2), (2,2), (2,1), (0,0)] ->
    "3 2x2 2/1 0" (b/a where the two factors differ)."""
    runs = []
    for b, a in widths:
        w = f"{b}" if b == a else f"{b}/{a}"
        if runs and runs[-1][0] == w:
            runs[-1][1] += 1
        else:
            runs.append([w, 1])
    return " ".join(f"{w}x{k}" if k > 1 else f"{w}" for w, k in runs)


def inspect_table(adapter, path: str) -> str:
    rows = [(name[len(PREFIX):] if name.startswith(PREFIX) else name,
             f"{q.shape[0]}x{q.shape[1]}", str(q.rank), widths_text(q.widths),
             f"{q.avg_bits:.3f}", str(q.nbytes)) for name, q in adapter.items()]
    head = ("module", "m x n", "rank", "widths", "bits", "bytes")
    size = [max(len(c) for c in col) for col in zip(head, *rows)]

    def fmt(row):  # text columns (module, widths) left, numbers right
        return "  ".join(c.ljust(s) if i in (0, 3) else c.rjust(s)
                         for i, (c, s) in enumerate(zip(row, size))).rstrip()

    lines = [f"{path}: {len(adapter)} modules, {adapter.avg_bits:.3f} bits/weight, "
             f"{_size(adapter.nbytes)} packed, {len(adapter.extras)} extras "
             f"(names below drop '{PREFIX}')", fmt(head)]
    lines += [fmt(r) for r in rows]
    lines.append("widths: bits per SVD component, strongest first; 2x3 = three "
                 "components at 2 bits, 3/2 = b at 3 bits and a at 2, 0 = dropped")
    return "\n".join(lines)


def run_inspect(args) -> int:
    adapter = load(args.file)
    if args.probe:
        for name, q in adapter.items():
            print(f"{name} {q.core.probe_norm():.8g}")
        return 0
    print(inspect_table(adapter, args.file))
    if args.plot:
        from .spectrum_plot import plot_spectra

        plot_spectra(adapter, args.plot, title=os.path.basename(args.file))
        print(f"wrote {args.plot}")
    return 0


# --- export -------------------------------------------------------------------------

def add_export(sub) -> None:
    p = sub.add_parser("export", help="write a dequantized standard PEFT adapter directory",
                       description="Write a PEFT LoRA directory (adapter_config.json, "
                                   "adapter_model.safetensors) with the dequantized weights.")
    p.add_argument("file")
    p.add_argument("out_dir")
    p.add_argument("--dtype", choices=EXPORT_DTYPES, default="float32")
    p.add_argument("--force", action="store_true", help="replace adapter files in OUT_DIR")
    p.set_defaults(run=run_export)


def run_export(args) -> int:
    adapter = load(args.file)
    out = export_peft(adapter, args.out_dir, dtype=args.dtype, overwrite=args.force)
    print(f"wrote {out}: {len(adapter)} LoRA modules as {args.dtype}")
    return 0


# --- entry point --------------------------------------------------------------------

def add_demo(sub) -> None:
    from . import demo
    p = sub.add_parser("demo", help="compress a small synthetic adapter and report bits, "
                       "size and error", description=demo.__doc__.splitlines()[0])
    demo.add_arguments(p)
    p.set_defaults(run=demo.run_args)


SUBCOMMANDS = (add_compress, add_calibrate, add_batch, add_inspect, add_export, add_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loraquant", description="Compress LoRA adapters to about 2 bits per weight "
                                      "and serve them from the packed form.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def main(argv=None) -> int:
    with tolerate_closed_stdout() as stdout:
        status = _main(argv)
    return EXIT_CLOSED_PIPE if stdout.reader_gone and status == 0 else status


def _main(argv) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (FormatError, ValueError, TypeError, OSError) as e:
        print(f"loraquant {args.command}: error: {_one_line(e)}", file=sys.stderr)
    except MemoryError as e:  # a file may declare an update too large to decode here
        print(f"loraquant {args.command}: error: out of memory ({_one_line(e)})",
              file=sys.stderr)
    except ImportError as e:
        hint = "" if "pip install" in str(e) else "; install loraquant[hf]"
        print(f"loraquant {args.command}: error: a dependency is missing ({_one_line(e)})"
              f"{hint}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"loraquant {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_ERROR
