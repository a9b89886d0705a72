"""Serve compressed adapters inside transformers models, from the packed form.

    model = AutoModelForCausalLM.from_pretrained(base)     # the model PEFT would wrap
    loraquant.load_adapter(model, "adapter.lqa")           # every LoRA layer now packed

    peft_model = PeftModel.from_pretrained(base_model, adapter_dir)
    loraquant.quantize_peft_model(peft_model, bits=2)       # the same, in place

Each adapted nn.Linear or transformers Conv1D is replaced by a PackedLoRALayer that
computes base(x) + x @ dW_hat^T (+ scaling * lora bias), dW_hat decoded on the fly
from the packed codes. Inference only: no gradient flows into the adapter, and LoRA
dropout is not applied. Supported versions: transformers >=5.16.1,<5.25 and
peft >=0.21,<0.22 (the `hf` extra's range; CI tests both ends of it).
"""
from __future__ import annotations

import torch
from torch import nn

from . import _core
from ._api import QuantizedLoRA, compress_adapter
from .adapter_file import CompressedAdapter, load
from .peft_io import LORA_BIAS, PREFIX, check_lora_config


def packed_delta(q: QuantizedLoRA, x: torch.Tensor) -> torch.Tensor:
    """x @ dW_hat^T from the packed codes, in x's dtype and on x's device.

    This is the one place that picks a kernel by device: the CPU kernel
    (QuantizedLoRA.apply) on the CPU, the CUDA kernels (cuda_ops.apply) on a GPU where
    this build has them (`_core.build_info()["cuda"]`).
    """
    if x.device.type == "cpu":
        return q.apply(x)
    if x.device.type == "cuda" and _core.build_info()["cuda"]:
        from . import cuda_ops
        return cuda_ops.apply(q, x)
    raise NotImplementedError(
        f"packed LoRA on {x.device} is not available: this build has the CPU kernel "
        f"and cuda={bool(_core.build_info()['cuda'])}. Keep the model "
        f"on the CPU, or serve a dequantized copy made with `loraquant export`.")


class PackedLoRALayer(nn.Module):
    """base_layer(x) + x @ dW_hat^T + scaling * lora_bias, dW_hat read from `q`.

    `q` is held as a plain attribute (its packed bytes live in the C++ module, not
    in torch buffers), so .to(device) moves only the base layer and the bias.
    `weight` and `bias` are the base layer's, as code that inspects layers expects.
    """

    def __init__(self, base_layer: nn.Module, q: QuantizedLoRA, *, name: str = "",
                 scaling: float = 1.0, lora_bias: torch.Tensor | None = None):
        super().__init__()
        self.base_layer = base_layer
        self.q = q
        self.name = name
        self.scaling = float(scaling)
        if lora_bias is not None:
            ref = base_layer.weight
            lora_bias = (lora_bias.detach().float() * self.scaling).to(ref.device, ref.dtype)
        self.register_buffer("lora_bias", lora_bias, persistent=False)

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self):
        return self.base_layer.bias

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        delta = packed_delta(self.q, x)
        if self.lora_bias is not None:
            delta = delta + self.lora_bias.to(delta.dtype)
        return (result + delta).to(result.dtype)

    def extra_repr(self) -> str:
        m, n = self.q.shape
        return (f"name={self.name!r}, m={m}, n={n}, rank={self.q.rank}, "
                f"avg_bits={self.q.avg_bits:.3f}, scaling={self.scaling:g}")


