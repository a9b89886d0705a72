"""The packed LoRA path of one vLLM linear layer: slot table and forward pass.

vLLM gives every active adapter a slot index (0..max_loras-1) and every token of a
batch the slot of its request (-1: no adapter), in `punica_wrapper.token_lora_indices`.
The plugin keeps, beside vLLM's dense slot tensors, a table `slot -> packed slices`
per layer (`PackedSlots`). After the base layer (and vLLM's dense LoRA path, unless
packed-only), the op loraquant::vllm_packed_add (`add_packed`) adds x @ dW_hat^T for
each token from the packed codes of its slot:

- on the CPU, loraquant's C++ kernel (QuantizedLoRA.apply) per slot, over that slot's
  tokens;
- on a GPU, one BGMV launch per output slice over all tokens (loraquant.cuda_ops), from
  a DeviceRegistry that holds the packed bytes of the slots' modules.

Nothing is dequantized: the slot table references the QuantizedLoRA objects of the
adapter cache, and the GPU registry is a copy of their packed bytes.
"""
from __future__ import annotations

import torch


class PackedSlots:
    """slot -> tuple of QuantizedLoRA | None per output slice, for one layer."""

    def __init__(self, slots: int, output_slices):
        self.slots: list[tuple | None] = [None] * slots
        self.output_slices = tuple(int(m) for m in output_slices)
        self._registries = None     # GPU only: per slice (DeviceRegistry | None, slot map)

    def set(self, index: int, slices) -> None:
        self.slots[index] = tuple(slices) if slices else None
        self._registries = None

    # --- GPU -------------------------------------------------------------------------
    def registries(self, device):
        """Per slice: (DeviceRegistry, int32 map slot -> registry index or -1) or None."""
        if self._registries is None:
            from .. import cuda_ops
            out = []
            for s in range(len(self.output_slices)):
                mods, slot_map = [], []
                for entry in self.slots:
                    q = entry[s] if entry is not None else None
                    slot_map.append(len(mods) if q is not None else -1)
                    if q is not None:
                        mods.append(q)
                if not mods:
                    out.append(None)
                    continue
                out.append((cuda_ops.DeviceRegistry(mods, device=device),
                            torch.tensor(slot_map, dtype=torch.int32, device=device)))
            self._registries = out
        return self._registries


def token_slots(all_slots: torch.Tensor, tokens: int) -> torch.Tensor:
    """Slot index of each of the first `tokens` rows (-1 where none). `all_slots` is
    vLLM's whole index buffer; rows past the batch's tokens are padding, and whatever
    is added to them is never read."""
    if all_slots.shape[0] >= tokens:
        return all_slots[:tokens]
    pad = torch.full((tokens - all_slots.shape[0],), -1, dtype=all_slots.dtype,
                     device=all_slots.device)
    return torch.cat([all_slots, pad])


def add_packed(table: PackedSlots, idx: torch.Tensor, x: torch.Tensor, output: torch.Tensor):
    """output[t, slice s] += x[t] @ dW_hat[idx[t], s]^T for each row t of the 2-D x and
    output (idx[t] = -1, or a slot without a packed adapter: nothing)."""
    idx = token_slots(idx, x.shape[0])
    if x.device.type == "cuda":
        return _add_packed_cuda(table, idx, x, output)
    if x.device.type != "cpu":
        raise NotImplementedError(f"loraquant serves packed adapters on the CPU and on CUDA "
                                  f"GPUs, not on {x.device}")
    slots = torch.unique(idx).tolist()
    for slot in slots:
        entry = table.slots[slot] if 0 <= slot < len(table.slots) else None
        if entry is None:
            continue
        rows = None if len(slots) == 1 else (idx == slot).nonzero().squeeze(1)
        xs = x if rows is None else x.index_select(0, rows)
        offset = 0
        for q, width in zip(entry, table.output_slices):
            if q is not None:
                delta = q.apply(xs).to(output.dtype)
                view = output[:, offset:offset + width]
                if rows is None:
                    view.add_(delta)
                else:
                    view.index_add_(0, rows, delta)
            offset += width
    return output


# --- the op that vLLM's compiled forward calls ------------------------------------------
# vLLM traces the model once (torch.compile on its CPU backend unless enforce_eager), so
# the packed path must not branch in Python inside the traced code: it is one opaque op,
# run at every step with that step's tensors. A layer's table is found by its key.

_TABLES: dict[int, PackedSlots] = {}


def register_table(table: PackedSlots) -> int:
    key = len(_TABLES)
    _TABLES[key] = table
    return key


@torch.library.custom_op("loraquant::vllm_packed_add", mutates_args=("output",))
def packed_add_op(output: torch.Tensor, x: torch.Tensor, slots: torch.Tensor, key: int) -> None:
    add_packed(_TABLES[key], slots, x, output)


@packed_add_op.register_fake
def _(output, x, slots, key):
    return None


def _add_packed_cuda(table: PackedSlots, idx, x, output):
    from .. import cuda_ops
    x = x.contiguous()
    offset = 0
    for reg, width in zip(table.registries(x.device), table.output_slices):
        if reg is not None:
            registry, slot_map = reg
            mapped = slot_map[idx.clamp(min=0).long()]
            ridx = torch.where(idx >= 0, mapped, torch.full_like(mapped, -1))
            y = torch.zeros((x.shape[0], width), dtype=x.dtype, device=x.device)
            cuda_ops.bgmv(y, x, registry, ridx)
            output[:, offset:offset + width].add_(y)
        offset += width
    return output
