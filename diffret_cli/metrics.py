"""Retrieval metrics: R@K, median and mean rank, Rsum, with ties counted fairly.

A query's ground truth with ``h`` gallery items scored strictly higher and ``t`` other
items tied with it could sit anywhere in the tie; every order of the tie is taken as
equally likely (tie-aware metrics, McSherry & Najork, ECIR 2008):

- expected rank = 1 + h + t/2;
- expected R@k = min(1, max(0, (k - h) / (t + 1))) for the query.

Without ties this is the usual rank and R@k. Ties neither inflate the count of queries
(the common numpy version finds the ground truth by position in a sorted row and
double-counts tied queries) nor reward a model that scores everything alike (counting
only strictly higher items gives a constant model R@1 = 100; here it scores chance,
1/G). ``tied`` reports how many queries had a tie at their ground truth.

Protocols (see diffret_cli.data.types.Protocol):
- square matrices (one caption per video): the diagonal is the ground truth;
- many captions per video: every caption is a text-to-video query against all videos;
  video-to-text scores each caption group by its best caption and ranks the video's own
  group among all groups.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

KS = (1, 5, 10, 50)


@dataclass(frozen=True)
class Ranks:
    """Per query: ``higher`` items scored strictly above the ground truth and ``tied``
    other items scored exactly the same (int64 arrays of the same length)."""

    higher: np.ndarray
    tied: np.ndarray

    @property
    def expected(self) -> np.ndarray:
        """Expected 1-based rank over every order of the tie: 1 + h + t/2 (float64)."""
        return 1.0 + self.higher + self.tied / 2.0

    def recall_at(self, k: int) -> np.ndarray:
        """Per query, the probability that the ground truth is in the top ``k`` when the
        tie is broken uniformly at random: min(1, max(0, (k - h) / (t + 1)))."""
        return np.clip((k - self.higher) / (self.tied + 1.0), 0.0, 1.0)

    def __len__(self) -> int:
        return int(self.higher.size)


def rank_counts(scores: torch.Tensor | np.ndarray, gt: torch.Tensor | np.ndarray) -> Ranks:
    """For row i of ``scores`` [Q,G] and its ground-truth column ``gt[i]``: how many
    columns score strictly higher, and how many others score exactly the same."""
    s = torch.as_tensor(scores).float() if not isinstance(scores, torch.Tensor) else scores
    g = torch.as_tensor(gt, dtype=torch.long, device=s.device)
    target = s.gather(1, g[:, None])
    higher = (s > target).sum(dim=1)
    tied = (s == target).sum(dim=1) - 1  # the ground truth equals itself
    # a NaN ground-truth score compares false with everything: rank it last, not first
    nan = torch.isnan(target[:, 0])
    higher = torch.where(nan, torch.full_like(higher, s.shape[1] - 1), higher)
    tied = torch.where(nan, torch.zeros_like(tied), tied)
    return Ranks(higher.cpu().numpy().astype(np.int64), tied.cpu().numpy().astype(np.int64))


def ranks_from_scores(scores: torch.Tensor | np.ndarray, gt: torch.Tensor | np.ndarray) -> np.ndarray:
    """Expected 1-based rank of column ``gt[i]`` in row i of ``scores`` [Q,G]: 1 + h + t/2
    (float64; a whole number wherever the ground truth ties nothing)."""
    return rank_counts(scores, gt).expected


def tied_queries(scores: torch.Tensor | np.ndarray, gt: torch.Tensor | np.ndarray) -> int:
    """Queries whose ground truth shares its exact score with another gallery item.

    With DiffusionRet's similarity, padded tokens/frames compete as exact zeros, so a
    degenerate model can tie whole rows; this count makes that visible next to the metrics."""
    return int((rank_counts(scores, gt).tied > 0).sum())


def metrics_from_ranks(ranks: np.ndarray | Ranks, *, median: str = "mid") -> dict[str, float]:
    """R@K (percent), MdR, MnR, Rsum from 1-based ranks, or from :class:`Ranks` (then
    R@K is the expected recall over every order of each tie, and the ranks are the
    expected ranks).

    ``median="mid"`` is the usual median (mean of the two middle values for an even
    count); ``"lower"`` takes the lower middle value, as CLIP4Clip's multi-caption
    text-to-video metric (``torch.median``) does, which the published MSVD numbers use.
    """
    if isinstance(ranks, Ranks):
        counts = ranks
    else:
        r = np.asarray(ranks, dtype=np.float64)
        counts = Ranks(r - 1.0, np.zeros_like(r))
    if len(counts) == 0:
        raise ValueError("no queries to evaluate")
    expected = counts.expected
    out = {f"R@{k}": float(100.0 * np.mean(counts.recall_at(k))) for k in KS}
    if median == "lower":
        out["MdR"] = float(np.sort(expected)[(expected.size - 1) // 2])
    elif median == "mid":
        out["MdR"] = float(np.median(expected))
    else:
        raise ValueError(f"median must be 'mid' or 'lower', got {median!r}")
    out["MnR"] = float(np.mean(expected))
    out["Rsum"] = out["R@1"] + out["R@5"] + out["R@10"]
    out["queries"] = int(expected.size)
    out["tied"] = int((counts.tied > 0).sum())
    return out


def caption_groups(caption_video: np.ndarray, num_videos: int) -> list[np.ndarray]:
    caption_video = np.asarray(caption_video)
    return [np.flatnonzero(caption_video == v) for v in range(num_videos)]


def t2v_counts(t2v: torch.Tensor, caption_video: np.ndarray) -> Ranks:
    """t2v [C,V]: caption c's ground truth is video caption_video[c]."""
    return rank_counts(t2v, caption_video)


