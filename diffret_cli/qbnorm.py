"""QB-Norm with the dynamic inverted softmax (Bogolin et al., "Cross Modal Retrieval with
Querybank Normalisation", CVPR 2022).

Why: some gallery items ("hubs") score high against many queries and crowd the top of
every ranking. Dividing each gallery column by how strongly a bank of typical queries
(the training captions) already matches it demotes hubs. The *dynamic* variant applies
this only to a test query whose top-1 item is a likely hub, i.e. lies in the activation
set, and leaves every other query's scores as they were.

Notation: ``s(q, j)`` a test query's score for gallery item ``j``; ``s(b, j)`` a bank
query's; ``beta`` the inverse temperature (20 in the paper); ``k`` how many top items of
each bank query form the activation set (1 in the paper).

1. activation set A = union over bank queries b of top-k_j s(b, j);
2. log-normaliser per gallery column: Z_j = logsumexp_b (beta s(b, j));
3. for a test query q with argmax_j s(q, j) in A:  s'(q, j) = exp(beta s(q, j) - Z_j)
   (= exp(beta s(q, j)) / sum_b exp(beta s(b, j)), without ever forming exp(beta s));
   every other query keeps s(q, j).

The result is a post-processing of the scores, to be reported beside the raw results,
never instead of them (DATA.md).
"""

from __future__ import annotations

import torch

from diffret_cli.errors import ConfigError

__all__ = ["activation_set", "bank_log_normalizer", "qb_norm"]


def _check_bank(bank_scores: torch.Tensor, k: int) -> None:
    if bank_scores.dim() != 2 or bank_scores.shape[0] < 1 or bank_scores.shape[1] < 1:
        raise ValueError(f"bank_scores must be [B, G] with B, G >= 1, got {tuple(bank_scores.shape)}")
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= bank_scores.shape[1]:
        raise ConfigError(f"qb_norm k={k!r} must be an integer in [1, {bank_scores.shape[1]}] (the gallery size)",
                          hint="use eval.qb_norm_k=1, the paper's setting")


def activation_set(bank_scores: torch.Tensor, *, k: int = 1, chunk_size: int = 4096) -> torch.Tensor:
    """Bool [G]: gallery items that are among the top ``k`` of at least one bank query."""
    _check_bank(bank_scores, k)
    active = torch.zeros(bank_scores.shape[1], dtype=torch.bool, device=bank_scores.device)
    for start in range(0, bank_scores.shape[0], chunk_size):
        top = bank_scores[start:start + chunk_size].topk(k, dim=1).indices
        active[top.reshape(-1)] = True
    return active


def bank_log_normalizer(bank_scores: torch.Tensor, *, beta: float = 20.0, chunk_size: int = 4096) -> torch.Tensor:
    """Float64 [G]: Z_j = log sum_b exp(beta s(b, j)), accumulated over chunks of bank rows
    (a bank of 180k training captions never needs to be scaled all at once)."""
    log_z = torch.full((bank_scores.shape[1],), float("-inf"), dtype=torch.float64, device=bank_scores.device)
    for start in range(0, bank_scores.shape[0], chunk_size):
        part = torch.logsumexp(beta * bank_scores[start:start + chunk_size].to(torch.float64), dim=0)
        log_z = torch.logaddexp(log_z, part)
    return log_z


def qb_norm(scores: torch.Tensor, bank_scores: torch.Tensor, *, beta: float = 20.0, k: int = 1,
            chunk_size: int = 4096) -> torch.Tensor:
    """QB-Norm (dynamic inverted softmax) of ``scores`` [Q, G] given ``bank_scores`` [B, G]
    (the bank queries scored against the same gallery, same scale). Returns [Q, G] in the
    dtype and device of ``scores``; rows whose top-1 item is outside the activation set
    are returned unchanged.

    Computed in float64 in the log domain, a chunk of ``chunk_size`` queries at a time, so
    large ``beta * scores`` neither overflow nor produce NaN. A ConfigError is raised if a
    normalised score would not fit the output dtype (a query scoring far above every bank
    query; pass similarities, not logits scaled by 100, or lower beta).
    """
    if scores.dim() != 2 or not scores.dtype.is_floating_point:
        raise ValueError(f"scores must be a float [Q, G] tensor, got {scores.dtype} {tuple(scores.shape)}")
    if bank_scores.dim() != 2 or bank_scores.shape[1] != scores.shape[1]:
        raise ValueError(f"bank_scores must be [B, G] with G = {scores.shape[1]} (the gallery of scores), "
                         f"got {tuple(bank_scores.shape)}")
    if not beta > 0:
        raise ConfigError(f"qb_norm beta={beta!r} must be > 0", hint="use eval.qb_norm_beta=20, the paper's setting")
    _check_bank(bank_scores, k)
    bank_scores = bank_scores.to(scores.device)
    active = activation_set(bank_scores, k=k, chunk_size=chunk_size)
    log_z = bank_log_normalizer(bank_scores, beta=beta, chunk_size=chunk_size)
    limit = torch.finfo(scores.dtype).max
    out = scores.clone()
    for start in range(0, scores.shape[0], chunk_size):
        block = scores[start:start + chunk_size]
        rows = active[block.argmax(dim=1)].nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        normed = torch.exp(beta * block[rows].to(torch.float64) - log_z)
        if not torch.isfinite(normed).all() or normed.max() > limit:
            raise ConfigError(
                f"qb_norm: a normalised score overflows {scores.dtype} at beta={beta} (a query scores far above "
                "every bank query on some item)",
                hint="pass similarities (e.g. cosine in [-1, 1]), not logits scaled by a temperature, "
                "or lower eval.qb_norm_beta")
        out[start + rows] = normed.to(out.dtype)
    return out
