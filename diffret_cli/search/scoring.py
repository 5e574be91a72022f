"""The model's scores for a search: query encoding, the token-wise similarity of a
shortlist, and diffusion re-ranking of its top K. Pure functions of tensors; the engine
(:mod:`diffret_cli.search.engine`) feeds them rows read from the store.

Everything here computes what evaluation computes (``model.similarity_matrix`` then
``diffret_cli.rerank``), restricted to the columns a query shortlists.
"""

from __future__ import annotations

import torch

from diffret_cli.model.diffusionret import TextFeatures
from diffret_cli.model.similarity import wti_scores
from diffret_cli.rerank import rerank_direction
from diffret_cli.search.store import pooled


def normalise(feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unit-length float32 tokens, padding zeroed: what the token-wise similarity's
    ``prepare_text`` / ``prepare_video`` do before their inner products (the same
    operations in the same order, on one new tensor instead of three: a shortlist of
    1,000 videos is 24 MB of float32)."""
    x = feats.float() if feats.dtype != torch.float32 else feats.clone()
    return x.div_(x.norm(dim=-1, keepdim=True)).mul_(mask.to(x.dtype).unsqueeze(-1))


@torch.no_grad()
def encode_queries(model, texts: list[str], *, device=None) -> TextFeatures:
    """Text features of ``texts``, running the text tower only over the longest query's
    tokens instead of all ``max_words`` positions.

    Exact, not an approximation: the encoder masks padded key positions (and CLIP's is
    causal), so no valid token attends to padding and its output does not depend on how
    much padding follows; the padded positions' outputs are masked out of every score.
    One padded column is kept where the model would have padding (see :func:`text_side`).
    """
    device = device or next(model.parameters()).device
    ids, mask = model.encoder.tokenize(list(texts), model.config["max_words"])
    n = int(mask.sum(dim=1).max())
    keep = min(ids.shape[1], n + 1)
    f = model.encode_text(ids[:, :keep].to(device), mask[:, :keep].to(device))
    return TextFeatures(f.tokens.float(), f.cls.float(), f.mask)


@torch.no_grad()
def text_side(model, text: TextFeatures) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(normalised tokens [B,L',D], token weights [B,L'], mask [B,L'], first-stage
    vectors [B,D]).

    Token columns past the longest query are dropped except one: in Eq. 10 as the
    official code computes it a padded word enters the cosine matrix as 0 and competes
    in each frame's max over words, so one padded column stands for all of them.
    """
    length = int(text.mask.sum(dim=1).max())
    keep = min(text.tokens.shape[1], length + 1)
    mask = text.mask[:, :keep]
    t, w = model.similarity.prepare_text(text.tokens[:, :keep].float(), mask)
    return t, w, mask, pooled(t, w)


@torch.no_grad()
def tokenwise(t: torch.Tensor, tw: torch.Tensor, mask: torch.Tensor, v: torch.Tensor, vw: torch.Tensor) -> torch.Tensor:
    """Eq. 10 scores [B, K] of prepared texts against prepared items (the model's own
    valid-token implementation, the one evaluation runs)."""
    return wti_scores(t, tw, mask, v, vw)


def candidate_matrix(ids: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each row's candidates as columns of one matrix: ``ids`` [B,K] item ids (distinct
    within a row; -1 for an empty slot, as a first stage that found fewer items leaves),
    ``scores`` [B,K] theirs. Returns ``cols`` [C] (the sorted ids present), ``pos`` [B,K]
    (each entry's column; an empty slot points at column 0) and ``sub`` [B,C]: each row's
    scores in its own columns, -inf elsewhere. An empty slot writes nothing, so it never
    hides the score of the item in column 0."""
    valid = ids >= 0
    cols = torch.unique(ids[valid])
    if cols.numel() == 0:
        return cols, torch.zeros_like(ids), scores.new_full((ids.shape[0], 0), float("-inf"))
    pos = torch.searchsorted(cols, torch.where(valid, ids, cols[0]))
    sub = scores.new_full((ids.shape[0], cols.numel()), float("-inf"))
    sub.scatter_reduce_(1, pos, scores.masked_fill(~valid, float("-inf")), reduce="amax")
    return cols, pos, sub


@torch.no_grad()
def rerank_top(scores: torch.Tensor, topk: int, run) -> torch.Tensor:
    """Re-rank each row's top ``topk`` columns of ``scores`` [B, K] with ``run(sub,
    cols)`` (a call of :func:`rerank_t2v` / :func:`rerank_v2t` on the sub-matrix of the
    candidate columns ``cols``); other entries keep their stage-1 score.

    Only the candidates go to the denoiser: its per-item work then covers ``topk`` items
    per query, not the whole shortlist. Each row of the sub-matrix holds its own top
    ``topk`` (finite) and -inf elsewhere, so the sampler sees the same sorted candidates,
    hence the same noise columns, as it would on the full row.
    """
    k = min(topk, scores.shape[1])
    top_s, top_c = scores.topk(k, dim=1)
    cols, _, sub = candidate_matrix(top_c, top_s)
    fused = run(sub, cols)
    out = scores.clone()
    out[:, cols] = torch.where(torch.isfinite(sub), fused, scores[:, cols])
    return out


@torch.no_grad()
def rerank_t2v(model, scores: torch.Tensor, text_cls: torch.Tensor, frames: torch.Tensor, mask: torch.Tensor,
               *, topk: int, steps: int | None, seed: int, generator: torch.Generator | None = None,
               chunk_size: int | None = None) -> torch.Tensor:
    """Diffusion re-ranking (paper Eq. 13) of each row's top ``topk`` columns of
    ``scores`` [B, K]: texts against the videos ``frames`` [K,T,D]. The noise comes
    from ``generator`` (a fresh one seeded with ``seed`` when None)."""
    r = model.config["rerank"]
    sampler = model.make_sampler(sample_steps=steps) if steps else model.make_sampler()
    g = generator or torch.Generator(device=scores.device).manual_seed(seed)
    return rerank_direction(scores, direction="t2v", denoiser=model.denoiser_t2v, sampler=sampler,
                            text_cls=text_cls, video_frames=frames, video_mask=mask, topk=topk,
                            alpha=r["alpha_t2v"], tau=r["tau_t2v"], chunk_size=chunk_size or r["chunk_size"],
                            generator=g)


@torch.no_grad()
def rerank_v2t(model, scores: torch.Tensor, caption_cls: torch.Tensor, frames: torch.Tensor, mask: torch.Tensor,
               *, topk: int, steps: int | None, seed: int) -> torch.Tensor:
    """Video-to-text: ``scores`` [B, K] of query videos (``frames`` [B,T,D]) against the
    shortlisted captions (``caption_cls`` [K,D])."""
    r = model.config["rerank"]
    sampler = model.make_sampler(sample_steps=steps) if steps else model.make_sampler()
    g = torch.Generator(device=scores.device).manual_seed(seed)
    return rerank_direction(scores, direction="v2t", denoiser=model.denoiser_v2t, sampler=sampler,
                            text_cls=caption_cls, video_frames=frames, video_mask=mask, topk=topk,
                            alpha=r["alpha_v2t"], tau=r["tau_v2t"], chunk_size=r["chunk_size"], generator=g)
