"""Compressed adapters served inside transformers models, checked against PEFT.

For each tiny adapter (Llama with rank/alpha patterns, LoRA biases and a
modules_to_save head; Llama with rslora; GPT-2 Conv1D with modules_to_save):
  * load_adapter on the base model gives the logits of the exported (dequantized)
    adapter loaded by PeftModel.from_pretrained;
  * at high bits, the compressed adapter reproduces PEFT's own model of the source;
  * quantize_peft_model gives the logits of its own dequantized adapter.
"""
import copy
import dataclasses

import pytest
import torch
from peft import LoraConfig, PeftModel
from peft.tuners.lora import LoraLayer

import _peft_fixtures as F
import loraquant
from loraquant import cli, peft_io
from loraquant.hf import PackedLoRALayer, packed_delta

KINDS = sorted(F.ADAPTERS)
# Packed kernel vs dequantized matmul, both float32, through two layers and a head:
# the same numbers summed in another order (observed about 1e-6).
LOGITS_ATOL = 2e-5
# The adapters must move the logits far more than that, or the comparison is vacuous.
ADAPTER_EFFECT_MIN = 0.1
# At 12 bits every component gets 8-bit codes: about 1% error per module here.
HIGH_BITS = 12
HIGH_BITS_REL_ERROR = 0.02
# ... which moves the logits by a few percent of the adapter's whole effect; a wrong
# scaling, rank or bias would move them by about all of it.
HIGH_BITS_LOGITS_FRACTION = 0.1


def _max_diff(a, b):
    return (a - b).abs().max().item()


@pytest.fixture(scope="module")
def compressed_files(tmp_path_factory):
    """kind -> (PEFT directory, compressed file made by the CLI in a subprocess)."""
    out = {}
    for kind in KINDS:
        root = tmp_path_factory.mktemp(kind)
        d = F.save_adapter(kind, root / "adapter")
        res = F.run_cli("compress", d, root / "adapter.lqa", "--quiet")
        assert res.returncode == 0, res.stderr
        out[kind] = (d, root / "adapter.lqa")
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_load_adapter_matches_the_exported_peft_adapter(kind, compressed_files, tmp_path):
    build = F.ADAPTERS[kind][0]
    _, path = compressed_files[kind]
    ids = F.tokens()
    base = F.logits(build(), ids)

    model = loraquant.load_adapter(build(), path)
    packed = [m for m in model.modules() if isinstance(m, PackedLoRALayer)]
    assert len(packed) == len(loraquant.load(path))
    served = F.logits(model, ids)

    assert cli.main(["export", str(path), str(tmp_path / "exported")]) == 0
    exported = PeftModel.from_pretrained(build(), str(tmp_path / "exported")).eval()
    reference = F.logits(exported, ids)

    assert _max_diff(served, reference) <= LOGITS_ATOL
    assert _max_diff(served, base) > ADAPTER_EFFECT_MIN


def _peft_updates(peft_model):
    """name -> PEFT's own s * B @ A for every LoRA layer (float64)."""
    out = {}
    for path, layer in peft_model.base_model.model.named_modules():
        if isinstance(layer, LoraLayer) and "default" in layer.lora_A:
            a = layer.lora_A["default"].weight.double()
            b = layer.lora_B["default"].weight.double()
            out[peft_io.PREFIX + path] = layer.scaling["default"] * b @ a
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_high_bits_reproduce_the_source_adapter(kind, compressed_files):
    """Scalings, ranks, Conv1D, LoRA biases and modules_to_save, judged by PEFT itself."""
    build = F.ADAPTERS[kind][0]
    adapter_dir, _ = compressed_files[kind]
    adapter = loraquant.compress_peft(adapter_dir, bits=HIGH_BITS)
    source = PeftModel.from_pretrained(build(), str(adapter_dir)).eval()

    updates = _peft_updates(source)
    assert sorted(updates) == sorted(adapter)
    for name, dw in updates.items():
        a_hat, b_hat = adapter[name].dequantize()
        rel = ((dw - b_hat.double() @ a_hat.double()).norm() / dw.norm()).item()
        assert rel <= HIGH_BITS_REL_ERROR, name

    ids = F.tokens()
    base = F.logits(build(), ids)
    expected = F.logits(source, ids)
    served = F.logits(loraquant.load_adapter(build(), adapter), ids)
    assert _max_diff(served, expected) <= HIGH_BITS_LOGITS_FRACTION * _max_diff(expected, base)


@pytest.mark.parametrize("kind", KINDS)
def test_quantize_peft_model_matches_its_dequantized_adapter(kind):
    model = F.peft_model(kind)
    reference = copy.deepcopy(model)
    ids = F.tokens()
    before = F.logits(model, ids)
    n_lora = len(_peft_updates(model))

    assert loraquant.quantize_peft_model(model, bits=2) is model
    packed = {m.name: m for m in model.modules() if isinstance(m, PackedLoRALayer)}
    assert len(packed) == n_lora
    assert not any(isinstance(m, LoraLayer) for m in model.modules())

    root = reference.base_model.model
    with torch.no_grad():
        for name, layer in packed.items():
            lora = root.get_submodule(name[len(peft_io.PREFIX):])
            a_hat, b_hat = layer.q.dequantize()
            lora.lora_A["default"].weight.copy_(a_hat)
            lora.lora_B["default"].weight.copy_(b_hat / lora.scaling["default"])
    served = F.logits(model, ids)
    assert _max_diff(served, F.logits(reference, ids)) <= LOGITS_ATOL
    assert _max_diff(served, F.logits(F.ADAPTERS[kind][0](), ids)) > ADAPTER_EFFECT_MIN
    assert _max_diff(served, before) > 0  # it really runs the 2-bit adapter


