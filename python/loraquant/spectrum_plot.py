"""`loraquant inspect --plot`: singular-value spectra with the width chosen per component.

One panel per module kind (the last name of the module path: q_proj, c_attn ...),
so that an adapter of hundreds of modules still fits on one page. In each panel every
module is a thin grey line of its singular values (log scale, strongest first) and
each component a dot coloured by the bit width it was given. Uses matplotlib's Agg
canvas directly (no pyplot, no display needed).
"""
from __future__ import annotations

import math

#: colour per bit width; 0 means the component was dropped
WIDTH_COLORS = {0: "#c8c8c8", 1: "#4c72b0", 2: "#55a868", 3: "#dd8452", 4: "#c44e52",
                5: "#8172b3", 6: "#937860", 7: "#da8bc3", 8: "#222222"}
PANEL_COLUMNS = 4


def _groups(adapter) -> dict:
    groups = {}
    for name, q in adapter.items():
        groups.setdefault(name.rsplit(".", 1)[-1], []).append(q)
    return groups


def plot_spectra(adapter, out_path, *, title: str = "adapter") -> None:
    """Draw every module's spectrum of `adapter` (a CompressedAdapter) into a PNG."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FormatStrFormatter, MaxNLocator, NullFormatter

    groups = _groups(adapter)
    cols = min(PANEL_COLUMNS, len(groups))
    rows = math.ceil(len(groups) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows + 0.9), layout="constrained")
    FigureCanvasAgg(fig)
    used = set()
    for i, (kind, qs) in enumerate(groups.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        for q in qs:
            sigma = np.asarray(q.singular_values, dtype=float)
            x = np.arange(1, len(sigma) + 1)
            shown = sigma > 0  # a log axis cannot show exact zeros
            ax.plot(x[shown], sigma[shown], color="#999999", lw=0.7, zorder=1)
            ax.scatter(x[shown], sigma[shown], s=22, zorder=2, edgecolors="none",
                       c=[WIDTH_COLORS[max(w)] for w, s in zip(q.widths, shown) if s])
            used.update(max(w) for w in q.widths)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(NullFormatter())  # minor labels collide on log axes
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"{kind} ({len(qs)} module{'s' if len(qs) > 1 else ''})", fontsize=10)
        ax.set_xlabel("component", fontsize=8)
        ax.set_ylabel("singular value", fontsize=8)
        ax.tick_params(which="both", labelsize=7)
        ax.grid(True, which="major", alpha=0.3)
    handles = [Line2D([], [], ls="", marker="o", color=WIDTH_COLORS[w],
                      label="dropped" if w == 0 else f"{w} bit") for w in sorted(used)]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles),
               fontsize=8, title="width per component (its wider factor)", title_fontsize=8)
    fig.suptitle(f"{title}: {len(adapter)} modules, {adapter.avg_bits:.2f} bits/weight",
                 fontsize=11)
    fig.savefig(out_path, dpi=110)
