"""Training losses of both stages."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from diffret_cli.diffusion import DiffusionCoefficients, one_hot_target


def symmetric_infonce(logits: torch.Tensor) -> torch.Tensor:
    """Stage 1: (CE(logits, diag) + CE(logits.T, diag)) / 2 over a square [B,B] matrix of
    scaled similarities (S x CLIP logit scale; paper Eq. 11)."""
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


def generation_loss_from_output(x0_hat: torch.Tensor, x0: torch.Tensor, *, kind: str = "kl",
                                temp: float = 100.0, reduction: str = "mean") -> torch.Tensor:
    """The stage-2 objective on a denoiser output.

    "kl" (what the paper calls KL): cross-entropy of softmax(temp * x0_hat) against the
    positive, which is always candidate 0. "mse": ||x0_hat - x0||^2 per query.
    """
    if kind == "kl":
        target = torch.zeros(x0_hat.shape[0], dtype=torch.long, device=x0_hat.device)
        return F.cross_entropy(x0_hat * temp, target, reduction=reduction)
    if kind == "mse":
        per = ((x0_hat - x0) ** 2).mean(dim=-1)
        return per.mean() if reduction == "mean" else per
    raise ValueError(f"unknown generation loss {kind!r}; use 'kl' or 'mse'")


def generation_loss(denoiser, coef: DiffusionCoefficients, *, text, video, video_mask,
                    t: torch.Tensor, noise: torch.Tensor, kind: str = "kl", temp: float = 100.0,
                    negative_value: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise the one-hot target to x_t (Ho et al. Eq. 4), predict x0, score it.

    Returns (loss, x0_hat)."""
    x0 = one_hot_target(noise.shape[0], noise.shape[1], negative_value=negative_value,
                        device=noise.device).to(noise.dtype)
    x_t = coef.q_sample(x0, t, noise)
    x0_hat = denoiser(x_t, t, text, video, video_mask)
    return generation_loss_from_output(x0_hat, x0, kind=kind, temp=temp), x0_hat


def hard_negative_candidates(sim: torch.Tensor, num_candidates: int,
                             same_video: torch.Tensor | None = None) -> torch.Tensor:
    """Candidate indices [B,K] for each query row of a stage-1 similarity ``sim`` [B,B]:
    the positive (the diagonal) first, then the K-1 most similar others, excluding entries
    that show the same video (``same_video`` [B,B] bool, diagonal included or not)."""
    b = sim.shape[0]
    if num_candidates > b:
        raise ValueError(f"{num_candidates} candidates need a global batch of at least that many "
                         f"samples, got {b}")
    masked = sim.detach().clone()
    eye = torch.eye(b, dtype=torch.bool, device=sim.device)
    exclude = eye if same_video is None else (same_video | eye)
    masked = masked.masked_fill(exclude, float("-inf"))
    negatives = masked.topk(num_candidates - 1, dim=1).indices
    return torch.cat([torch.arange(b, device=sim.device)[:, None], negatives], dim=1)
