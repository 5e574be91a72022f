"""Generative training of the denoisers (DiffusionRet stage 2, paper section 3.4).

Stage 1 is frozen and its features come from the cache
(:mod:`~diffret_cli.training.feature_cache`). For each query of the global batch the
candidates are the positive first, then its hardest negatives by stage-1 similarity
(``stage2.hard_negatives``: never the positive or a same-video item by default, see
:func:`~diffret_cli.losses.hard_negative_candidates`); the model's generative head owns
the target and loss (:meth:`DiffusionRet.generation_loss`).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from diffret_cli.checkpoint import load_tensors
from diffret_cli.distributed import DistInfo, gather_no_grad
from diffret_cli.losses import HARD_NEGATIVE_MODES, hard_negative_candidates
from diffret_cli.training.context import RunContext
from diffret_cli.training.feature_cache import train_features
from diffret_cli.training.stage import Stage, StageData


class CachedPairs(StageData):
    """Caption-video pairs of the training split as indices into the cached features
    (memory-mapped on the CPU; each batch copies its rows to the device)."""

    def __init__(self, ctx: RunContext, model: nn.Module):
        self.cache = train_features(ctx, model)
        self.text, self.video = self.cache.text, self.cache.video
        self.caption_video = torch.from_numpy(self.cache.caption_video)

    def __len__(self) -> int:
        return len(self.caption_video)

    def batches(self, ctx, index_lists):
        dev = ctx.device
        for indices in index_lists:
            idx = torch.tensor(indices, dtype=torch.long)
            vid = self.caption_video[idx]
            # the cache stays in its stored dtype; each batch is cast when it is used
            yield {"tokens": self.text.tokens[idx].to(dev).float(), "cls": self.text.cls[idx].to(dev).float(),
                   "text_mask": self.text.mask[idx].to(dev).long(),
                   "frames": self.video.frames[vid].to(dev).float(),
                   "frame_mask": self.video.mask[vid].to(dev).long(), "video_ids": vid.to(dev)}


class GenerationStep(nn.Module):
    """Local queries against candidates drawn from the global batch."""

    def __init__(self, model: nn.Module, cfg: dict, dist: DistInfo):
        super().__init__()
        self.parts = nn.ModuleList(model.stage2_modules())
        self.model, self.cfg, self.dist = [model], cfg, dist

    def forward(self, batch: dict, generator=None) -> tuple[torch.Tensor, dict]:
        m, d, cfg = self.model[0], self.dist, self.cfg
        local = batch["cls"].shape[0]
        g = {k: gather_no_grad(v, d) for k, v in batch.items()}  # features are frozen
        with torch.no_grad():
            sim = m.similarity(g["tokens"], g["text_mask"], g["frames"], g["frame_mask"])  # [B,B] texts x videos
        same = g["video_ids"][:, None] == g["video_ids"][None, :]
        rows = torch.arange(local, device=sim.device) + d.rank * local
        k, mode = cfg["num_candidates"], cfg.get("hard_negatives", HARD_NEGATIVE_MODES[0])
        cand_v = hard_negative_candidates(sim, k, same, mode=mode)
        cand_t = hard_negative_candidates(sim.t(), k, same, mode=mode)
        loss, extras = m.generation_loss(
            g["cls"], g["frames"], g["frame_mask"], queries=rows, cand_v=cand_v.index[rows],
            cand_t=cand_t.index[rows], valid_v=cand_v.valid[rows], valid_t=cand_t.valid[rows],
            generator=generator, kind=cfg["loss"], temp=cfg["loss_temp"], negative_value=cfg["negative_value"])
        # padding slots of the global batch (0 when no row lacks negatives)
        extras["masked_candidates"] = (~cand_v.valid).sum().float()
        return loss, extras


class GenerationStage(Stage):
    number = 2
    validate_generative = True
    frozen_encoder = True

    def begin(self, ctx: RunContext, model: nn.Module, *, resumed: bool) -> None:
        if not resumed:
            load_best_stage1(ctx.run_dir, model)
        model.requires_grad_(False)
        for m in model.stage2_modules():
            m.requires_grad_(True)

    def trainable(self, model):
        return [(n, p) for m in model.stage2_modules() for n, p in _named(model, m)]

    def data(self, ctx, model):
        return CachedPairs(ctx, model)

    def step_module(self, ctx, model):
        return GenerationStep(model, ctx.recipe[self.section], ctx.dist)

    def generator(self, ctx):
        return torch.Generator().manual_seed(ctx.recipe["train"]["seed"] + 7919 * (ctx.dist.rank + 1))


def _named(model: nn.Module, part: nn.Module) -> list[tuple[str, nn.Parameter]]:
    ids = {id(p) for p in part.parameters()}
    return [(n, p) for n, p in model.named_parameters() if id(p) in ids]


def load_best_stage1(run_dir, model: nn.Module) -> None:
    """Before stage 2: continue from the best stage-1 weights, not the last ones."""
    path = run_dir / "checkpoints" / "stage1" / "best" / "model.safetensors"
    if not path.is_file():
        warnings.warn(f"no stage-1 checkpoint in {run_dir}: stage 2 trains on the initial "
                      "(pretrained) encoder's features", stacklevel=2)
        return
    state = load_tensors(path)
    own = model.state_dict()
    own.update({k: v for k, v in state.items() if not k.startswith("denoiser_")})
    model.load_state_dict(own, strict=True)
