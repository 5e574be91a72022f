"""Paper Figure 4: score distributions of positive and negative pairs.

A positive pair is a caption and its own video, a negative pair a caption and any other
video (the text-to-video matrix, every caption x every video). The further apart the two
distributions, the easier retrieval; the paper shows DiffusionRet keeping them apart
out of domain too. Columns: the in-domain split, then each out-of-domain one; rows: the
stage-1 scores S and the re-ranked scores S' (Eq. 13). The y axis is the fraction of each
kind's pairs per bin, so the two kinds compare despite their counts; ``AUC`` is the
chance that a positive pair outscores a negative one (ties count half).
"""

from __future__ import annotations

import numpy as np
import torch

from diffret_cli.viz.frames import GT_COLOR, new_figure

__all__ = ["pair_scores", "pair_auc", "draw_similarity", "similarity_figure"]

NEG_COLOR = "#d7301f"


def pair_scores(matrix: torch.Tensor, caption_video: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positive [C], negative [C * (V - 1)]) scores of a text-to-video matrix [C,V]."""
    m = torch.as_tensor(matrix).float().cpu().numpy()
    cv = np.asarray(caption_video, dtype=np.int64)
    pos_mask = np.zeros(m.shape, dtype=bool)
    pos_mask[np.arange(m.shape[0]), cv] = True
    return m[pos_mask], m[~pos_mask]


def pair_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(positive > negative) + P(tie) / 2, by ranks (Mann-Whitney U)."""
    neg = np.sort(np.asarray(neg, dtype=np.float64))
    pos = np.asarray(pos, dtype=np.float64)
    below = np.searchsorted(neg, pos, side="left")
    ties = np.searchsorted(neg, pos, side="right") - below
    return float((below + 0.5 * ties).sum() / (pos.size * neg.size))


def draw_similarity(panels: list[dict], *, bins: int = 40):
    """``panels``: one dict per column with ``title`` and, per row, ``"stage 1"`` and
    optionally ``"re-ranked"``: a (positive, negative) pair of score arrays. Axes are
    labelled ``<row>|<title>`` (what the tests look up)."""
    rows = ["stage 1"] + (["re-ranked"] if any("re-ranked" in p for p in panels) else [])
    fig = new_figure(3.6 * len(panels) + 0.4, 2.6 * len(rows) + 0.4)
    axes = np.atleast_2d(fig.subplots(len(rows), len(panels), squeeze=False))
    for j, p in enumerate(panels):
        for i, row in enumerate(rows):
            ax = axes[i, j]
            ax.set_label(f"{row}|{p['title']}")
            if row not in p:
                ax.set_axis_off()
                continue
            pos, neg = (np.asarray(x, dtype=np.float64) for x in p[row])
            edges = np.histogram_bin_edges(np.concatenate([pos, neg]), bins=bins)
            # weights 1/n: each kind's bars sum to 1 (fraction of its pairs)
            hn, _, _ = ax.hist(neg, bins=edges, weights=np.full(neg.size, 1.0 / neg.size), color=NEG_COLOR,
                               alpha=0.55, label=f"negative (n={neg.size})")
            hp, _, _ = ax.hist(pos, bins=edges, weights=np.full(pos.size, 1.0 / pos.size), color=GT_COLOR,
                               alpha=0.65, label=f"positive (n={pos.size})")
            ax.set_ylim(0, 1.35 * max(hn.max(), hp.max()))  # headroom for the legend
            ax.set_title(f"{p['title']}: {row}\nAUC {pair_auc(pos, neg):.3f}, mean gap "
                         f"{pos.mean() - neg.mean():.3f}", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.set_xlabel("score" if row == "stage 1" else "re-ranked score S'", fontsize=7)
            ax.set_ylabel("fraction of pairs", fontsize=7)
            ax.legend(fontsize=6, loc="upper left", framealpha=0.7)  # "best" is slow on 10^5 pairs
    return fig


def similarity_figure(splits: list[tuple[str, object]], *, bins: int = 40):
    """Figure 4 from scored splits: ``splits`` is a list of (column title, SplitScores)."""
    panels = []
    for title, s in splits:
        p = {"title": title, "stage 1": pair_scores(s.stage1, s.caption_video)}
        if s.t2v is not None:
            p["re-ranked"] = pair_scores(s.t2v, s.caption_video)
        panels.append(p)
    return draw_similarity(panels, bins=bins)