def _in_out(module: nn.Module):
    """(n, m) = (in, out) features of a Linear or Conv1D; None for other layers."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:
        return None
    if isinstance(module, Conv1D):
        return module.weight.shape[0], module.weight.shape[1]  # weight is (in, out)
    return None


def _model_path(name: str) -> str:
    return name[len(PREFIX):] if name.startswith(PREFIX) else name


def _find_layer(model: nn.Module, name: str, q: QuantizedLoRA):
    """(parent, attribute, layer) of the target of module `name`, checked against q."""
    path = _model_path(name)
    try:
        layer = model.get_submodule(path)
    except AttributeError:
        hint = (" (this is a PeftModel: use quantize_peft_model, or pass the base model)"
                if type(model).__name__.startswith("Peft") else "")
        raise ValueError(f"module {name!r}: the model has no submodule {path!r}; "
                         f"load_adapter expects the base model the adapter was trained "
                         f"on{hint}") from None
    if isinstance(layer, PackedLoRALayer):
        raise ValueError(f"module {name!r}: {path!r} already carries a loraquant adapter")
    features = _in_out(layer)
    if features is None:
        raise ValueError(f"module {name!r}: {path!r} is a {type(layer).__name__}; only "
                         f"nn.Linear and transformers' Conv1D layers can take a LoRA")
    n, m = features
    if (m, n) != q.shape:
        raise ValueError(f"module {name!r}: the adapter's update is {q.shape} (out, in) but "
                         f"{path!r} maps {n} -> {m} features")
    parent_path, _, attr = path.rpartition(".")
    return model.get_submodule(parent_path), attr, layer


def _find_parameter(model: nn.Module, key: str, value: torch.Tensor):
    """(owner module, attribute, parameter) that an extra tensor replaces."""
    path = _model_path(key)
    owner_path, _, attr = path.rpartition(".")
    try:
        owner = model.get_submodule(owner_path)
        param = getattr(owner, attr)
    except AttributeError:
        param = None
    if not isinstance(param, torch.Tensor):
        raise ValueError(f"extra {key!r}: the model has no parameter {path!r}")
    if tuple(param.shape) != tuple(value.shape):
        raise ValueError(f"extra {key!r} is {tuple(value.shape)} but the model's {path!r} "
                         f"is {tuple(param.shape)}")
    return owner, attr, param


def load_adapter(model: nn.Module, adapter) -> nn.Module:
    """Attach a compressed adapter (a CompressedAdapter or a file path) to `model`, a
    plain transformers model (the base model PEFT would wrap); returns the model.

    Every module's target layer (its name without PEFT's "base_model.model." prefix)
    is replaced by a PackedLoRALayer. Extras are applied as PEFT would: LoRA biases
    (lora_B.bias) are added, scaled, after the update; any other extra (a
    modules_to_save weight, a trained bias) replaces the model's parameter of that
    name with a new one, so weights tied to it elsewhere keep their old value. All
    checks run before the model is changed, so a failure leaves it as it was.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(adapter, CompressedAdapter):
        adapter = load(adapter)
    layers = {name: _find_layer(model, name, q) for name, q in adapter.items()}
    biases, params = {}, []
    for key, value in adapter.extras.items():
        if key.endswith(LORA_BIAS) and key[:-len(LORA_BIAS)] in adapter:
            biases[key[:-len(LORA_BIAS)]] = value
        else:
            params.append((_find_parameter(model, key, value), value))

    for (owner, attr, old), value in params:
        new = value.detach().to(device=old.device, dtype=old.dtype).clone()
        setattr(owner, attr, nn.Parameter(new, requires_grad=False))
    for name, (parent, attr, layer) in layers.items():
        setattr(parent, attr, PackedLoRALayer(layer, adapter[name], name=name,
                                              scaling=adapter.scalings[name],
                                              lora_bias=biases.get(name)))
    return model


def quantize_peft_model(peft_model, *, bits=None, rho=None, high_bits=None, group_size=128,
                        progress=False):
    """Compress the LoRA layers of a loaded PeftModel under one budget, in place, and
    return it. Options as loraquant.compress_adapter.

    Each LoRA layer is replaced by a PackedLoRALayer around its base layer, so the
    model then runs from the packed form; modules_to_save wrappers stay as they are.
    The model must hold exactly one adapter, unmerged, of plain LoRA on Linear or
    Conv1D layers. PEFT's merge/unload/disable_adapter no longer reach the replaced
    layers.
    """
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    if not isinstance(peft_model, PeftModel):
        raise TypeError(f"expected a peft.PeftModel, got {type(peft_model).__name__}")
    if len(peft_model.peft_config) != 1:
        raise ValueError(f"the model holds adapters {sorted(peft_model.peft_config)}; "
                         f"quantize_peft_model converts a model with exactly one")
    (adapter_name, config), = peft_model.peft_config.items()
    check_lora_config(config.to_dict())
    root = peft_model.base_model.model
    pairs, found = {}, {}
    for path, layer in root.named_modules():
        if not isinstance(layer, LoraLayer) or adapter_name not in layer.lora_A:
            continue
        name = PREFIX + path
        lora_a, lora_b = layer.lora_A[adapter_name], layer.lora_B[adapter_name]
        if not isinstance(lora_a, nn.Linear) or adapter_name in layer.lora_variant:
            raise ValueError(f"module {name!r}: {type(layer).__name__} is not plain LoRA on "
                             f"a Linear or Conv1D layer")
        if layer.merged:
            raise ValueError(f"module {name!r}: the adapter is merged; unmerge it first")
        scaling = layer.scaling[adapter_name]
        pairs[name] = (lora_a.weight, lora_b.weight, scaling)
        found[name] = (path, layer, lora_b.bias if layer.lora_bias.get(adapter_name) else None)
    if not pairs:
        raise ValueError("the model has no LoRA layers to compress")

    modules = compress_adapter(pairs, bits=bits, rho=rho, high_bits=high_bits,
                               group_size=group_size, progress=progress)
    for name, (path, layer, bias) in found.items():
        parent_path, _, attr = path.rpartition(".")
        setattr(root.get_submodule(parent_path), attr,
                PackedLoRALayer(layer.get_base_layer(), modules[name], name=name,
                                scaling=pairs[name][2], lora_bias=bias))
    return peft_model
