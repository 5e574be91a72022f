"""Model selection on the validation split, with the evaluation library."""

from __future__ import annotations

from dataclasses import replace

from torch import nn

from diffret_cli.evaluation import EvalSettings, encode_split, evaluate_split, selection_score
from diffret_cli.training.context import RunContext
from diffret_cli.training.stage import Stage


def validate(ctx: RunContext, model: nn.Module, stage: Stage) -> tuple[dict, float]:
    """(result, selection score) of the current weights on ``dataset.val_split``; the
    generative rows only for a stage that trains them. A stage with frozen encoders
    encodes the split once per run and reuses the features every epoch."""
    split = ctx.data.split(ctx.recipe["dataset"]["val_split"])
    settings = replace(EvalSettings.from_recipe(ctx.recipe), device=str(ctx.device), precision=ctx.precision,
                       rerank=stage.validate_generative, qb_norm=False, num_workers=0)
    encoded = None
    if stage.frozen_encoder:
        key = ("val-encoded", stage.number)
        if key not in ctx.cache:
            ctx.cache[key] = encode_split(model, split, settings)
        encoded = ctx.cache[key]
    result = evaluate_split(model, split, settings, encoded=encoded)
    return result, selection_score(result)
