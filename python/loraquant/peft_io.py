"""PEFT adapter directories in and out: read one, compress it, export a dequantized one.

A PEFT LoRA directory holds adapter_config.json and adapter_model.safetensors (or, in
older ones, adapter_model.bin). Its state dict stores, per adapted module,
"base_model.model.<path>.lora_A.weight" (r, n) and "...lora_B.weight" (m, r); the
update is scaling * B @ A with scaling = lora_alpha / r (lora_alpha / sqrt(r) with
use_rslora), r and lora_alpha resolved per module through rank_pattern/alpha_pattern.

GPT-2's Conv1D layers (fan_in_fan_out=True): PEFT builds lora_A and lora_B as plain
nn.Linear layers there too, so the pair keeps the (r, n)/(m, r) convention and only
the base weight is stored transposed. The flag is therefore not used: every pair is
checked from its tensors (lora_A rows = lora_B columns = the configured r), and
load_adapter later checks n and m against the target layer, read by its type.
"""
from __future__ import annotations

import errno
import json
import math
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

from ._api import DEFAULT_DAMPING, compress_adapter, default_refit, resolve_options
from .adapter_file import CompressedAdapter, load, save

PREFIX = "base_model.model."
CONFIG_FILE = "adapter_config.json"
SAFETENSORS_FILE = "adapter_model.safetensors"
BIN_FILE = "adapter_model.bin"
LORA_A, LORA_B, LORA_BIAS = ".lora_A.weight", ".lora_B.weight", ".lora_B.bias"

#: LoraConfig fields that switch on a LoRA variant (PEFT 0.21 tags them
#: is_lora_variant), plus QA-LoRA, whose lora_A reads pooled inputs.
UNSUPPORTED_VARIANTS = {
    "use_dora": "DoRA", "velora_config": "VeLoRA", "alora_invocation_tokens": "aLoRA",
    "monteclora_config": "MonteCLoRA", "use_bdlora": "BD-LoRA", "arrow_config": "Arrow",
    "kasa_config": "KaSA", "use_qalora": "QA-LoRA",
}
#: init_lora_weights values that select a variant rather than an initialisation
UNSUPPORTED_INIT_VARIANTS = ("mica",)
EXPORT_DTYPES = ("float32", "float16", "bfloat16")


@dataclass
class PeftSource:
    """A PEFT LoRA adapter as read from its directory.

    pairs    module name -> (lora_A (r, n), lora_B (m, r), scaling), natural order
    extras   every other tensor, unchanged (LoRA biases, modules_to_save weights ...)
    """
    path: Path
    weights_file: Path
    config: dict
    pairs: dict
    extras: dict

    @property
    def stored_bytes(self) -> int:
        """Bytes of the LoRA pairs as the source stores them."""
        return sum(a.numel() * a.element_size() + b.numel() * b.element_size()
                   for a, b, _ in self.pairs.values())

    @property
    def stored_dtypes(self) -> list[str]:
        return sorted({str(t.dtype).replace("torch.", "")
                       for a, b, _ in self.pairs.values() for t in (a, b)})


def check_lora_config(config: dict) -> None:
    """Refuse what loraquant cannot compress faithfully, with a message that says why."""
    peft_type = config.get("peft_type")
    peft_type = getattr(peft_type, "value", peft_type)  # PEFT's PeftType enum, or its name
    if peft_type != "LORA":
        raise ValueError(f"peft_type is {peft_type!r}: loraquant compresses LoRA adapters "
                         f"only (peft_type 'LORA')")
    for key, variant in UNSUPPORTED_VARIANTS.items():
        if config.get(key):
            raise ValueError(f"this adapter uses {variant} ({key}={config[key]!r}); loraquant "
                             f"supports plain LoRA only")
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init in UNSUPPORTED_INIT_VARIANTS:
        raise ValueError(f"init_lora_weights={init!r} selects a LoRA variant; loraquant "
                         f"supports plain LoRA only")
    if config.get("target_parameters"):
        raise ValueError("this adapter targets parameters (target_parameters); loraquant "
                         "supports LoRA on Linear and Conv1D modules only")


def pattern_value(patterns, module_path: str, default):
    """PEFT's rule for rank_pattern/alpha_pattern: the first key K (in order) for which
    the regex "(.*\\.)?(K)$" matches the module path from its start wins."""
    for key, value in (patterns or {}).items():
        try:
            if re.match(rf"(.*\.)?({key})$", module_path):
                return value
        except re.error as e:
            raise ValueError(f"pattern {key!r} in adapter_config.json is not a valid "
                             f"regular expression: {e}") from None
    return default


def module_scaling(config: dict, name: str) -> tuple[int, float]:
    """(r, scaling) of module `name` (a state-dict name) under `config`."""
    path = name[len(PREFIX):] if name.startswith(PREFIX) else name
    r = pattern_value(config.get("rank_pattern"), path, config.get("r", 8))
    alpha = pattern_value(config.get("alpha_pattern"), path, config.get("lora_alpha", 8))
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"module {name!r}: r must be a positive integer, got {r!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise ValueError(f"module {name!r}: lora_alpha must be a finite number, got {alpha!r}")
    return r, alpha / (math.sqrt(r) if config.get("use_rslora") else r)


