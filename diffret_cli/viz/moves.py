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
        hist = {int(k): int(v) for k, v in m["histogram"].items()}
        x = np.array(sorted(hist))
        y = np.array([hist[k] for k in x])
        ax.set_label(f"moves:{d}")
        ax.bar(x, y, color=[GT_COLOR if k > 0 else DOWN_COLOR if k < 0 else OTHER_COLOR for k in x])
        ax.set_title(f"{title}{d}: up {m['up']}, down {m['down']}, same {m['same']} (of {m['queries']})",
                     fontsize=8)
        ax.set_xlabel("ranks gained by re-ranking", fontsize=7)
        ax.set_ylabel("queries", fontsize=7)
        ax.tick_params(labelsize=7)
        if y.size:
            ax.set_yscale("log")  # "left alone" usually dwarfs the moves
    return fig
