"""Training losses of both stages."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from diffret_cli.diffusion import DiffusionCoefficients, one_hot_target


def symmetric_infonce(logits: torch.Tensor) -> torch.Tensor:
    """Stage 1: (CE(logits, diag) + CE(logits.T, diag)) / 2 over a square [B,B] matrix of
    scaled similarities (S x CLIP logit scale; paper Eq. 11)."""
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


def generation_loss_from_output(x0_hat: torch.Tensor, x0: torch.Tensor, *, kind: str = "kl",
                                temp: float = 100.0, reduction: str = "mean",
                                candidate_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The stage-2 objective on a denoiser output.

    "kl" (what the paper calls KL): cross-entropy of softmax(temp * x0_hat) against the
    positive, which is always candidate 0. "mse": ||x0_hat - x0||^2 per query.
    ``candidate_mask`` [B,K] bool: slots that take part (see
    :func:`hard_negative_candidates`); a masked slot is left out of the softmax ("kl")
    or of the mean ("mse"), so it contributes nothing to the loss or its gradient.
    """
    if kind not in ("kl", "mse"):
        raise ValueError(f"unknown generation loss {kind!r}; use 'kl' or 'mse'")
    if candidate_mask is not None and not bool(candidate_mask[:, 0].all()):
        raise ValueError("candidate_mask must keep slot 0 (the positive) of every row")
    if kind == "kl":
        target = torch.zeros(x0_hat.shape[0], dtype=torch.long, device=x0_hat.device)
        logits = x0_hat * temp
        if candidate_mask is not None:
            logits = logits.masked_fill(~candidate_mask, float("-inf"))
        return F.cross_entropy(logits, target, reduction=reduction)
    sq = (x0_hat - x0) ** 2
    if candidate_mask is None:
        per = sq.mean(dim=-1)
    else:
        m = candidate_mask.to(sq.dtype)
        per = (sq * m).sum(dim=-1) / m.sum(dim=-1)
    return per.mean() if reduction == "mean" else per


