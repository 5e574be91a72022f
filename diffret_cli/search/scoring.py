"""The model's scores for a search: query encoding, the token-wise similarity of a
shortlist, and diffusion re-ranking of its top K. Pure functions of tensors; the engine
(:mod:`diffret_cli.search.engine`) feeds them rows read from the store.

Everything here computes what evaluation computes (``model.similarity_matrix`` then
``diffret_cli.rerank``), restricted to the columns a query shortlists.
"""

from __future__ import annotations

import torch

from diffret_cli.model.diffusionret import TextFeatures
from diffret_cli.rerank import rerank_direction
from diffret_cli.search.store import pooled


def normalise(feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unit-length tokens, padding zeroed: what the token-wise similarity's
    ``prepare_text`` / ``prepare_video`` do before their inner products."""
    return feats / feats.norm(dim=-1, keepdim=True) * mask.to(feats.dtype).unsqueeze(-1)


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
def text_side(model, text: TextFeatures) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(normalised tokens [B,L',D], token weights [B,L'], first-stage vectors [B,D]).

    Token columns past the longest query are dropped except one: in Eq. 10 as the
    official code computes it a padded word enters the cosine matrix as 0 and competes
    in each frame's max over words, so one all-zero column reproduces every padded one.
    """
    length = int(text.mask.sum(dim=1).max())
    keep = min(text.tokens.shape[1], length + 1)
    t, w = model.similarity.prepare_text(text.tokens[:, :keep].float(), text.mask[:, :keep])
    return t, w, pooled(t, w)


@torch.no_grad()
def tokenwise(model, t: torch.Tensor, tw: torch.Tensor, v: torch.Tensor, vw: torch.Tensor,
              *, block: int = 4096) -> torch.Tensor:
    """Eq. 10 scores [B, K] of prepared texts against prepared items, in blocks of items
    so that the [B, K, L, T] cosine tensor stays small."""
    out = [model.similarity.combine(t, tw, v[a:a + block], vw[a:a + block]) for a in range(0, v.shape[0], block)]
    return torch.cat(out, dim=1) if out else t.new_zeros(t.shape[0], 0)


@torch.no_grad()
def rerank_t2v(model, scores: torch.Tensor, text_cls: torch.Tensor, frames: torch.Tensor, mask: torch.Tensor,
               *, topk: int, steps: int | None, seed: int) -> torch.Tensor:
    """Diffusion re-ranking (paper Eq. 13) of each row's top ``topk`` columns of
    ``scores`` [B, K]: texts against the shortlisted videos ``frames`` [K,T,D]."""
    r = model.config["rerank"]
    sampler = model.make_sampler(sample_steps=steps) if steps else model.make_sampler()
    g = torch.Generator(device=scores.device).manual_seed(seed)
    return rerank_direction(scores, direction="t2v", denoiser=model.denoiser_t2v, sampler=sampler,
                            text_cls=text_cls, video_frames=frames, video_mask=mask, topk=topk,
                            alpha=r["alpha_t2v"], tau=r["tau_t2v"], chunk_size=r["chunk_size"], generator=g)


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
