"""Paper Figure 5: one query's candidate distribution denoised from x_T to x_0.

DiffusionRet generates a score vector over the query's K stage-1 candidates from Gaussian
noise (section 3.2, reverse process Eq. 3). The heatmap shows every state of that chain
(candidates x steps), the bar panels a few snapshots of it; the ground truth is green.
Candidates are in stage-1 order (row 1 is stage 1's best), so a green row that the chain
lifts above the rows over it is a re-ranking win.

A truncated sampler (DITS) moves the query embedding instead of a score vector: its
figure is the path of the query toward the gallery, the score of the ground truth and of
the best other video at every step (:func:`draw_query_path`).
"""

from __future__ import annotations

import textwrap

import numpy as np
import torch

from diffret_cli.errors import ConfigError
from diffret_cli.viz.frames import GT_COLOR, OTHER_COLOR, new_figure

__all__ = ["draw_diffusion", "draw_query_path", "diffusion_figure"]


def _wrap(text: str, width: int = 90) -> str:
    return "\n".join(textwrap.wrap(text, width)) or text


def snapshot_columns(num_states: int, count: int) -> list[int]:
    """``count`` evenly spaced state indices, first (x_T) and last (x_0) included."""
    return sorted({int(round(i)) for i in np.linspace(0, num_states - 1, max(2, min(count, num_states)))})


