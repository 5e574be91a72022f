"""Paper Figure C: text-to-video results, each query's top-5 videos before and after
re-ranking, as thumbnail strips with the ground truth framed in green."""

from __future__ import annotations

import textwrap

import numpy as np
import torch

from diffret_cli.errors import ConfigError
from diffret_cli.metrics import t2v_ranks
from diffret_cli.viz.frames import GT_COLOR, OTHER_COLOR, model_frames, new_figure, strip

__all__ = ["pick_queries", "draw_examples", "examples_figure"]


def pick_queries(before: np.ndarray, after: np.ndarray, count: int) -> list[int]:
    """Queries worth looking at: the ones re-ranking lifted most, then the ones it dropped
    most, then ones it left alone (ties by query index), ``count`` in all."""
    before, after = np.asarray(before), np.asarray(after)
    gain = before - after
    idx = np.arange(gain.size)
    up = sorted(idx[gain > 0], key=lambda i: (-gain[i], i))
    down = sorted(idx[gain < 0], key=lambda i: (gain[i], i))
    same = sorted(idx[gain == 0], key=lambda i: (before[i], i))
    picked: list[int] = []
    # interleave so a small count still shows a win and a loss
    for group in (up[:1], down[:1], up[1:], down[1:], same):
        for i in group:
            if len(picked) < count and int(i) not in picked:
                picked.append(int(i))
    return picked


def draw_examples(items: list[dict], *, top: int = 5):
    """``items``: dicts with ``query`` (text) and ``rows``: a list of (row label, cells),
    each cell a dict with ``video_id``, ``score``, ``ground_truth`` and ``image`` (a
    thumbnail strip). Cell axes are labelled ``cell:<item>:<row>:<position>`` and carry
    the video id as their gid (what the tests look up)."""
    n_rows = sum(len(it["rows"]) for it in items)
    fig = new_figure(2.3 * top + 1.2, 0.95 * n_rows + 0.45 * len(items))
    sub = fig.subfigures(len(items), 1, squeeze=False)[:, 0]
    for q, (it, sf) in enumerate(zip(items, sub)):
        sf.suptitle("\n".join(textwrap.wrap(it["query"], 110)), fontsize=9, x=0.01, ha="left")
        axes = sf.subplots(len(it["rows"]), top, squeeze=False)
        for r, (label, cells) in enumerate(it["rows"]):
            for c in range(top):
                ax = axes[r, c]
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_label(f"cell:{q}:{r}:{c}")
                if c == 0:
                    ax.set_ylabel(label, fontsize=8)
                if c >= len(cells):
                    ax.set_frame_on(False)
                    continue
                cell = cells[c]
                ax.set_gid(cell["video_id"])
                ax.imshow(cell["image"])
                gt = bool(cell["ground_truth"])
                for side in ax.spines.values():
                    side.set_edgecolor(GT_COLOR if gt else OTHER_COLOR)
                    side.set_linewidth(4 if gt else 0.8)
                ax.set_title(f"{c + 1}. {cell['video_id']}  {cell['score']:.3f}" + ("  \u2713" if gt else ""),
                             fontsize=7, color=GT_COLOR if gt else "black")
    return fig


def examples_figure(scores, *, model, queries: list[int] | None = None, count: int = 3, top: int = 5,
                    frames_per_video: int = 4):
    """Figure C for a scored split: ``queries`` (caption indices) or ``count`` picked by
    :func:`pick_queries`; rows "stage 1" and, when the split was re-ranked, "re-ranked"."""
    c = len(scores.captions)
    for q in queries or []:
        if not 0 <= q < c:
            raise ConfigError(f"query {q} is out of range: {scores.dataset} {scores.split_name} has {c} captions",
                              hint=f"pass --query 0..{c - 1}")
    cv = scores.caption_video
    before = t2v_ranks(scores.stage1, cv)
    after = t2v_ranks(scores.t2v, cv) if scores.t2v is not None else before
    queries = list(queries) if queries else pick_queries(before, after, count)
    matrices = [("stage 1", scores.stage1)] + ([("re-ranked", scores.t2v)] if scores.t2v is not None else [])
    max_frames = model.config["max_frames"]
    thumbs: dict[str, np.ndarray] = {}
    items = []
    for q in queries:
        rows = []
        for label, m in matrices:
            vals, idx = torch.as_tensor(m[q]).float().topk(min(top, m.shape[1]))
            cells = []
            for v, s in zip(idx.tolist(), vals.tolist()):
                vid = scores.video_ids[v]
                if vid not in thumbs:
                    thumbs[vid] = strip(model_frames(scores.split, vid, max_frames), frames_per_video)
                cells.append({"video_id": vid, "score": s, "ground_truth": v == int(cv[q]), "image": thumbs[vid]})
            rank = before[q] if label == "stage 1" else after[q]
            rows.append((f"{label}\n(gt rank {rank:g})", cells))
        items.append({"query": f"caption {q}: \u201c{scores.captions[q]}\u201d", "rows": rows})
    return draw_examples(items, top=top)