def read_config(directory: Path) -> dict:
    cfg = directory / CONFIG_FILE
    if not directory.is_dir():
        raise FileNotFoundError(errno.ENOENT, "no such adapter directory", str(directory))
    if not cfg.is_file():
        raise ValueError(f"{directory}: no {CONFIG_FILE}; is this a PEFT adapter directory?")
    try:
        config = json.loads(cfg.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{cfg}: not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{cfg}: must hold a JSON object, got {type(config).__name__}")
    return config


def read_state_dict(directory: Path) -> tuple[Path, dict]:
    """The adapter's tensors: adapter_model.safetensors, else the legacy .bin (read
    with torch.load(weights_only=True), so no code in it runs)."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    st_path, bin_path = directory / SAFETENSORS_FILE, directory / BIN_FILE
    if st_path.is_file():
        try:
            return st_path, load_file(st_path)
        except SafetensorError as e:
            raise ValueError(f"{st_path}: cannot read: {e}") from None
    if bin_path.is_file():
        try:
            sd = torch.load(bin_path, map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, pickle.UnpicklingError) as e:
            raise ValueError(f"{bin_path}: cannot read as a weights-only torch file: {e}") from None
        if not isinstance(sd, dict) or not all(
                isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
            raise ValueError(f"{bin_path}: expected a dict of name -> tensor")
        return bin_path, sd
    raise ValueError(f"{directory}: neither {SAFETENSORS_FILE} nor {BIN_FILE} found")


def _natural_key(name: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def split_state_dict(sd: dict) -> tuple[dict, dict, dict]:
    """(lora_A by module, lora_B by module, extras) of a PEFT LoRA state dict."""
    a, b, extras = {}, {}, {}
    for key, t in sd.items():
        if key.endswith(LORA_A):
            a[key[:-len(LORA_A)]] = t
        elif key.endswith(LORA_B):
            b[key[:-len(LORA_B)]] = t
        elif key.endswith(LORA_BIAS) or not any(
                p.startswith("lora_") or p.startswith("trainable_tokens") for p in key.split(".")):
            extras[key] = t
        else:
            raise ValueError(f"tensor {key!r} is not supported: loraquant compresses LoRA on "
                             f"Linear and Conv1D layers (lora_A/lora_B), not embeddings, "
                             f"DoRA magnitudes or trainable tokens")
    for name in sorted(set(a) ^ set(b)):
        which = "lora_B" if name in a else "lora_A"
        raise ValueError(f"module {name!r} has no {which}.weight")
    for key in extras:
        if key.endswith(LORA_BIAS) and key[:-len(LORA_BIAS)] not in a:
            raise ValueError(f"LoRA bias {key!r} belongs to no LoRA module")
    return a, b, extras


def read_peft_dir(path) -> PeftSource:
    """Read and check a PEFT LoRA adapter directory (see the module docstring)."""
    directory = Path(path)
    config = read_config(directory)
    check_lora_config(config)
    weights_file, sd = read_state_dict(directory)
    a, b, extras = split_state_dict(sd)
    if not a:
        raise ValueError(f"{weights_file}: no lora_A/lora_B weights found")
    pairs = {}
    for name in sorted(a, key=_natural_key):
        r, s = module_scaling(config, name)
        A, B = a[name], b[name]
        if A.ndim != 2 or B.ndim != 2:
            raise ValueError(f"module {name!r}: lora_A is {tuple(A.shape)} and lora_B is "
                             f"{tuple(B.shape)}; only 2-D (Linear, Conv1D) LoRA is supported")
        if A.shape[0] != r or B.shape[1] != r:
            hint = ("; it looks transposed: PEFT stores lora_A as (r, in) and lora_B as "
                    "(out, r) for Linear and Conv1D alike"
                    if A.shape[1] == r and B.shape[0] == r else "")
            raise ValueError(f"module {name!r}: lora_A is {tuple(A.shape)} and lora_B is "
                             f"{tuple(B.shape)}, which do not chain as (r, n) and (m, r) with "
                             f"r = {r} from {CONFIG_FILE}{hint}")
        pairs[name] = (A, B, s)
    return PeftSource(directory, weights_file, config, pairs, extras)


def compress_peft(source, *, bits=None, rho=None, high_bits=None, group_size=128,
                  progress=False, threads=None, calibration=None, damping=DEFAULT_DAMPING,
                  refit_rounds=None) -> CompressedAdapter:
    """Compress a PEFT LoRA adapter directory (or a PeftSource) under one budget.

    Options as loraquant.compress_adapter (calibration: a loraquant.Calibration of the
    base model, for output-aware compression, with its damping). The result keeps the
    adapter config, the per-module scalings, every non-LoRA tensor (as extras) and the
    options (recorded in the file by save; a damping other than the default is recorded
    with a calibration).
    """
    options = resolve_options(bits=bits, rho=rho, high_bits=high_bits, group_size=group_size,
                              refit_rounds=default_refit(refit_rounds, calibration, rho))
    src = source if isinstance(source, PeftSource) else read_peft_dir(source)
    modules = compress_adapter(src.pairs, bits=bits, rho=rho, high_bits=high_bits,
                               group_size=group_size, progress=progress, threads=threads,
                               calibration=calibration, damping=damping,
                               refit_rounds=options.refit_rounds)
    return CompressedAdapter(modules, peft_config=src.config, extras=src.extras,
                             scalings={name: s for name, (_, _, s) in src.pairs.items()},
                             options=_record(options, calibration, damping))


def _record(options, calibration, damping=DEFAULT_DAMPING) -> dict:
    """The options a file records; a calibrated compression also names its base, and
    its damping when that is not the default."""
    rec = options.record()
    if calibration is not None:
        rec["calibration"] = calibration.base or "unnamed base"
        if damping != DEFAULT_DAMPING:
            rec["damping"] = float(damping)
    return rec


def compress_peft_file(adapter_dir, out, *, progress=False, threads=None,
                       **options) -> tuple[PeftSource, CompressedAdapter]:
    """Read the PEFT directory `adapter_dir`, compress it (options as compress_peft)
    and save it to `out` atomically: what `loraquant compress` and each adapter of
    `loraquant batch` do. Returns the source and the compressed adapter."""
    src = read_peft_dir(adapter_dir)
    adapter = compress_peft(src, progress=progress, threads=threads, **options)
    save(out, adapter)
    return src, adapter


def export_peft(adapter, out_dir, *, dtype="float32", overwrite=False) -> Path:
    """Write `adapter` (a CompressedAdapter or a path to one) as a standard PEFT LoRA
    directory with the dequantized weights, and return its path.

    Every module gets the same rank R (the most components any module kept; dropped
    components are zero) by zero padding; the scaling is already folded into the
    factors, so lora_alpha = r = R (scaling 1), use_rslora is False and there are no
    rank/alpha patterns. target_modules lists the modules' last names. LoRA biases are
    multiplied by their module's scaling; other extras are written unchanged.

    The result is what PeftModel.from_pretrained loads as is, and what vLLM's LoRA
    loader expects: adapter_config.json with r, lora_alpha and target_modules, and
    adapter_model.safetensors with keys "base_model.model.<path>.lora_A.weight" and
    "...lora_B.weight". (vLLM itself may refuse modules_to_save and LoRA biases.)
    """
    import torch
    from safetensors.torch import save_file

    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(EXPORT_DTYPES)}, got {dtype!r}")
    if not isinstance(adapter, CompressedAdapter):
        adapter = load(adapter)
    out = Path(out_dir)
    existing = [f for f in (CONFIG_FILE, SAFETENSORS_FILE, BIN_FILE) if (out / f).exists()]
    if existing and not overwrite:
        raise FileExistsError(errno.EEXIST, f"already holds {', '.join(existing)} "
                              f"(pass overwrite=True / --force to replace)", str(out))
    rank = max(1, max(sum(w[0] > 0 for w in q.widths) for q in adapter.values()))
    tensors = {}
    for name, q in adapter.items():
        keep = [i for i, w in enumerate(q.widths) if w[0] > 0]
        a_hat, b_hat = q.dequantize()
        a = torch.zeros(rank, q.shape[1])
        b = torch.zeros(q.shape[0], rank)
        a[:len(keep)] = a_hat[keep]
        b[:, :len(keep)] = b_hat[:, keep]
        key = name if name.startswith(PREFIX) else PREFIX + name
        tensors[key + LORA_A] = a.to(getattr(torch, dtype)).contiguous()
        tensors[key + LORA_B] = b.to(getattr(torch, dtype)).contiguous()
    for key, t in adapter.extras.items():
        if key.endswith(LORA_BIAS):
            module = key[:-len(LORA_BIAS)]
            t = (t.float() * adapter.scalings[module]).to(t.dtype)
        tensors[key] = t.contiguous()
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / SAFETENSORS_FILE), metadata={"format": "pt"})
    config = export_config(adapter, rank)
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n",
                                   encoding="utf-8")
    return out


def export_config(adapter: CompressedAdapter, rank: int) -> dict:
    """The source config with everything that shaped the scaling made uniform."""
    config = dict(adapter.peft_config)
    short = sorted({name.rsplit(".", 1)[-1] for name in adapter})
    config.update(peft_type="LORA", r=rank, lora_alpha=rank, use_rslora=False,
                  rank_pattern={}, alpha_pattern={}, target_modules=short,
                  init_lora_weights=True, inference_mode=True,
                  lora_bias=any(k.endswith(LORA_BIAS) for k in adapter.extras))
    return config
