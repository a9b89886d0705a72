"""Markdown tables and the small statistics the benches print."""
from __future__ import annotations

import math
import os
from pathlib import Path


def geomean(xs) -> float:
    xs = list(xs)
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def markdown(headers, rows) -> str:
    """A markdown table; floats are printed as given (format them before)."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    line = lambda row: "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]])


def replace_block(path, name: str, text: str) -> None:
    """Put `text` between the lines `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` of
    a markdown file, in place of what was there: the benches write the tables of
    README.md and bench/README.md so, and the numbers there are what they printed.
    ValueError if the file has no such block."""
    path = Path(path)
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    doc = path.read_text()
    i, j = doc.find(begin), doc.find(end)
    if i < 0 or j < i:
        raise ValueError(f"{path} has no block {begin} ... {end}")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(doc[:i + len(begin)] + "\n" + text.rstrip("\n") + "\n" + doc[j:])
    os.replace(tmp, path)