def draw_diffusion(states: np.ndarray, *, step_labels: list[str], gt_positions: list[int],
                   candidate_labels: list[str], title: str, snapshots: int = 4):
    """``states`` [S+1, K]: the chain from x_T (row 0) to x_0 (last row); ``gt_positions``:
    which of the K candidates are ground truths. Axes are labelled ``trajectory`` and
    ``snapshot:<step label>`` (what the tests look up)."""
    states = np.asarray(states, dtype=np.float64)
    n_states, k = states.shape
    if len(step_labels) != n_states or len(candidate_labels) != k:
        raise ValueError(f"{n_states} states x {k} candidates, but {len(step_labels)} step labels and "
                         f"{len(candidate_labels)} candidate labels")
    cols = snapshot_columns(n_states, snapshots)
    fig = new_figure(max(7.5, 2.2 * len(cols)), 3.2 + 0.22 * k)
    grid = fig.add_gridspec(2, len(cols), height_ratios=[1.25, 1.0])
    heat = fig.add_subplot(grid[0, :])
    heat.set_label("trajectory")
    lim = float(np.abs(states).max()) or 1.0
    im = heat.imshow(states.T, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    fig.colorbar(im, ax=heat, label="state value", fraction=0.03, pad=0.01)
    # the snapshot steps, plus evenly spaced ones that keep clear of them (labels must not overlap)
    gap = max(1, n_states // 15)
    even = np.linspace(0, n_states - 1, min(n_states, 11)).round().astype(int).tolist()
    ticks = sorted(set(cols) | {t for t in even if all(abs(t - c) > gap for c in cols)})
    heat.set_xticks(ticks, [step_labels[i] for i in ticks], fontsize=7)
    heat.set_yticks(range(k), candidate_labels, fontsize=7)
    for pos in gt_positions:
        heat.get_yticklabels()[pos].set_color(GT_COLOR)
        heat.get_yticklabels()[pos].set_fontweight("bold")
        heat.add_patch(_row_box(pos, n_states))
    heat.set_xlabel("denoising step (x_T: Gaussian noise -> x_0: the generated distribution)", fontsize=8)
    heat.set_title(title, fontsize=9, loc="left")

    colors = [GT_COLOR if i in gt_positions else OTHER_COLOR for i in range(k)]
    for j, c in enumerate(cols):
        # each snapshot on its own scale: x_0 is small next to the noise of x_T
        ax = fig.add_subplot(grid[1, j])
        ax.set_label(f"snapshot:{step_labels[c]}")
        ax.bar(np.arange(1, k + 1), states[c], color=colors)
        ax.axhline(0, color="black", linewidth=0.5)
        ax.set_title(step_labels[c], fontsize=9)
        ax.set_xticks(np.arange(1, k + 1) if k <= 16 else [1, k])
        ax.tick_params(labelsize=7)
        ax.set_xlabel("candidate (stage-1 order)", fontsize=7)
    return fig


def _row_box(row: int, width: int):
    from matplotlib.patches import Rectangle

    return Rectangle((-0.5, row - 0.5), width, 1.0, fill=False, edgecolor=GT_COLOR, linewidth=2.0)


def draw_query_path(gt_scores: np.ndarray, other_scores: np.ndarray, *, step_labels: list[str], title: str):
    """A truncated sampler's query path: per step, the score of the ground truth and of the
    best-scoring other item (the one it must beat)."""
    gt_scores, other_scores = np.asarray(gt_scores, float), np.asarray(other_scores, float)
    fig = new_figure(7.5, 3.4)
    ax = fig.add_subplot()
    ax.set_label("query-path")
    x = np.arange(len(gt_scores))
    ax.plot(x, gt_scores, marker="o", color=GT_COLOR, label="ground truth")
    ax.plot(x, other_scores, marker="s", color=OTHER_COLOR, label="best other")
    ax.set_xticks(x, step_labels, fontsize=7)
    ax.set_xlabel("truncated step (start: the text embedding)", fontsize=8)
    ax.set_ylabel("score (cosine)", fontsize=8)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9, loc="left")
    return fig


def _query_title(scores, direction: str, query: int) -> str:
    if direction == "t2v":
        return _wrap(f"text-to-video, caption {query}: \u201c{scores.captions[query]}\u201d")
    return f"video-to-text, video {query} ({scores.video_ids[query]})"


def _gt_rank(scores, direction: str, query: int, fused: bool) -> float:
    """The query's ground-truth rank as diffret_cli.metrics ranks it (ties count half)."""
    from diffret_cli.metrics import t2v_ranks, v2t_ranks

    cv = scores.caption_video
    if direction == "t2v":
        m = scores.t2v if fused else scores.stage1
        return float(t2v_ranks(m[query:query + 1], cv[query:query + 1])[0])
    m = scores.v2t if fused else scores.stage1.t()
    return float(v2t_ranks(m, cv)[np.searchsorted(np.unique(cv), query)])


def diffusion_figure(scores, *, query: int, direction: str = "t2v", snapshots: int = 4, model=None):
    """Figure 5 for query ``query`` (a caption index for t2v, a video index for v2t) of a
    split scored with ``keep_chains=True`` (:class:`diffret_cli.viz.runview.SplitScores`).
    A DITS-style model (``model`` with ``query_embedding``) draws its query path instead."""
    if direction not in ("t2v", "v2t"):
        raise ConfigError(f"direction {direction!r} is not one of t2v, v2t", hint="pass --direction t2v or v2t")
    n = len(scores.captions) if direction == "t2v" else len(scores.video_ids)
    if not 0 <= query < n:
        raise ConfigError(f"query {query} is out of range: {scores.dataset} {scores.split_name} has {n} "
                          f"{'captions' if direction == 't2v' else 'videos'}", hint=f"pass --query 0..{n - 1}")
    if model is not None and hasattr(model, "query_embedding"):
        return _query_path_figure(scores, model=model, query=query, direction=direction)
    if not scores.chains.get(direction):
        raise ConfigError("this run's model keeps no score-vector chain to draw",
                          hint="viz diffusion draws DiffusionRet's denoising (full samplers) or a DITS query path")
    states, cand = scores.chain_of(direction, query)
    if states.ndim != 2 or states.shape[1] != len(cand):
        raise ConfigError(f"the sampler's state has shape {states.shape[1:]}, not one value per candidate",
                          hint="viz diffusion draws score-vector samplers (DiffusionRet's DDIM/DDPM)")
    cv = scores.caption_video
    if direction == "t2v":
        gt_cols = np.array([cv[query]])
        base = scores.stage1
        names = [scores.video_ids[c] for c in cand]
    else:
        gt_cols = np.flatnonzero(cv == query)
        base = scores.stage1.t()
        names = [f"caption {c}" for c in cand]
    gt_pos = [i for i, c in enumerate(cand) if c in set(gt_cols.tolist())]
    labels = [f"{i + 1}. {name} (S {float(base[query, c]):.2f})" for i, (name, c) in enumerate(zip(names, cand))]
    title = _query_title(scores, direction, query)
    if len(gt_cols):
        title += (f"\nground truth rank: stage 1 {_gt_rank(scores, direction, query, False):g} -> re-ranked "
                  f"{_gt_rank(scores, direction, query, True):g}"
                  + ("" if gt_pos else f" (not among the top {len(cand)})"))
    return draw_diffusion(states, step_labels=scores.step_labels, gt_positions=gt_pos, candidate_labels=labels,
                          title=title, snapshots=snapshots)


@torch.no_grad()
def _query_path_figure(scores, *, model, query: int, direction: str):
    """DITS: v_{T'} = t moved toward the video side; each state scored against the gallery."""
    from diffret_cli.model.diffusionret import TextFeatures

    if direction != "t2v":
        raise ConfigError("a truncated sampler moves text queries only", hint="pass --direction t2v")
    tf = scores.text
    one = slice(query, query + 1)
    record: dict = {}
    g = torch.Generator(device=tf.cls.device).manual_seed(int(scores.settings.get("seed", 0)))
    v0 = model.query_embedding(tf.cls[one], steps=scores.settings.get("steps"), generator=g, record=record)
    chain = record.get("trajectory") or []
    if not chain or not chain[0]:
        raise ConfigError(f"{type(model).__name__}.query_embedding recorded no trajectory",
                          hint="the sampler must return its states when called with record=True")
    states = torch.cat([torch.stack([s["x_t"][0] for s in chain[0]]), v0])  # v_T' .. v_1, then v_0
    m = states.shape[0]
    text = TextFeatures(tf.tokens[one].expand(m, -1, -1), tf.cls[one].expand(m, -1), tf.mask[one].expand(m, -1))
    s = model.scores(states, text, scores.video).float().cpu().numpy()  # [steps + 1, V]
    gt = int(scores.caption_video[query])
    others = np.delete(s, gt, axis=1)
    labels = [f"v_{m - 1 - i}" for i in range(m)]
    return draw_query_path(s[:, gt], others.max(axis=1), step_labels=labels,
                           title=_query_title(scores, direction, query))