# --- errors -------------------------------------------------------------------------

def _one_module(name, m, n, r=4):
    g = torch.Generator().manual_seed(0)
    q = loraquant.compress(torch.randn(r, n, generator=g), torch.randn(m, r, generator=g))
    return loraquant.CompressedAdapter({name: q})


def _unchanged(model, state):
    assert not any(isinstance(m, PackedLoRALayer) for m in model.modules())
    now = model.state_dict()
    assert now.keys() == state.keys() and all(torch.equal(now[k], state[k]) for k in state)


@pytest.mark.parametrize("adapter, match", [
    (lambda files: files["gpt2_conv1d"][1], "has no submodule 'transformer.h.0.attn.c_attn'"),
    (lambda _: _one_module("base_model.model.model.layers.0.self_attn.q_proj", 16, 32),
     r"update is \(16, 32\) \(out, in\) but 'model.layers.0.self_attn.q_proj' maps 32 -> 32"),
    (lambda _: _one_module("model.layers.0.input_layernorm", 32, 32),
     "is a LlamaRMSNorm; only nn.Linear and transformers' Conv1D"),
    (lambda files: loraquant.CompressedAdapter(
        loraquant.load(files["llama_rslora"][1]),
        extras={"base_model.model.model.nope.weight": torch.zeros(2)}),
     "extra 'base_model.model.model.nope.weight': the model has no parameter"),
    (lambda files: loraquant.CompressedAdapter(
        loraquant.load(files["llama_rslora"][1]),
        extras={"base_model.model.lm_head.weight": torch.zeros(2, 2)}),
     r"is \(2, 2\) but the model's 'lm_head.weight' is \(61, 32\)"),
])
def test_load_adapter_refuses_a_mismatch_and_leaves_the_model_alone(compressed_files, adapter,
                                                                    match):
    model = F.llama()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        loraquant.load_adapter(model, adapter(compressed_files))
    _unchanged(model, state)


def test_load_adapter_twice_and_on_a_peft_model(compressed_files):
    _, path = compressed_files["llama_rslora"]
    model = loraquant.load_adapter(F.llama(), path)
    with pytest.raises(ValueError, match="already carries a loraquant adapter"):
        loraquant.load_adapter(model, path)
    with pytest.raises(ValueError, match="this is a PeftModel: use quantize_peft_model"):
        loraquant.load_adapter(F.peft_model("llama_rslora"), path)
    with pytest.raises(TypeError, match="must be a torch.nn.Module"):
        loraquant.load_adapter("model", path)


def test_packed_delta_refuses_other_devices_clearly():
    q = _one_module("x", 8, 12)["x"]
    with pytest.raises(NotImplementedError, match="packed LoRA on meta is not available"):
        packed_delta(q, torch.empty(3, 12, device="meta"))


def test_quantize_peft_model_refusals():
    with pytest.raises(TypeError, match="expected a peft.PeftModel"):
        loraquant.quantize_peft_model(F.llama())
    two = F.peft_model("llama_rslora")
    two.add_adapter("second", LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match=r"holds adapters \['default', 'second'\]"):
        loraquant.quantize_peft_model(two)
    from peft import get_peft_model

    dora = get_peft_model(F.llama(), LoraConfig(r=2, target_modules=["q_proj"], use_dora=True))
    with pytest.raises(ValueError, match="uses DoRA"):
        loraquant.quantize_peft_model(dora)


# --- PEFT's rules, mirrored ---------------------------------------------------------

def test_variant_table_covers_every_peft_lora_variant():
    fields = dataclasses.fields(LoraConfig)
    tagged = {f.name for f in fields if f.metadata.get("is_lora_variant")}
    assert tagged and tagged <= set(peft_io.UNSUPPORTED_VARIANTS)
    init = next(f for f in fields if f.name == "init_lora_weights")
    assert set(init.metadata.get("lora_variants", ())) <= set(peft_io.UNSUPPORTED_INIT_VARIANTS)


@pytest.mark.parametrize("path", [
    "model.layers.1.self_attn.q_proj", "model.layers.11.self_attn.q_proj",
    "model.layers.0.self_attn.v_proj", "model.layers.0.mlp.down_proj", "transformer.h.0.attn.c_attn",
    "encoder.block.1.layer.0.SelfAttention.q"])
def test_pattern_rule_agrees_with_peft(path):
    from peft.utils.other import get_pattern_key

    patterns = {"layers.1.self_attn.q_proj": 4, "v_proj": 2, r"h\.\d+\.attn\.c_attn": 3,
                "q": 5, "mlp.*": 6}
    key = get_pattern_key(patterns.keys(), path)
    assert peft_io.pattern_value(patterns, path, None) == patterns.get(key)
