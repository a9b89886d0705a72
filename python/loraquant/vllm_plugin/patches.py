"""Where the plugin hooks into vLLM (0.32): a few methods, each wrapped, none replaced.

1. WorkerLoRAManager._load_adapter: a file path loads as a PackedLoRAModel.
2. LoRAModelManager._create_lora_modules gives each linear LoRA layer a slot table;
   activate_adapter / _deactivate_adapter / remove_all_adapters fill and clear a
   slot's packed slices in every table; _create_merged_loras_inplace leaves packed
   adapters alone (the loader placed their slices).
3. BaseLinearLayerWithLoRA._apply_lora_to_output: the packed delta (one custom op,
   loraquant::vllm_packed_add) is added after vLLM's own dense LoRA path, which is
   skipped in packed-only mode.
4. InputProcessor._validate_lora (the front end): a bad file fails its request with
   loraquant's message before it reaches the engine.
5. LoRAModelManager._add_adapter: with LORAQUANT_VLLM_CACHE_MIB set, the cache of
   packed adapters is bounded in bytes (least recently used first out, never one in a
   slot), so the number of resident adapters grows with the compression.
6. In packed-only mode (LORAQUANT_VLLM_PACKED_ONLY=1) vLLM's dense slot tensors are
   allocated empty, warm-up uses empty packed adapters and PEFT directories are
   refused.
"""
from __future__ import annotations

import functools
import os

from .frontend import check_request_path
import torch

from .layers import PackedSlots, register_table
from .loader import (PackedLoRAModel, build_packed_model, is_linear_lora_layer,
                     is_packed_path, not_packed_error, packed_only)

CACHE_ENV = "LORAQUANT_VLLM_CACHE_MIB"


def _wrap(cls, name: str, make):
    """Replace cls.name by make(original) once (plugins load once per process, but a
    second call must not stack wrappers)."""
    original = cls.__dict__[name]
    if getattr(original, "_loraquant", False):
        return
    wrapper = make(original)
    functools.update_wrapper(wrapper, original)
    wrapper._loraquant = True
    setattr(cls, name, wrapper)


# --- 1. loading ---------------------------------------------------------------------

def _expected_modules(manager) -> set[str]:
    expected = set()
    for module in manager.supported_lora_modules:
        expected.update(manager.packed_modules_mapping.get(module, [module]))
    return expected


def _make_worker_init(original):
    def __init__(self, vllm_config, *args, **kwargs):
        original(self, vllm_config, *args, **kwargs)
        self._loraquant_eager = bool(vllm_config.model_config.enforce_eager)
    return __init__


def _make_load_adapter(original):
    def _load_adapter(self, lora_request):
        if is_packed_path(lora_request.lora_path):
            if torch.device(self.device).type == "cuda" and not self._loraquant_eager:
                raise ValueError(cuda_graphs_error(lora_request.lora_path))
            manager = self._adapter_manager
            return build_packed_model(manager, lora_request, _expected_modules(manager))
        if packed_only():
            raise not_packed_error(lora_request.lora_path)
        return original(self, lora_request)
    return _load_adapter


# --- 2. slots -----------------------------------------------------------------------

def _tables(manager) -> dict:
    """Every linear LoRA layer's slot table, made once per manager (layer name -> table)."""
    tables = getattr(manager, "_loraquant_tables", None)
    if tables is None:
        tables = {}
        for name, layer in manager.modules.items():
            if is_linear_lora_layer(layer):
                layer._loraquant = PackedSlots(manager.lora_slots, layer.output_slices)
                layer._loraquant_key = register_table(layer._loraquant)
                layer._loraquant_dense = not packed_only()   # read once, not per step
                tables[name] = layer._loraquant
        manager._loraquant_tables = tables
    return tables


def _make_create_modules(original):
    def _create_lora_modules(self):
        original(self)
        _tables(self)      # before the first forward pass, which vLLM may trace
    return _create_lora_modules


def _make_activate(original):
    def activate_adapter(self, lora_id):
        result = original(self, lora_id)
        if not result:
            return result
        index = self.lora_index_to_id.index(lora_id)
        model = self._registered_adapters[lora_id]
        packed = model.packed if isinstance(model, PackedLoRAModel) else {}
        tables = _tables(self)
        for name, table in tables.items():
            table.set(index, packed.get(name))
        stray = sorted(set(packed) - set(tables))
        if stray:
            raise ValueError(f"loraquant: layer {stray[0]!r} cannot take a packed adapter")
        return result
    return activate_adapter


def _make_deactivate(original):
    def _deactivate_adapter(self, lora_id):
        index = (self.lora_index_to_id.index(lora_id)
                 if lora_id in self.lora_index_to_id else None)
        original(self, lora_id)
        if index is not None:       # let go of the packed modules with the slot
            for table in _tables(self).values():
                table.set(index, None)
    return _deactivate_adapter


def _make_merge(original):
    def _create_merged_loras_inplace(self, lora_model):
        if isinstance(lora_model, PackedLoRAModel):
            return None     # slices were placed by the loader; nothing dense to merge
        return original(self, lora_model)
    return _create_merged_loras_inplace


def cache_budget_bytes() -> int | None:
    """LORAQUANT_VLLM_CACHE_MIB: the packed bytes the adapter cache may hold (None: no
    byte bound; vLLM's max_cpu_loras still bounds the count)."""
    text = os.environ.get(CACHE_ENV, "").strip()
    if not text:
        return None
    try:
        mib = float(text)
    except ValueError:
        raise ValueError(f"{CACHE_ENV}={text!r} is not a number of MiB") from None
    if not mib > 0:
        raise ValueError(f"{CACHE_ENV}={text!r} must be > 0")
    return int(mib * 2 ** 20)


