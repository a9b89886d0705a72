"""A vLLM LoRA resolver that serves every NAME.lqa of one directory by its name.

With LORAQUANT_VLLM_LORA_DIR=/srv/adapters and VLLM_ALLOW_RUNTIME_LORA_UPDATING=1, a
request to `vllm serve` for model "support-bot" that no loaded adapter answers loads
/srv/adapters/support-bot.lqa (through loraquant's packed path) and serves it.
"""
from __future__ import annotations

import os
import re
import zlib

from vllm.lora.request import LoRARequest
from vllm.lora.resolver import LoRAResolver

DIR_ENV = "LORAQUANT_VLLM_LORA_DIR"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def adapter_id(name: str) -> int:
    """A stable id per name, above the small ids vLLM counts out for other adapters."""
    return (1 << 32) + zlib.crc32(name.encode("utf-8"))


class LqaDirectoryResolver(LoRAResolver):
    def __init__(self, directory: str):
        self.directory = os.path.abspath(os.path.expanduser(directory))

    def path_for(self, lora_name: str) -> str | None:
        """The file that serves `lora_name`, or None (names with '/' or '..' never match)."""
        if not _NAME.match(lora_name) or ".." in lora_name:
            return None
        path = os.path.join(self.directory, lora_name + ".lqa")
        return path if os.path.isfile(path) else None

    async def resolve_lora(self, base_model_name: str, lora_name: str) -> LoRARequest | None:
        path = self.path_for(lora_name)
        if path is None:
            return None
        return LoRARequest(lora_name=lora_name, lora_int_id=adapter_id(lora_name), lora_path=path)


def register_from_env() -> None:
    directory = os.environ.get(DIR_ENV)
    if not directory:
        return
    if not os.path.isdir(os.path.expanduser(directory)):
        raise ValueError(f"{DIR_ENV}={directory!r} is not a directory")
    from vllm.lora.resolver import LoRAResolverRegistry
    LoRAResolverRegistry.register_resolver("loraquant", LqaDirectoryResolver(directory))
