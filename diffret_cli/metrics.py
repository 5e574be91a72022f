"""Retrieval metrics: R@K, median and mean rank, Rsum.

The rank of a query's ground truth is 1 + the number of gallery items scored strictly
higher, so ties never inflate a query's count (the common numpy implementation finds the
ground truth by position in a sorted row and double-counts queries on ties).

Protocols (see diffret_cli.data.types.Protocol):
- square matrices (one caption per video): the diagonal is the ground truth;
- many captions per video: every caption is a text-to-video query against all videos;
  video-to-text scores each caption group by its best caption and ranks the video's own
  group among all groups.
"""

from __future__ import annotations

import numpy as np
import torch

KS = (1, 5, 10, 50)


def ranks_from_scores(scores: torch.Tensor | np.ndarray, gt: torch.Tensor | np.ndarray) -> np.ndarray:
    """1-based rank of column ``gt[i]`` in row i of ``scores`` [Q,G] (strictly-higher count)."""
    s = torch.as_tensor(scores).float() if not isinstance(scores, torch.Tensor) else scores
    g = torch.as_tensor(gt, dtype=torch.long, device=s.device)
    target = s.gather(1, g[:, None])
    return ((s > target).sum(dim=1) + 1).cpu().numpy().astype(np.int64)


def tied_queries(scores: torch.Tensor | np.ndarray, gt: torch.Tensor | np.ndarray) -> int:
    """Queries whose ground truth shares its exact score with another gallery item.

    The strictly-higher rank gives such a query the best rank of the tie. With DiffusionRet's
    similarity, padded tokens/frames compete as exact zeros, so a degenerate model can tie
    whole rows; this count makes that visible next to the metrics."""
    s = torch.as_tensor(scores).float() if not isinstance(scores, torch.Tensor) else scores
    g = torch.as_tensor(gt, dtype=torch.long, device=s.device)
    target = s.gather(1, g[:, None])
    return int(((s == target).sum(dim=1) > 1).sum().item())


def metrics_from_ranks(ranks: np.ndarray, *, median: str = "mid") -> dict[str, float]:
    """R@K (percent), MdR, MnR, Rsum from 1-based ranks.

    ``median="mid"`` is the usual median (mean of the two middle values for an even
    count); ``"lower"`` takes the lower middle value, as CLIP4Clip's multi-caption
    text-to-video metric (``torch.median``) does, which the published MSVD numbers use.
    """
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size == 0:
        raise ValueError("no queries to evaluate")
    out = {f"R@{k}": float(100.0 * np.mean(ranks <= k)) for k in KS}
    if median == "lower":
        out["MdR"] = float(np.sort(ranks)[(ranks.size - 1) // 2])
    elif median == "mid":
        out["MdR"] = float(np.median(ranks))
    else:
        raise ValueError(f"median must be 'mid' or 'lower', got {median!r}")
    out["MnR"] = float(np.mean(ranks))
    out["Rsum"] = out["R@1"] + out["R@5"] + out["R@10"]
    out["queries"] = int(ranks.size)
    return out


def caption_groups(caption_video: np.ndarray, num_videos: int) -> list[np.ndarray]:
    caption_video = np.asarray(caption_video)
    return [np.flatnonzero(caption_video == v) for v in range(num_videos)]


def t2v_ranks(t2v: torch.Tensor, caption_video: np.ndarray) -> np.ndarray:
    """t2v [C,V]: caption c's ground truth is video caption_video[c]."""
    return ranks_from_scores(t2v, caption_video)


def v2t_ranks(v2t: torch.Tensor, caption_video: np.ndarray) -> np.ndarray:
    """v2t [V,C]: each video ranks caption groups scored by their best caption."""
    v2t = torch.as_tensor(v2t)
    num_videos = v2t.shape[0]
    cv = torch.as_tensor(np.asarray(caption_video), dtype=torch.long, device=v2t.device)
    if v2t.shape[1] == num_videos and torch.equal(cv, torch.arange(num_videos, device=v2t.device)):
        group = v2t
    else:  # max over each video's captions: [V, V]
        group = torch.full((num_videos, num_videos), float("-inf"), dtype=v2t.dtype, device=v2t.device)
        group = group.scatter_reduce(1, cv.expand(num_videos, -1), v2t, reduce="amax")
    # a video with no caption has no ground truth: it is not a video-to-text query
    has = torch.zeros(num_videos, dtype=torch.bool, device=group.device)
    has[cv] = True
    rows = torch.nonzero(has).squeeze(1)
    return ranks_from_scores(group[rows], rows.cpu().numpy())


def retrieval_metrics(t2v: torch.Tensor, v2t: torch.Tensor | None, caption_video: np.ndarray) -> dict:
    """{"t2v": {...}, "v2t": {...}} for score matrices t2v [C,V] and v2t [V,C].

    With several captions per video, the text-to-video median is the lower middle value
    (the official multi-caption convention, see :func:`metrics_from_ranks`)."""
    caption_video = np.asarray(caption_video)
    multi = caption_video.size != len(np.unique(caption_video))
    out = {"t2v": metrics_from_ranks(t2v_ranks(t2v, caption_video), median="lower" if multi else "mid")}
    out["t2v"]["tied"] = tied_queries(t2v, caption_video)
    if v2t is not None:
        out["v2t"] = metrics_from_ranks(v2t_ranks(v2t, caption_video))
    return out
