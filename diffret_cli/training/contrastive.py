"""Contrastive training of the dual encoder (DiffusionRet stage 1, paper Eq. 11).

Symmetric InfoNCE over the global batch: every rank encodes its share, features are
gathered across ranks with gradients to the local part, and every rank computes the
loss of the whole [B, B] similarity matrix.
"""

from __future__ import annotations

import shutil

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from diffret_cli.distributed import DistInfo, gather_no_grad, gather_with_grad
from diffret_cli.features import ModelFrames, SplitTexts
from diffret_cli.losses import symmetric_infonce
from diffret_cli.model.diffusionret import TextFeatures, VideoFeatures
from diffret_cli.training.context import RunContext
from diffret_cli.training.stage import Stage, StageData


class PairDataset(Dataset):
    """(caption, video) training pairs of a prepared split; captions pre-tokenised."""

    def __init__(self, split, model: nn.Module):
        texts = SplitTexts.from_split(split)
        self.videos = split.videos
        self.caption_video = texts.caption_video
        self.ids, self.mask = model.encoder.tokenize(texts.captions, model.config["max_words"])
        enc = model.encoder
        self.load = ModelFrames(split, max_frames=model.config["max_frames"], image_size=enc.image_size,
                                mean=enc.image_mean, std=enc.image_std)

    def __len__(self) -> int:
        return len(self.caption_video)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        v = int(self.caption_video[i])
        x, m = self.load(self.videos[v].video_id)
        return {"ids": self.ids[i], "mask": self.mask[i], "frames": x, "frame_mask": m,
                "video": torch.tensor(v), "index": torch.tensor(i)}


class PairData(StageData):
    """Pairs of the training split, frames decoded by ``train.num_workers`` processes."""

    def __init__(self, ctx: RunContext, model: nn.Module):
        self.dataset = PairDataset(ctx.data.split(ctx.recipe["dataset"]["train_split"]), model)
        self.num_workers = ctx.recipe["train"]["num_workers"]

    def __len__(self) -> int:
        return len(self.dataset)

    def batches(self, ctx, index_lists):
        loader = DataLoader(self.dataset, batch_sampler=list(index_lists), num_workers=self.num_workers,
                            pin_memory=ctx.device.type == "cuda")
        for batch in loader:
            yield {k: v.to(ctx.device, non_blocking=True) for k, v in batch.items()}


class ContrastiveStep(nn.Module):
    """One forward: this rank's pairs -> the global symmetric InfoNCE loss."""

    def __init__(self, model: nn.Module, dist: DistInfo):
        super().__init__()
        # the trained parts as submodules, so DDP sees (and synchronises) their parameters
        self.parts = nn.ModuleList(model.stage1_modules())
        self.model, self.dist = [model], dist  # list: not registered a second time

    def forward(self, batch: dict, generator=None) -> tuple[torch.Tensor, dict]:
        m, d = self.model[0], self.dist
        text = m.encode_text(batch["ids"], batch["mask"])
        video = m.encode_video(batch["frames"], batch["frame_mask"])
        text = TextFeatures(gather_with_grad(text.tokens, d), gather_with_grad(text.cls, d),
                            gather_no_grad(batch["mask"], d))
        video = VideoFeatures(gather_with_grad(video.frames, d), gather_no_grad(batch["frame_mask"], d))
        return symmetric_infonce(m.contrastive_logits(text, video)), {}


class ContrastiveStage(Stage):
    number = 1

    def begin(self, ctx: RunContext, model: nn.Module, *, resumed: bool) -> None:
        if not resumed and ctx.dist.is_main:  # features of the old stage 1 are stale
            shutil.rmtree(ctx.run_dir / "features", ignore_errors=True)
        for m in model.stage2_modules():
            m.requires_grad_(False)
        if ctx.recipe[self.section].get("freeze_encoder"):
            model.encoder.requires_grad_(False)

    def trainable(self, model):
        frozen = {id(p) for m in model.stage2_modules() for p in m.parameters()}
        return [(n, p) for n, p in model.named_parameters() if id(p) not in frozen]

    def data(self, ctx, model):
        return PairData(ctx, model)

    def step_module(self, ctx, model):
        return ContrastiveStep(model, ctx.dist)
