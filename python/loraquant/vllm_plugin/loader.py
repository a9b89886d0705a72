"""Turn a .lqa file into a vLLM LoRAModel whose layers stay packed.

vLLM loads a LoRA adapter from a PEFT directory into a LoRAModel of dense
LoRALayerWeights. A loraquant file becomes a PackedLoRAModel instead: its `loras` dict
is empty (so vLLM's own code finds nothing dense to copy), and `packed` maps each vLLM
LoRA layer (for example "model.layers.0.self_attn.qkv_proj") to one QuantizedLoRA per
output slice of that layer (None where the adapter leaves a slice alone). The
QuantizedLoRA objects hold the packed bytes; nothing is dequantized.

Everything that can be wrong with a file is checked here, before vLLM sees the model,
and raised as a ValueError whose text is loraquant's one-line message.
"""
from __future__ import annotations

import os

from vllm.lora.lora_model import LoRAModel
from vllm.lora.utils import parse_fine_tuned_lora_name

from .. import adapter_file
from ..peft_io import LORA_BIAS

#: vLLM layer types whose forward pass the plugin serves packed (class names, so that
#: this module imports without touching vLLM's layer package).
LINEAR_LAYERS = ("BaseLinearLayerWithLoRA",)


PACKED_ONLY_ENV = "LORAQUANT_VLLM_PACKED_ONLY"


def packed_only() -> bool:
    """LORAQUANT_VLLM_PACKED_ONLY=1: no dense LoRA slots, .lqa files only."""
    return os.environ.get(PACKED_ONLY_ENV, "0").strip().lower() in ("1", "true", "yes")


class LoraquantLoadError(ValueError):
    """A .lqa file that cannot be served by this model; the message says why."""


def is_packed_path(path) -> bool:
    """A loraquant file is a regular file; vLLM's own adapters are directories."""
    return isinstance(path, str) and os.path.isfile(os.path.expanduser(path))


def not_packed_error(path) -> LoraquantLoadError:
    return LoraquantLoadError(
        f"loraquant: {path} is not a .lqa file, and this engine serves packed adapters "
        f"only ({PACKED_ONLY_ENV}=1): compress it with `loraquant compress`")


def read_adapter(path: str):
    """loraquant.load with the file named in every error."""
    try:
        return adapter_file.load(os.path.expanduser(path))
    except (ValueError, OSError) as e:
        text = str(e) if path in str(e) else f"{path}: {e}"
        raise LoraquantLoadError(f"loraquant: cannot serve {text}") from None


class PackedLoRAModel(LoRAModel):
    """A LoRAModel whose weights stay in loraquant's packed form.

    packed   vLLM layer name -> tuple of QuantizedLoRA | None, one per output slice
    nbytes   packed bytes of every module (what the adapter costs while resident)
    """

    def __init__(self, lora_model_id: int, rank: int, loras=None, *args, packed=None,
                 nbytes: int = 0, **kwargs):
        super().__init__(lora_model_id, rank, {} if loras is None else loras, *args, **kwargs)
        self.packed = {} if packed is None else dict(packed)
        self.nbytes = int(nbytes)

    def clone(self, lora_model_id: int) -> "PackedLoRAModel":
        return PackedLoRAModel(lora_model_id, self.rank, packed=self.packed, nbytes=self.nbytes)


def is_linear_lora_layer(layer) -> bool:
    return any(c.__name__ in LINEAR_LAYERS for c in type(layer).__mro__)


def _vllm_name(peft_name: str, mapper) -> str:
    module, _ = parse_fine_tuned_lora_name(peft_name + ".lora_A.weight", mapper)
    return module


def layer_slices(manager, layer_name: str) -> list[str]:
    """The adapter-side module names of a vLLM layer's output slices, in order."""
    subs = manager.packed_modules.get(layer_name)
    if subs:
        return list(subs)
    return [layer_name]


def unsupported_engine(manager) -> str | None:
    """What in this engine's set-up the packed path does not cover, or None."""
    import vllm.envs as envs
    tp = getattr(next(iter(manager.modules.values()), None), "tp_size", 1)
    if tp != 1:
        return f"tensor_parallel_size {tp} (it runs with 1)"
    if manager.lora_config.fully_sharded_loras:
        return "fully_sharded_loras"
    if envs.VLLM_LORA_ENABLE_DUAL_STREAM:
        return "VLLM_LORA_ENABLE_DUAL_STREAM=1"
    return None


def build_packed_model(manager, lora_request, expected_modules: set[str]) -> PackedLoRAModel:
    """Read `lora_request.lora_path` and place each module on its vLLM layer slice."""
    path = lora_request.lora_path
    adapter = read_adapter(path)
    where = f"loraquant: cannot serve {path}"
    extras = sorted(adapter.extras)
    if extras:
        biases = [k for k in extras if k.endswith(LORA_BIAS)]
        raise LoraquantLoadError(
            f"{where}: it keeps {len(extras)} tensors unchanged ({extras[0]!r}, ...): "
            f"{'LoRA biases' if biases else 'modules_to_save weights'} are not served by "
            f"vLLM's LoRA layers; serve the exported directory instead")
    unsupported = unsupported_engine(manager)
    if unsupported:
        raise LoraquantLoadError(f"{where}: packed serving does not cover {unsupported}; "
                                 f"serve a dequantized copy made with `loraquant export`")
    mapper = getattr(manager.model, "hf_to_vllm_mapper", None)
    if mapper is not None:
        mapper = mapper.get_rename_mapper()
    by_vllm = {}
    for peft_name, q in adapter.items():
        name = _vllm_name(peft_name, mapper)
        if name.rpartition(".")[2] not in expected_modules:
            raise LoraquantLoadError(
                f"{where}: module {peft_name!r} targets {name.rpartition('.')[2]!r}, which "
                f"this model does not support for LoRA (supported: {sorted(expected_modules)})")
        by_vllm[name] = (peft_name, q)

    packed, used = {}, set()
    for layer_name, layer in manager.modules.items():
        subs = layer_slices(manager, layer_name)
        found = [by_vllm.get(s) for s in subs]
        if not any(found):
            continue
        if not is_linear_lora_layer(layer):
            raise LoraquantLoadError(
                f"{where}: {layer_name!r} is a {type(layer).__name__}; packed serving covers "
                f"linear layers only")
        if len(subs) != layer.n_slices:
            raise LoraquantLoadError(
                f"{where}: {layer_name!r} has {layer.n_slices} output slices but the model "
                f"packs {len(subs)} modules into it ({subs})")
        slices = []
        for s, hit in enumerate(found):
            if hit is None:
                slices.append(None)
                continue
            peft_name, q = hit
            want = (int(layer.output_slices[s]), int(layer.input_size))
            if tuple(q.shape) != want:
                raise LoraquantLoadError(
                    f"{where}: module {peft_name!r} is an update of shape {tuple(q.shape)} "
                    f"(out, in) but the base model's {subs[s]!r} maps {want[1]} -> {want[0]} "
                    f"features: is this adapter for another base model?")
            slices.append(q)
            used.add(subs[s])
        packed[layer_name] = tuple(slices)
    missing = sorted(set(by_vllm) - used)
    if missing:
        raise LoraquantLoadError(
            f"{where}: module {by_vllm[missing[0]][0]!r} has no LoRA layer in this engine "
            f"({len(missing)} such modules; check the base model and --lora-target-modules)")
    rank = max(q.rank for q in adapter.values())
    return PackedLoRAModel(lora_request.lora_int_id, rank, packed=packed, nbytes=adapter.nbytes)
