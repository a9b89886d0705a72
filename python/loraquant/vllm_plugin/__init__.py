"""loraquant's vLLM plugin: serve .lqa files as LoRA adapters, packed.

Installed with loraquant (entry point `vllm.general_plugins` -> `loraquant =
loraquant.vllm_plugin:register`), vLLM calls `register()` in each of its processes.
Nothing in the user's script or command line changes: a LoRA path that is a file is
read as a loraquant adapter; a directory is vLLM's own PEFT path, as before.

    llm = LLM(model=BASE, enable_lora=True, max_loras=8)
    llm.generate(prompts, params, lora_request=LoRARequest("a", 1, "/srv/a.lqa"))

    vllm serve BASE --enable-lora --lora-modules a=/srv/a.lqa

Environment:
  LORAQUANT_VLLM_PACKED_ONLY=1   vLLM allocates no dense LoRA slot memory; only .lqa
                                 files are served (PEFT directories are refused)
  LORAQUANT_VLLM_LORA_DIR=DIR    register a resolver serving DIR/NAME.lqa as model NAME
                                 (with VLLM_ALLOW_RUNTIME_LORA_UPDATING=1)
  VLLM_PLUGINS=...               vLLM's own allowlist; leave "loraquant" out to disable
"""
from __future__ import annotations

SUPPORTED_VLLM = ((0, 32), (0, 33))   # [lowest, highest) minor versions tested


def _version_ok(version: str) -> bool:
    parts = version.split(".")
    try:
        key = (int(parts[0]), int(parts[1]))
    except (ValueError, IndexError):
        return False
    return SUPPORTED_VLLM[0] <= key < SUPPORTED_VLLM[1]


def register() -> None:
    """vLLM's entry point: hook the packed path into this process (idempotent)."""
    import vllm

    if not _version_ok(vllm.__version__):
        import warnings
        lo, hi = SUPPORTED_VLLM
        warnings.warn(f"loraquant's vLLM plugin is tested with vLLM {lo[0]}.{lo[1]}.x; "
                      f"this is {vllm.__version__} (below {hi[0]}.{hi[1]}), so it may not "
                      f"hook in correctly", RuntimeWarning, stacklevel=2)
    from . import patches, resolver
    patches.install()
    resolver.register_from_env()


__all__ = ["register"]