def evict_over_budget(manager, keep: int, budget: int) -> None:
    """Drop the least recently used packed adapters that are not in a slot until the
    packed bytes in the cache fit `budget` (the adapter `keep` stays)."""
    cache = manager._registered_adapters
    held = sum(getattr(m, "nbytes", 0) for m in cache.cache.values())
    for lora_id in list(cache.order):
        if held <= budget:
            return
        model = cache.cache.get(lora_id)
        if (lora_id == keep or lora_id in manager._active_adapters
                or not isinstance(model, PackedLoRAModel)):
            continue
        manager.remove_adapter(lora_id)
        held -= model.nbytes


def _make_add(original):
    def _add_adapter(self, lora):
        original(self, lora)
        budget = cache_budget_bytes()
        if budget is not None and isinstance(lora, PackedLoRAModel):
            evict_over_budget(self, lora.id, budget)
    return _add_adapter


def _make_remove_all(original):
    def remove_all_adapters(self):
        original(self)
        for table in _tables(self).values():
            for index in range(len(table.slots)):
                table.set(index, None)
    return remove_all_adapters


# --- 3. forward ---------------------------------------------------------------------

def _make_apply_lora(original):
    def _apply_lora_to_output(self, x, output):
        key = getattr(self, "_loraquant_key", None)
        if key is None:
            return original(self, x, output)
        # no Python branch on what the slots hold: vLLM may trace this once
        if self._loraquant_dense:
            output = original(self, x, output)     # dense adapters (zero in packed slots)
        shape = output.shape if output.ndim == 3 else None
        x2 = x.flatten(0, 1) if x.ndim == 3 else x
        out2 = output.flatten(0, 1) if output.ndim == 3 else output
        torch.ops.loraquant.vllm_packed_add(out2, x2, self.punica_wrapper._token_lora_indices, key)
        return out2.reshape(shape) if shape is not None else out2
    return _apply_lora_to_output


# --- 4. front end -------------------------------------------------------------------

def _make_validate_lora(original):
    def _validate_lora(self, lora_request):
        original(self, lora_request)
        if lora_request is not None:
            config = getattr(self, "model_config", None)
            model = getattr(config, "model", None)
            check_request_path(lora_request.lora_path, model if isinstance(model, str) else None)
            if (is_packed_path(lora_request.lora_path) and _on_cuda()
                    and not getattr(config, "enforce_eager", True)):
                raise ValueError(cuda_graphs_error(lora_request.lora_path))
    return _validate_lora


def _on_cuda() -> bool:
    from vllm.platforms import current_platform
    return current_platform.is_cuda_alike()


def cuda_graphs_error(path) -> str:
    return (f"loraquant: cannot serve {path} here: on a GPU the packed path needs "
            f"enforce_eager=True (--enforce-eager), since CUDA graphs would replay stale "
            f"slot tables")


# --- 5. packed-only mode ----------------------------------------------------------------

def _make_create_lora_weights(original):
    def create_lora_weights(self, max_loras, lora_config, model_config=None):
        original(self, max_loras, lora_config, model_config)
        if packed_only():
            self.lora_a_stacked = tuple(t.new_zeros(t.shape[:2] + (0, t.shape[3]))
                                        for t in self.lora_a_stacked)
            self.lora_b_stacked = tuple(t.new_zeros(t.shape[:3] + (0,))
                                        for t in self.lora_b_stacked)
    return create_lora_weights


def _make_create_dummy(original):
    def create_dummy_lora(self, lora_id, rank, embedding_modules=None):
        if packed_only():
            return PackedLoRAModel(lora_id, rank)
        return original(self, lora_id, rank, embedding_modules)
    return create_dummy_lora


def install() -> None:
    from vllm.lora.layers.base_linear import BaseLinearLayerWithLoRA
    from vllm.lora.model_manager import LoRAModelManager
    from vllm.lora.worker_manager import WorkerLoRAManager
    from vllm.v1.engine.input_processor import InputProcessor

    _wrap(WorkerLoRAManager, "__init__", _make_worker_init)
    _wrap(WorkerLoRAManager, "_load_adapter", _make_load_adapter)
    _wrap(LoRAModelManager, "_create_lora_modules", _make_create_modules)
    _wrap(LoRAModelManager, "activate_adapter", _make_activate)
    _wrap(LoRAModelManager, "_deactivate_adapter", _make_deactivate)
    _wrap(LoRAModelManager, "remove_all_adapters", _make_remove_all)
    _wrap(LoRAModelManager, "_create_merged_loras_inplace", _make_merge)
    _wrap(LoRAModelManager, "_add_adapter", _make_add)
    _wrap(LoRAModelManager, "create_dummy_lora", _make_create_dummy)
    _wrap(BaseLinearLayerWithLoRA, "_apply_lora_to_output", _make_apply_lora)
    _wrap(InputProcessor, "_validate_lora", _make_validate_lora)
    for cls in _linear_lora_classes(BaseLinearLayerWithLoRA):
        if "create_lora_weights" in cls.__dict__:
            _wrap(cls, "create_lora_weights", _make_create_lora_weights)


def _linear_lora_classes(base):
    seen, todo = [], [base]
    while todo:
        cls = todo.pop()
        if cls not in seen:
            seen.append(cls)
            todo.extend(cls.__subclasses__())
    return seen
