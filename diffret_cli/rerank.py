"""Re-ranking with a generative head (DiffusionRet paper section 3.3).

For each query: take its top-K candidates by the stage-1 score S (sorted, best first),
let the sampler generate a distribution over them from noise with the denoiser as the
model, and fuse: ``S'[q, c_k] = S[q, c_k] + alpha * softmax(tau * x0)[k]``. Every other
entry keeps S. The bonus is non-negative, so re-ranking only reorders within the top K.

Vectorised: candidates are chosen with one ``topk`` per chunk of queries and fused with
one indexed write; the denoiser's step-invariant work runs once per chunk. The caller is
generic over samplers: a full sampler draws x_T ~ N(0, I), a truncated one (DITS) starts
from the anchor the head's context provides (``DenoiserContext.anchor``), and the head's
``fuse`` turns the sample into scores.

A denoiser that offers the gallery protocol (:class:`GalleryDenoiser`: DiffusionRet's
query-candidate denoisers do) is given indices instead of gathered features: it computes
what depends on single gallery items once (``prepare_gallery``, with the step indices the
sampler will use) and per chunk only what depends on (query, candidate) pairs
(``prepare_chunk``). Any other denoiser gets ``prepare`` on the gathered features.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, runtime_checkable

import torch

from diffret_cli.interfaces import Denoiser, DenoiserContext, Sampler

#: noise_fn(direction, chunk_index, shape) -> the start state for that chunk; lets tests
#: feed the official code's fixed noise. Default: sampler.start with a seeded generator.
NoiseFn = Callable[[str, int, tuple[int, ...]], torch.Tensor]


@runtime_checkable
class GalleryDenoiser(Protocol):
    """Optional denoiser capability: sampling from indices into the whole gallery.

    ``prepare_gallery(text [N,D], video [M,T,D], video_mask [M,T], *, timesteps, pairs)``
    once per gallery and direction (``pairs``: the number of (query, candidate) pairs
    that will follow, so it can choose between per-item and per-pair work);
    ``prepare_chunk(gallery, query_index [B], cand_index [B,K])`` per chunk (query rows
    index texts for "t2v", videos for "v2t"); its context goes to ``step`` and must give
    what ``step(prepare(gathered features))`` gives."""

    def prepare_gallery(self, text: torch.Tensor, video: torch.Tensor, video_mask: torch.Tensor, *,
                        timesteps: list[int], pairs: int | None = None) -> Any: ...

    def prepare_chunk(self, gallery: Any, query_index: torch.Tensor, cand_index: torch.Tensor) -> DenoiserContext: ...


@torch.no_grad()
def rerank_direction(scores: torch.Tensor, *, direction: str, denoiser: Denoiser, sampler: Sampler,
                     text_cls: torch.Tensor, video_frames: torch.Tensor, video_mask: torch.Tensor,
                     topk: int, alpha: float = 1.0, tau: float = 1.0, chunk_size: int = 64,
                     generator: torch.Generator | None = None, noise_fn: NoiseFn | None = None,
                     record: list | None = None) -> torch.Tensor:
    """Re-rank one direction.

    ``scores`` is [Q, G]: rows are queries (texts for "t2v", videos for "v2t"), columns the
    gallery. ``text_cls`` [N_text, D], ``video_frames`` [N_video, T, D], ``video_mask``
    [N_video, T]. Returns a new [Q, G] matrix.
    """
    if direction not in ("t2v", "v2t"):
        raise ValueError(f"direction must be 't2v' or 'v2t', got {direction!r}")
    q, g = scores.shape
    k = min(topk, g)
    out = scores.clone()
    gallery = None
    if isinstance(denoiser, GalleryDenoiser):
        gallery = denoiser.prepare_gallery(text_cls, video_frames, video_mask, timesteps=sampler.timesteps(),
                                           pairs=q * k)
    for chunk_index, start in enumerate(range(0, q, chunk_size)):
        rows = torch.arange(start, min(start + chunk_size, q), device=scores.device)
        base, cand = scores[rows].topk(k, dim=1, sorted=True)  # noise column j <-> j-th best candidate
        if gallery is not None:
            ctx = denoiser.prepare_chunk(gallery, rows, cand)
        elif direction == "t2v":
            ctx = denoiser.prepare(text_cls[rows], video_frames[cand], video_mask[cand])
        else:
            ctx = denoiser.prepare(text_cls[cand], video_frames[rows], video_mask[rows])
        shape = ctx.state_shape or (len(rows), k)
        if noise_fn is not None:
            x = noise_fn(direction, chunk_index, shape).to(scores.device, scores.dtype)
        else:
            x = sampler.start(shape=shape, anchor=ctx.anchor, generator=generator, device=scores.device,
                              dtype=scores.dtype)
        result = sampler.sample(lambda x_t, t: denoiser.step(x_t, t, ctx), x, generator=generator)
        fused = denoiser.fuse(base, result.sample, ctx, alpha=alpha, tau=tau)
        out[rows[:, None], cand] = fused
        if record is not None:
            record.append({"rows": rows, "candidates": cand, "sample": result.sample})
    return out


def rerank(sim: torch.Tensor, *, model, text_cls: torch.Tensor, video_frames: torch.Tensor,
           video_mask: torch.Tensor, sampler: Sampler | None = None, topk_t2v: int | None = None,
           topk_v2t: int | None = None, chunk_size: int | None = None,
           generator: torch.Generator | None = None, noise_fn: NoiseFn | None = None,
           record: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Both directions for a DiffusionRet model. Returns (t2v [N_text, N_video],
    v2t [N_video, N_text]). Unset options come from ``model.config["rerank"]``."""
    r = model.config["rerank"]
    sampler = sampler or model.make_sampler()
    chunk = chunk_size or r["chunk_size"]
    common = dict(sampler=sampler, text_cls=text_cls, video_frames=video_frames, video_mask=video_mask,
                  chunk_size=chunk, generator=generator, noise_fn=noise_fn)
    rec_t, rec_v = ([], []) if record is not None else (None, None)
    t2v = rerank_direction(sim, direction="t2v", denoiser=model.denoiser_t2v,
                           topk=topk_t2v or r["topk_t2v"], alpha=r["alpha_t2v"], tau=r["tau_t2v"],
                           record=rec_t, **common)
    v2t = rerank_direction(sim.t(), direction="v2t", denoiser=model.denoiser_v2t,
                           topk=topk_v2t or r["topk_v2t"], alpha=r["alpha_v2t"], tau=r["tau_v2t"],
                           record=rec_v, **common)
    if record is not None:
        record["t2v"], record["v2t"] = rec_t, rec_v
    return t2v, v2t
