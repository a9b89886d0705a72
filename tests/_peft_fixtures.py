"""Tiny transformers models and PEFT LoRA adapters for the PEFT-side tests.

Everything is built offline from configs with fixed seeds: the same call gives the
same base model every time, so an adapter can be attached to fresh copies of it.
LoRA factors are filled with random values (PEFT starts lora_B at zero, which would
make every test trivially pass), and so are LoRA biases and modules_to_save copies.
"""
from __future__ import annotations

import subprocess
import sys
import warnings

import torch
from peft import LoraConfig, get_peft_model
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

VOCAB = 61          # odd on purpose
LORA_STD = 0.25     # large enough that the adapter visibly moves the logits

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=56,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=32, attention_bias=True, mlp_bias=True,
                      tie_word_embeddings=False, bos_token_id=0, eos_token_id=1,
                      pad_token_id=2)
    return LlamaForCausalLM(cfg).eval()


def gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=32,
                     bos_token_id=0, eos_token_id=1)
    return GPT2LMHeadModel(cfg).eval()


#: name -> (base model builder, LoraConfig keyword arguments)
ADAPTERS = {
    # several ranks and alphas through patterns, LoRA biases, a modules_to_save head
    "llama_patterns": (llama, dict(
        r=8, lora_alpha=16, target_modules=LLAMA_TARGETS,
        rank_pattern={"layers.1.self_attn.q_proj": 4, "v_proj": 2},
        alpha_pattern={"down_proj": 5}, lora_bias=True, modules_to_save=["lm_head"])),
    "llama_rslora": (llama, dict(
        r=16, lora_alpha=8, use_rslora=True, target_modules=["q_proj", "v_proj", "up_proj"])),
    # GPT-2's Conv1D layers; c_proj names both attn.c_proj and mlp.c_proj
    "gpt2_conv1d": (gpt2, dict(
        r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True,
        rank_pattern={"h.0.attn.c_attn": 2}, modules_to_save=["ln_f"])),
}


def fill_random(peft_model, seed: int) -> None:
    """Random LoRA factors, LoRA biases and modules_to_save copies (in place)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if ".lora_A." in name or ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=g) * LORA_STD)
            elif ".modules_to_save." in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)


def peft_model(kind: str, seed: int = 1):
    """A fresh PeftModel of adapter `kind` with random (non-trivial) weights."""
    build, kwargs = ADAPTERS[kind]
    model = get_peft_model(build(), LoraConfig(**kwargs))
    fill_random(model, seed)
    return model.eval()


def save_adapter(kind: str, directory, seed: int = 1):
    """Save adapter `kind` with save_pretrained into `directory`; return that path."""
    model = peft_model(kind, seed)
    with warnings.catch_warnings():
        # PEFT 0.21 takes the 1-D lora_B.bias of lora_bias=True for an unsharded
        # ZeRO-3 tensor and warns; the bias is whole and saved as it should be.
        warnings.filterwarnings("ignore", message=r".*LoRA tensor\(s\) have invalid shape")
        model.save_pretrained(str(directory))
    return directory


def tokens(seed: int = 3, batch: int = 2, length: int = 7) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, length), generator=g)


@torch.no_grad()
def logits(model, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids).logits.float()


def run_cli(*args) -> subprocess.CompletedProcess:
    """`python -m loraquant ARGS` in a fresh process, output captured as text."""
    return subprocess.run([sys.executable, "-m", "loraquant", *map(str, args)],
                          capture_output=True, text=True, timeout=300)
