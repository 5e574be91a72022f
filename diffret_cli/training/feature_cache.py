"""The stage-2 feature cache: the frozen stage-1 model's features of the training split,
computed once instead of running CLIP on every batch (the official code's largest cost)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from diffret_cli.distributed import barrier
from diffret_cli.features import SplitTexts, encode_texts, encode_videos, load_features, save_features
from diffret_cli.training.context import RunContext


def cache_path(ctx: RunContext) -> Path:
    return ctx.run_dir / "features" / f"{ctx.recipe['dataset']['train_split']}.safetensors"


def train_features(ctx: RunContext, model: nn.Module):
    """(text, video, caption_video) of the training split, extracted once (rank 0
    writes the cache; every rank loads it, in the cache dtype)."""
    path = cache_path(ctx)
    if not path.is_file():
        if ctx.dist.is_main:
            split = ctx.data.split(ctx.recipe["dataset"]["train_split"])
            model.eval()
            texts = SplitTexts.from_split(split)
            bs = ctx.recipe["eval"]["batch_size"]
            tf = encode_texts(model, texts.captions, batch_size=bs, device=ctx.device, precision=ctx.precision)
            vf = encode_videos(model, split, batch_size=max(1, bs // 4), device=ctx.device,
                               precision=ctx.precision, num_workers=ctx.recipe["train"]["num_workers"])
            dtype = getattr(torch, ctx.recipe["stage2"]["feature_dtype"])
            save_features(path, tf, vf, texts.caption_video, dtype=dtype)
        barrier(ctx.dist)
    return load_features(path, ctx.device)