def generation_loss(denoiser, coef: DiffusionCoefficients, *, text, video, video_mask,
                    t: torch.Tensor, noise: torch.Tensor, kind: str = "kl", temp: float = 100.0,
                    negative_value: float = 0.0,
                    candidate_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise the one-hot target to x_t (Ho et al. Eq. 4), predict x0, score it
    (``candidate_mask``: see :func:`generation_loss_from_output`; a denoiser whose
    ``masks_candidates`` is True also leaves the masked slots out of its attention).

    Returns (loss, x0_hat)."""
    x0 = one_hot_target(noise.shape[0], noise.shape[1], negative_value=negative_value,
                        device=noise.device).to(noise.dtype)
    x_t = coef.q_sample(x0, t, noise)
    masked = candidate_mask is not None and getattr(denoiser, "masks_candidates", False)
    x0_hat = (denoiser(x_t, t, text, video, video_mask, candidate_mask=candidate_mask) if masked
              else denoiser(x_t, t, text, video, video_mask))
    return (generation_loss_from_output(x0_hat, x0, kind=kind, temp=temp, candidate_mask=candidate_mask),
            x0_hat)


def generation_loss_indexed(denoiser, coef: DiffusionCoefficients, *, text, video, video_mask,
                            query_index: torch.Tensor, cand_index: torch.Tensor, t: torch.Tensor,
                            noise: torch.Tensor, kind: str = "kl", temp: float = 100.0,
                            negative_value: float = 0.0,
                            candidate_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`generation_loss` on unique features plus indices, through the denoiser's
    ``forward_indexed``: ``text`` [N,D], ``video`` [M,T,D], ``video_mask`` [M,T];
    ``query_index`` [B] and ``cand_index`` [B,K] (positive first) index the query and the
    candidate modality of the denoiser's direction (t2v: texts / videos; v2t: videos /
    texts). Same loss and gradients as :func:`generation_loss` on the gathered features,
    within float32 rounding, without the [B,K,T,D] gather.

    Returns (loss, x0_hat)."""
    x0 = one_hot_target(noise.shape[0], noise.shape[1], negative_value=negative_value,
                        device=noise.device).to(noise.dtype)
    x_t = coef.q_sample(x0, t, noise)
    masked = candidate_mask is not None and getattr(denoiser, "masks_candidates", False)
    x0_hat = denoiser.forward_indexed(x_t, t, text=text, video=video, video_mask=video_mask,
                                      query_index=query_index, cand_index=cand_index,
                                      **({"candidate_mask": candidate_mask} if masked else {}))
    return (generation_loss_from_output(x0_hat, x0, kind=kind, temp=temp, candidate_mask=candidate_mask),
            x0_hat)


#: ``stage2.hard_negatives``: how a query's K-1 negatives are chosen from the global batch.
HARD_NEGATIVE_MODES = ("exclusive", "official")


class Candidates(NamedTuple):
    """Each query's K candidates: ``index`` [B,K] into the global batch (the positive at
    slot 0) and ``valid`` [B,K] bool (False: a padding slot the loss leaves out)."""

    index: torch.Tensor
    valid: torch.Tensor


def hard_negative_candidates(sim: torch.Tensor, num_candidates: int, same_video: torch.Tensor | None = None,
                             *, mode: str = "exclusive") -> Candidates:
    """The candidates of each query row of a stage-1 similarity ``sim`` [B,B] (paper
    section 3.4: the positive, then the K-1 most similar others of the global batch).

    ``same_video`` [B,B] bool marks entries that show the query's own video (the diagonal
    is always excluded). A batch drawn from MSRVTT (20 captions a video) holds two
    captions of one video about half the time, and then a row has fewer than K-1 = B-1
    entries that are real negatives:

    - ``"exclusive"`` (default): a negative is never the positive nor a same-video
      entry. A row with fewer valid negatives than K-1 fills its last slots with its
      hardest valid negative again and marks them invalid (``valid`` False); the loss
      leaves them out, so that row is a softmax over its positive and its real negatives
      only. (The denoiser still sees the repeated negative among its inputs; no slot
      ever shows it the positive or a same-video item as a negative.) A row with no
      valid negative at all repeats its positive in masked slots (its loss is then 0).
    - ``"official"``: the official code's choice, kept for exact reproduction: masked
      entries rank below every valid one and ``topk`` takes them when it runs out, so
      the positive or its same-video twin comes back labelled as a negative. Every
      slot is valid.
    """
    if mode not in HARD_NEGATIVE_MODES:
        raise ValueError(f"unknown hard-negative mode {mode!r}; use one of {', '.join(HARD_NEGATIVE_MODES)}")
    b = sim.shape[0]
    if num_candidates > b:
        raise ValueError(f"{num_candidates} candidates need a global batch of at least that many "
                         f"samples, got {b}")
    eye = torch.eye(b, dtype=torch.bool, device=sim.device)
    exclude = eye if same_video is None else (same_video.to(torch.bool) | eye)
    masked = sim.detach().float().masked_fill(exclude, float("-inf"))
    negatives = masked.topk(num_candidates - 1, dim=1).indices  # sorted: valid entries first
    rows = torch.arange(b, device=sim.device)
    index = torch.cat([rows[:, None], negatives], dim=1)
    if mode == "official":
        return Candidates(index, torch.ones_like(index, dtype=torch.bool))
    valid_neg = ~exclude.gather(1, negatives)
    # the filler: the row's hardest valid negative, or its positive when it has none
    filler = torch.where(valid_neg[:, 0], negatives[:, 0], rows)
    negatives = torch.where(valid_neg, negatives, filler[:, None])
    valid = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=sim.device), valid_neg], dim=1)
    return Candidates(torch.cat([rows[:, None], negatives], dim=1), valid)
