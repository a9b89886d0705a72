"""Offline text corpora for the end-to-end bench, as byte ids.

- base corpus: the .py files at the top of the running interpreter's standard library
  (sysconfig's "stdlib" path), sorted by name.
- prose corpus: English documentation in perl's .pod files (/usr/share/perl*,
  /usr/lib/*/perl*), POD markup stripped, duplicates dropped, Config.pod left out (a
  generated, repetitive list of build variables); where perl's docs are
  missing, the license texts in /usr/share/common-licenses.
Tokens are bytes (vocabulary 256), so no tokenizer has to be trained or downloaded.
"""
from __future__ import annotations

import hashlib
import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch

BLOCK = 2048          # held-out split unit, in bytes
HELD_OUT_EVERY = 10   # every 10th block is held out
POD_GLOBS = ["/usr/share/perl*/**/*.pod", "/usr/lib/*/perl*/**/*.pod"]
POD_SKIP = {"Config.pod"}
LICENSES = "/usr/share/common-licenses"
POD_DROP = re.compile(r"^=(over|back|cut|pod|begin|end|for|encoding)\b.*$", re.M)
POD_KEEP = re.compile(r"^=(head\d|item)\s*", re.M)
POD_DOUBLE = re.compile(r"[A-Z]<<+\s+(.*?)\s+>>+", re.S)
POD_CODE = re.compile(r"[A-Z]<([^<>]*)>")
POD_ESCAPES = {"lt": "<", "gt": ">", "verbar": "|", "sol": "/"}


@dataclass
class Corpus:
    name: str
    text: str
    files: int

    @property
    def ids(self) -> torch.Tensor:
        return torch.frombuffer(bytearray(self.text.encode("utf-8")), dtype=torch.uint8).long()

    @property
    def sha(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()[:16]

    def describe(self) -> str:
        return f"{self.name}: {self.files} files, {len(self.text.encode('utf-8')) / 1e6:.2f} MB"


def _read(paths) -> tuple[list[str], int]:
    seen, texts = set(), []
    for p in sorted(paths):
        t = Path(p).read_text(encoding="utf-8", errors="replace")
        digest = hashlib.sha256(t.encode()).digest()
        if digest not in seen:
            seen.add(digest)
            texts.append(t)
    return texts, len(texts)


def python_stdlib() -> Corpus:
    root = Path(sysconfig.get_paths()["stdlib"])
    texts, count = _read(root.glob("*.py"))
    return Corpus(f"Python {root} *.py", "\n\n".join(texts), count)


def strip_pod(text: str) -> str:
    """POD to plain text: drop structural commands, keep headings and items, unwrap
    formatting codes (B<..>, C<< .. >>, L<text|link>, E<gt>)."""
    text = POD_KEEP.sub("", POD_DROP.sub("", text))
    text = POD_DOUBLE.sub(r"\1", text)

    def code(mt):
        inner = mt.group(1)
        if mt.group(0)[0] == "E":
            return POD_ESCAPES.get(inner, "")
        if mt.group(0)[0] == "L":
            return inner.split("|")[0]
        return inner

    while True:
        new = POD_CODE.sub(code, text)
        if new == text:
            return re.sub(r"\n{3,}", "\n\n", text)
        text = new


def prose() -> Corpus:
    import glob
    pods = {p for g in POD_GLOBS for p in glob.glob(g, recursive=True)
            if Path(p).name not in POD_SKIP}
    if pods:
        texts, count = _read(pods)
        return Corpus("perl .pod documentation", "\n\n".join(strip_pod(t) for t in texts), count)
    texts, count = _read(p for p in Path(LICENSES).iterdir() if p.is_file())
    return Corpus(f"license texts in {LICENSES}", "\n\n".join(texts), count)


def split(ids: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(training stream, held-out blocks): every HELD_OUT_EVERY-th block of BLOCK bytes
    is held out; the rest, concatenated, is for training."""
    blocks = list(ids.split(BLOCK))
    held = [b for i, b in enumerate(blocks) if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1]
    train = [b for i, b in enumerate(blocks) if i % HELD_OUT_EVERY != HELD_OUT_EVERY - 1]
    return torch.cat(train), held