def v2t_counts(v2t: torch.Tensor, caption_video: np.ndarray) -> Ranks:
    """v2t [V,C]: each video ranks caption groups scored by their best caption."""
    v2t = torch.as_tensor(v2t)
    num_videos = v2t.shape[0]
    cv = torch.as_tensor(np.asarray(caption_video), dtype=torch.long, device=v2t.device)
    if v2t.shape[1] == num_videos and torch.equal(cv, torch.arange(num_videos, device=v2t.device)):
        group = v2t
    else:  # max over each video's captions: [V, V]
        group = torch.full((num_videos, num_videos), float("-inf"), dtype=v2t.dtype, device=v2t.device)
        group = group.scatter_reduce(1, cv.expand(num_videos, -1), v2t, reduce="amax")
    # a video with no caption has no ground truth: it is not a video-to-text query; its
    # caption-less group (-inf everywhere) never ties a real one
    has = torch.zeros(num_videos, dtype=torch.bool, device=group.device)
    has[cv] = True
    rows = torch.nonzero(has).squeeze(1)
    sub = group[rows][:, rows]  # only groups that exist compete
    return rank_counts(sub, torch.arange(rows.numel(), device=group.device))


def t2v_ranks(t2v: torch.Tensor, caption_video: np.ndarray) -> np.ndarray:
    """Expected 1-based text-to-video ranks (see :func:`t2v_counts`)."""
    return t2v_counts(t2v, caption_video).expected


def v2t_ranks(v2t: torch.Tensor, caption_video: np.ndarray) -> np.ndarray:
    """Expected 1-based video-to-text ranks (see :func:`v2t_counts`)."""
    return v2t_counts(v2t, caption_video).expected


def retrieval_metrics(t2v: torch.Tensor, v2t: torch.Tensor | None, caption_video: np.ndarray) -> dict:
    """{"t2v": {...}, "v2t": {...}} for score matrices t2v [C,V] and v2t [V,C].

    With several captions per video, the text-to-video median is the lower middle value
    (the official multi-caption convention, see :func:`metrics_from_ranks`)."""
    caption_video = np.asarray(caption_video)
    multi = caption_video.size != len(np.unique(caption_video))
    out = {"t2v": metrics_from_ranks(t2v_counts(t2v, caption_video), median="lower" if multi else "mid")}
    if v2t is not None:
        out["v2t"] = metrics_from_ranks(v2t_counts(v2t, caption_video))
    return out
