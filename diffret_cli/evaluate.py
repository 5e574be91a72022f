"""Evaluation: stage-1 scores and diffusion re-ranked scores, both directions.

Rows of a result: ``stage1`` (the dual encoder's S), ``diffusion`` (S re-ranked by the
generative heads), and with QB-Norm ``stage1+qbnorm`` / ``diffusion+qbnorm`` in rows of
their own (never replacing the raw numbers).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from diffret_cli.features import SplitTexts, encode_texts, encode_videos, resolve_precision
from diffret_cli.metrics import retrieval_metrics
from diffret_cli.model.diffusionret import TextFeatures, VideoFeatures
from diffret_cli.rerank import rerank


@dataclass
class EncodedSplit:
    """A split's captions and videos through the (frozen) stage-1 model."""

    texts: SplitTexts
    text: TextFeatures
    video: VideoFeatures
    seconds: float


@torch.no_grad()
def encode_split(model, split, *, device, precision: str, batch_size: int = 64,
                 num_workers: int = 0) -> EncodedSplit:
    model.eval()
    texts = SplitTexts.from_split(split)
    t0 = time.perf_counter()
    tf = encode_texts(model, texts.captions, batch_size=batch_size, device=device, precision=precision)
    vf = encode_videos(model, split, batch_size=max(1, batch_size // 4), device=device, precision=precision,
                       num_workers=num_workers)
    return EncodedSplit(texts, tf, vf, time.perf_counter() - t0)


@torch.no_grad()
def evaluate_split(model, split, *, device, precision: str = "auto", batch_size: int = 64,
                   rerank_scores: bool = True, steps: int | None = None, topk_t2v: int | None = None,
                   topk_v2t: int | None = None, seed: int = 0, qb_bank: list[str] | None = None,
                   qb_beta: float = 20.0, qb_k: int = 1, num_workers: int = 0,
                   encoded: EncodedSplit | None = None) -> dict[str, Any]:
    """Metrics of ``split``. ``encoded`` reuses features from :func:`encode_split` (stage 2
    validates every epoch with a frozen encoder: its features do not change)."""
    model.eval()
    precision = resolve_precision(precision, device)
    if encoded is None:
        encoded = encode_split(model, split, device=device, precision=precision, batch_size=batch_size,
                               num_workers=num_workers)
    texts, tf, vf, t_encode = encoded.texts, encoded.text, encoded.video, encoded.seconds
    sim = model.similarity_matrix(tf, vf)
    rows: dict[str, Any] = {"stage1": retrieval_metrics(sim, sim.t(), texts.caption_video)}
    t_rerank = 0.0
    fused = None
    if rerank_scores:
        t1 = time.perf_counter()
        sampler = model.make_sampler(sample_steps=steps) if steps else model.make_sampler()
        g = torch.Generator(device=device).manual_seed(seed)
        fused = rerank(sim, model=model, text_cls=tf.cls, video_frames=vf.frames, video_mask=vf.mask,
                       sampler=sampler, topk_t2v=topk_t2v, topk_v2t=topk_v2t, generator=g)
        rows["diffusion"] = retrieval_metrics(fused[0], fused[1], texts.caption_video)
        t_rerank = time.perf_counter() - t1
    if qb_bank:
        from diffret_cli.qbnorm import qb_norm

        bank = encode_texts(model, qb_bank, batch_size=batch_size, device=device, precision=precision)
        bank_t2v = model.similarity_matrix(bank, vf)  # [B, V]
        # the query bank holds captions, so QB-Norm applies to text-to-video only
        rows["stage1+qbnorm"] = retrieval_metrics(qb_norm(sim, bank_t2v, beta=qb_beta, k=qb_k), None,
                                                  texts.caption_video)
        if fused is not None:
            rows["diffusion+qbnorm"] = retrieval_metrics(qb_norm(fused[0], bank_t2v, beta=qb_beta, k=qb_k),
                                                         None, texts.caption_video)
    skipped = len(getattr(split, "skipped", []) or [])
    return {
        "rows": rows,
        "num_captions": len(texts.captions),
        "num_videos": len(split.videos),
        # videos the prepared split could not decode are left out of the gallery: the
        # numbers are then not comparable with the published protocol
        "num_videos_unavailable": skipped,
        "timing_s": {"encode": round(t_encode, 3), "rerank": round(t_rerank, 3)},
        "settings": {"steps": steps or model.config["sampler"]["args"].get("num_steps"),
                     "topk_t2v": topk_t2v or model.config["rerank"]["topk_t2v"],
                     "topk_v2t": topk_v2t or model.config["rerank"]["topk_v2t"],
                     "seed": seed, "precision": precision},
    }


def selection_score(result: dict) -> float:
    """Model selection on validation: text-to-video Rsum of the best row available."""
    rows = result["rows"]
    row = rows.get("diffusion", rows["stage1"])
    return float(row["t2v"]["Rsum"])


def ranks_table_rows(result: dict) -> list[tuple[str, str, dict]]:
    out = []
    for row_name, r in result["rows"].items():
        for direction in ("t2v", "v2t"):
            if direction in r:
                out.append((row_name, direction, r[direction]))
    return out


def caption_bank(split, limit: int | None = None, seed: int = 0) -> list[str]:
    caps = [c for v in split.videos for c in v.captions]
    if limit and len(caps) > limit:
        rng = np.random.default_rng(seed)
        caps = [caps[i] for i in sorted(rng.choice(len(caps), limit, replace=False))]
    return caps
