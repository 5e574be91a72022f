"""``diffret bench eval``: the cost of evaluating a gallery from cached features.

The work after encoding, as ``diffret eval`` does it (DIFFUSIONRET.md section 5): the
stage-1 similarity S of every text with every video (the weight MLPs once per text and
video, then Eq. 10 over valid tokens), and, unless ``diffusion=False``, DDIM re-ranking
of each query's top K in both directions. Features are random, of the official shapes;
the similarity and the denoisers have random weights (speed does not depend on them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from diffret_cli.bench.synthetic import OFFICIAL, CachedFeatures, official_shape_features
from diffret_cli.bench.timing import PeakMemory, PhaseTimer, environment, resolve_device
from diffret_cli.model.similarity import TokenWiseSimilarity, wti_scores
from diffret_cli.registry import create
from diffret_cli.rerank import NoiseFn, rerank_direction
from diffret_plugins.denoisers import query_candidate_sampling as qc_sampling

#: the diffusion schedule's length (official: 50); --steps picks evenly spaced steps of it
SCHEDULE_STEPS = 50


@dataclass
class EvalParts:
    """The modules evaluation runs after the encoders."""

    similarity: nn.Module
    denoiser_t2v: nn.Module
    denoiser_v2t: nn.Module

    @classmethod
    def random(cls, width: int = OFFICIAL["width"], seed: int = 0) -> "EvalParts":
        torch.manual_seed(seed)
        return cls(TokenWiseSimilarity(width=width).eval(), create("denoisers", "t2v", width=width).eval(),
                   create("denoisers", "v2t", width=width).eval())

    def to(self, device) -> "EvalParts":
        return EvalParts(self.similarity.to(device), self.denoiser_t2v.to(device), self.denoiser_v2t.to(device))


def make_sampler(steps: int):
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return create("samplers", "ddim", num_steps=max(SCHEDULE_STEPS, steps), sample_steps=steps)


@torch.no_grad()
def run_eval(feats: CachedFeatures, parts: EvalParts, *, topk: int, steps: int, diffusion: bool,
             chunk_size: int, timer: PhaseTimer, seed: int = 0,
             noise_fn: NoiseFn | None = None) -> dict[str, torch.Tensor]:
    """The timed work: returns the matrices (S, and the re-ranked t2v / v2t).
    ``noise_fn``: fixed DDIM start noise per chunk (see :func:`rerank_direction`)."""
    sim_mod = parts.similarity
    with timer.phase("similarity_weights"):  # the frozen weight MLPs, once per text and video
        t, tw = sim_mod.prepare_text(feats.tokens, feats.text_mask)
        v, vw = sim_mod.prepare_video(feats.frames, feats.frame_mask)
    with timer.phase("similarity"):
        sim = wti_scores(t, tw, feats.text_mask, v, vw)
    out = {"sim": sim}
    if not diffusion:
        return out
    sampler = make_sampler(steps)
    g = torch.Generator(device=sim.device).manual_seed(seed)
    common = dict(sampler=sampler, text_cls=feats.cls, video_frames=feats.frames, video_mask=feats.frame_mask,
                  topk=topk, chunk_size=chunk_size, generator=g, noise_fn=noise_fn)
    with timer.phase("rerank_t2v"):
        out["t2v"] = rerank_direction(sim, direction="t2v", denoiser=parts.denoiser_t2v, **common)
    with timer.phase("rerank_v2t"):
        out["v2t"] = rerank_direction(sim.t(), direction="v2t", denoiser=parts.denoiser_v2t, **common)
    return out


def bench_eval(*, gallery: int = 1000, topk: int = 32, steps: int = SCHEDULE_STEPS, device: str = "cpu",
               diffusion: bool = True, chunk_size: int = 64, seed: int = 0, warmup: bool = True,
               parts: EvalParts | None = None) -> dict:
    """Seconds per phase of evaluating ``gallery`` texts against ``gallery`` videos.

    Returns a JSON-ready dict: ``phases`` (wall seconds), ``cpu_phases`` (process CPU
    seconds), ``total`` (their sum), ``peak_memory_mb`` and the settings."""
    if gallery < 1 or topk < 1:
        raise ValueError(f"gallery and topk must be >= 1, got {gallery}, {topk}")
    dev = resolve_device(device)
    parts = (parts or EvalParts.random(seed=seed)).to(dev)
    width = parts.denoiser_t2v.width
    if warmup:  # first calls pay one-off library set-up; keep it out of the figures
        small = official_shape_features(min(gallery, 8), width=width, seed=seed + 1).to(dev)
        run_eval(small, parts, topk=min(topk, 4), steps=min(steps, 2), diffusion=diffusion, chunk_size=chunk_size,
                 timer=PhaseTimer(dev))
    feats = official_shape_features(gallery, width=width, seed=seed).to(dev)
    timer = PhaseTimer(dev)
    with PeakMemory(dev) as mem:
        run_eval(feats, parts, topk=topk, steps=steps, diffusion=diffusion, chunk_size=chunk_size, timer=timer,
                 seed=seed)
    return {"benchmark": "eval", "gallery": gallery, "topk": min(topk, gallery),
            "steps": steps if diffusion else 0, "diffusion": diffusion, "chunk_size": chunk_size,
            "width": width, **timer.as_dict(), "peak_memory_mb": round(mem.megabytes, 1),
            "memory_kind": mem.kind, "environment": environment(dev),
            # the CPU re-ranking step: the fused C kernel, or torch ops and why
            "rerank_step": qc_sampling.describe_step(dev) if diffusion else "none (no re-ranking)"}
