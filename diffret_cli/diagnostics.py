"""Re-ranking diagnostics: does the generative stage earn its cost?

DiffusionRet re-ranks only each query's top K stage-1 candidates (paper section 3.3,
Eq. 13: ``S' = S + alpha * softmax(tau * x0)`` on the K candidates), so three numbers
decide whether stage 2 helps, per direction:

- **moves**: how many queries re-ranking moved up, moved down or left alone, and by how
  many ranks (the ground truth's rank, counted as :mod:`diffret_cli.metrics` counts it);
- **ceiling**: how often the ground truth was among the K candidates at all; no
  re-ranker can help a query whose ground truth is outside them;
- **sample accuracy**: over the queries whose ground truth is among the K, how often the
  generated distribution alone (the sample x0, candidates ranked by it and nothing else)
  puts a ground truth first, against stage 1's order of the same K and against chance.

Ground truth follows :mod:`diffret_cli.metrics`: text-to-video, caption ``c`` belongs to
video ``caption_video[c]``; video-to-text, a video is answered by any of its captions (a
video's rank is its best caption's group rank; a video without a caption is no query).

Everything here is a pure function of tensors / arrays; nothing reads files.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import torch

from diffret_cli.metrics import t2v_ranks, v2t_ranks

__all__ = ["rank_moves", "topk_ceiling", "sample_accuracy", "record_arrays", "direction_diagnostics",
           "rerank_diagnostics"]


def _number(x: float) -> int | float:
    """A whole number as an int (JSON ``3``, not ``3.0``), else the float (a tie's half rank)."""
    return int(x) if float(x).is_integer() else float(x)


def rank_moves(before: np.ndarray, after: np.ndarray) -> dict[str, Any]:
    """How re-ranking moved each query's ground truth: ``before``/``after`` are the 1-based
    ranks of the same queries as :mod:`diffret_cli.metrics` gives them (expected ranks: a
    tie counts half, so a rank can end in .5). ``histogram`` maps ranks gained (positive:
    moved up) to a count of queries."""
    before = np.asarray(before, dtype=np.float64)
    after = np.asarray(after, dtype=np.float64)
    if before.shape != after.shape:
        raise ValueError(f"before {before.shape} and after {after.shape} must hold the same queries")
    gain = before - after
    up, down = gain[gain > 0], -gain[gain < 0]

    def summary(x: np.ndarray) -> dict[str, float]:
        return {"mean": float(x.mean()) if x.size else 0.0, "max": _number(x.max()) if x.size else 0}

    return {"queries": int(gain.size), "up": int(up.size), "down": int(down.size),
            "same": int((gain == 0).sum()), "ranks_up": summary(up), "ranks_down": summary(down),
            "mean_gain": float(gain.mean()) if gain.size else 0.0,
            "histogram": {_number(k): int(v) for k, v in sorted(Counter(gain.tolist()).items())}}


def topk_ceiling(is_gt: np.ndarray) -> dict[str, Any]:
    """Fraction (percent) of queries with a ground truth among their K candidates.
    ``is_gt`` [Q,K] bool: candidate k of query q is a ground truth."""
    is_gt = np.asarray(is_gt, dtype=bool)
    hit = is_gt.any(axis=1)
    return {"k": int(is_gt.shape[1]), "queries": int(hit.size), "in_topk": int(hit.sum()),
            "percent": float(100.0 * hit.mean()) if hit.size else 0.0}


def _top1_credit(values: np.ndarray, is_gt: np.ndarray) -> np.ndarray:
    """Per query, the chance that the candidate ranked first by ``values`` is a ground truth
    when ties are broken at random (an all-equal row scores its share of ground truths, not
    100%)."""
    top = values == values.max(axis=1, keepdims=True)
    return (top & is_gt).sum(axis=1) / top.sum(axis=1)


def _rank_in_k(values: np.ndarray, is_gt: np.ndarray) -> np.ndarray:
    """Expected 1-based rank of the best ground truth among the K by ``values``: 1 + the
    other candidates strictly above it + half of those tied with it (the tie convention of
    :mod:`diffret_cli.metrics`)."""
    best_gt = np.where(is_gt, values, -np.inf).max(axis=1, keepdims=True)
    above = ((values > best_gt) & ~is_gt).sum(axis=1)
    tied = ((values == best_gt) & ~is_gt).sum(axis=1)
    return 1 + above + tied / 2


def sample_accuracy(samples: np.ndarray, is_gt: np.ndarray) -> dict[str, Any]:
    """Accuracy of the generated distribution alone over the K candidates.

    ``samples`` [Q,K]: the sampler's output x0 per candidate; ``is_gt`` [Q,K]: candidate k
    is a ground truth. Candidates are in stage-1 order (column 0 is stage 1's best, as
    :func:`diffret_cli.rerank.rerank_direction` gathers them), so stage 1's order of the same
    K is ``-column index``. Only queries with a ground truth among the K count: on the
    others every order is wrong. ``chance`` is the expected top-1 of a random order
    (ground truths among the K / K; 1/K with one ground truth)."""
    samples = np.asarray(samples, dtype=np.float64)
    is_gt = np.asarray(is_gt, dtype=bool)
    if samples.shape != is_gt.shape:
        raise ValueError(f"samples {samples.shape} and is_gt {is_gt.shape} must both be [queries, K]")
    keep = is_gt.any(axis=1)
    s, g = samples[keep], is_gt[keep]
    k = samples.shape[1]
    if not keep.any():
        return {"k": k, "queries": 0, "sample_top1": None, "stage1_top1": None, "chance_top1": None,
                "sample_mean_rank": None, "stage1_mean_rank": None, "chance_mean_rank": None}
    stage1 = np.broadcast_to(-np.arange(k, dtype=np.float64), s.shape)
    n_gt = g.sum(axis=1)
    return {
        "k": k, "queries": int(keep.sum()),
        "sample_top1": float(100.0 * _top1_credit(s, g).mean()),
        "stage1_top1": float(100.0 * _top1_credit(stage1, g).mean()),
        "chance_top1": float(100.0 * (n_gt / k).mean()),
        "sample_mean_rank": float(_rank_in_k(s, g).mean()),
        "stage1_mean_rank": float(_rank_in_k(stage1, g).mean()),
        # best of n ground truths in a random order of K: E[min rank] = (K + 1) / (n + 1)
        "chance_mean_rank": float(((k + 1) / (n_gt + 1)).mean()),
    }


def record_arrays(chunks: list[dict[str, torch.Tensor]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows [Q], candidates [Q,K], samples [Q,...]) from one direction of
    ``rerank(..., record=...)``, concatenated over its chunks, rows ascending."""
    if not chunks:
        raise ValueError("the re-ranking record of this direction is empty")
    rows = torch.cat([c["rows"] for c in chunks]).cpu().numpy()
    cand = torch.cat([c["candidates"] for c in chunks]).cpu().numpy()
    samples = torch.cat([c["sample"].float() for c in chunks]).cpu().numpy()
    order = np.argsort(rows, kind="stable")
    return rows[order], cand[order], samples[order]


def direction_diagnostics(*, before: np.ndarray, after: np.ndarray, is_gt: np.ndarray | None,
                          samples: np.ndarray | None) -> dict[str, Any]:
    """One direction's diagnostics from ranks before/after, the candidates' ground-truth mask
    [Q,K] and the samples [Q,K]. ``is_gt`` None (no shortlist: a family that rescores the
    whole gallery) leaves ``ceiling`` and ``sample`` None; ``samples`` None, or shaped
    otherwise (the query embedding of a truncated sampler), leaves ``sample`` None."""
    out: dict[str, Any] = {"moves": rank_moves(before, after), "ceiling": None, "sample": None}
    if is_gt is not None:
        out["ceiling"] = topk_ceiling(is_gt)
        if samples is not None and np.shape(samples) == np.shape(is_gt):
            out["sample"] = sample_accuracy(samples, is_gt)
    return out


def _shortlist(scores: torch.Tensor, direction: str, record: dict | None,
               topk: int | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(candidates [Q,K], samples) of one direction: from the record when it has that
    direction, else stage 1's top ``topk``, else (None, None)."""
    if record is not None and record.get(direction):
        rows, cand, samples = record_arrays(record[direction])
        if not np.array_equal(rows, np.arange(scores.shape[0])):
            raise ValueError(f"the {direction} record does not cover each of the {scores.shape[0]} queries once")
        return cand, samples
    if topk is not None:
        return scores.topk(min(topk, scores.shape[1]), dim=1, sorted=True).indices.cpu().numpy(), None
    return None, None


def rerank_diagnostics(scores: torch.Tensor, fused: tuple[torch.Tensor, torch.Tensor],
                       caption_video: np.ndarray, *, record: dict | None = None,
                       topk_t2v: int | None = None, topk_v2t: int | None = None) -> dict[str, Any]:
    """Both directions' diagnostics of one split.

    ``scores``: stage-1 S [C,V] (captions x videos); ``fused``: the generative scores
    (t2v [C,V], v2t [V,C]) as ``model.rerank`` / :func:`diffret_cli.rerank.rerank` return
    them; ``caption_video`` [C]: each caption's video index; ``record``: the dict filled by
    ``rerank(..., record=record)`` (per direction, per chunk: rows, candidates, sample).
    A direction missing from the record takes stage 1's top ``topk_t2v`` / ``topk_v2t`` as
    its candidates (``sample`` None), or without those reports ``moves`` only.

    Returns ``{"t2v": {...}, "v2t": {...}}``, each with ``moves``, ``ceiling``, ``sample``.
    """
    caption_video = np.asarray(caption_video, dtype=np.int64)
    scores = scores.float()
    t2v, v2t = fused[0].float(), fused[1].float()
    num_videos = scores.shape[1]
    out: dict[str, Any] = {}

    # text to video: one ground-truth video per caption
    cand, samples = _shortlist(scores, "t2v", record, topk_t2v)
    out["t2v"] = direction_diagnostics(before=t2v_ranks(scores, caption_video), after=t2v_ranks(t2v, caption_video),
                                       is_gt=None if cand is None else cand == caption_video[:, None],
                                       samples=samples)

    # video to text: a video is answered by any of its captions; videos without one are
    # no query (diffret_cli.metrics.v2t_ranks drops them the same way)
    sim_v2t = scores.t()
    cand, samples = _shortlist(sim_v2t, "v2t", record, topk_v2t)
    has = np.zeros(num_videos, dtype=bool)
    has[caption_video] = True
    is_gt = None if cand is None else (caption_video[cand] == np.arange(num_videos)[:, None])[has]
    out["v2t"] = direction_diagnostics(before=v2t_ranks(sim_v2t, caption_video), after=v2t_ranks(v2t, caption_video),
                                       is_gt=is_gt, samples=None if samples is None else samples[has])
    return out
