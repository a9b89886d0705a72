"""Run one vLLM engine on a job and write what it returned, for tests/test_vllm.py.

    python tests/_vllm_driver.py JOB.json OUT.json

JOB: {"model": dir, "engine": {LLM keyword arguments}, "prompt": [token ids],
      "max_tokens": n, "batches": [[lora_path or null, ...], ...]}
OUT: {"batches": [[{"tokens": [...], "logprobs": [{token: logprob}, ...]} | {"error": msg}
      , ...], ...]}. A batch whose generate call raises gives one {"error"} per request.
vLLM runs in its own process here (it starts engine processes with `spawn`), so the
environment of this process (VLLM_PLUGINS, LORAQUANT_VLLM_*) is the engine's.
"""
import json
import sys


def run(job: dict) -> dict:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest

    llm = LLM(model=job["model"], skip_tokenizer_init=True, enable_lora=True, **job["engine"])
    params = SamplingParams(max_tokens=job["max_tokens"], temperature=0.0, logprobs=5,
                            detokenize=False)
    prompt = TokensPrompt(prompt_token_ids=job["prompt"])
    ids, out = {}, []
    for batch in job["batches"]:
        requests = []
        for path in batch:
            if path is None:
                requests.append(None)
            else:
                ids.setdefault(path, len(ids) + 1)
                requests.append(LoRARequest(f"adapter{ids[path]}", ids[path], path))
        try:
            results = llm.generate([prompt] * len(batch), params, lora_request=requests,
                                   use_tqdm=False)
        except ValueError as e:     # vLLM's validation errors are ValueErrors
            out.append([{"error": str(e)}] * len(batch))
            continue
        out.append([{"tokens": list(r.outputs[0].token_ids),
                     "logprobs": [{str(k): v.logprob for k, v in step.items()}
                                  for step in r.outputs[0].logprobs]} for r in results])
    return {"batches": out}


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        result = run(json.load(f))
    with open(sys.argv[2], "w") as f:
        json.dump(result, f)
