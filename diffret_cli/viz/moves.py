"""How re-ranking moved each query's ground truth: a bar per rank change, per direction
(from :func:`diffret_cli.diagnostics.rerank_diagnostics`)."""

from __future__ import annotations

import numpy as np

from diffret_cli.viz.frames import GT_COLOR, OTHER_COLOR, new_figure

__all__ = ["moves_figure"]

DOWN_COLOR = "#d7301f"


def moves_figure(diagnostics: dict, *, title: str = ""):
    """One panel per direction (axes labelled ``moves:<direction>``): queries per number of
    ranks gained (positive: moved up, green; negative: moved down, red; 0: left alone)."""
    directions = [d for d in ("t2v", "v2t") if d in diagnostics]
    fig = new_figure(4.2 * len(directions) + 0.4, 2.8)
    axes = np.atleast_1d(fig.subplots(1, len(directions), squeeze=False)[0])
    for ax, d in zip(axes, directions):
        m = diagnostics[d]["moves"]
        hist = {float(k): int(v) for k, v in m["histogram"].items()}  # JSON keys are strings
        x = np.array(sorted(hist))
        y = np.array([hist[k] for k in x])
        ax.set_label(f"moves:{d}")
        # ranks are whole numbers, or end in .5 where a tie counts half
        step = 0.5 if np.any(x % 1) else 1.0
        bars = ax.bar(x, y, width=0.8 * step,
                      color=[GT_COLOR if k > 0 else DOWN_COLOR if k < 0 else OTHER_COLOR for k in x])
        ax.bar_label(bars, fontsize=7)
        ax.set_title(f"{title}{d}: up {m['up']}, down {m['down']}, same {m['same']} (of {m['queries']})",
                     fontsize=8)
        ax.set_xlabel("ranks gained by re-ranking (> 0: moved up)", fontsize=7)
        ax.set_ylabel("queries", fontsize=7)
        if x.size:
            ax.set_xticks(x if x.size <= 15 else x[:: int(np.ceil(x.size / 15))])
            ax.set_xlim(x.min() - step, x.max() + step)
            ax.set_ylim(0, y.max() * 1.15)
        ax.tick_params(labelsize=7)
    return fig
