"""DITS's one training stage (recipe section ``stage1``).

Loss: symmetric InfoNCE with CLIP's learnable logit scale on cos(v_0, pool(v | t)), with
v_0 the truncated sampler's output in place of the text embedding t. Gradients flow
through every unrolled step into the step network, the pooling and both encoders (CLIP
is fine-tuned at ``stage1.encoder_lr``, everything else at ``stage1.lr``). There is no
L2 diffusion loss: the paper shows it hurts retrieval.

Across processes: each rank computes v_0 for its own captions (v_0 depends only on its
text), then v_0, the text embeddings and the frame features are gathered with gradients
to the local part, and every rank takes the loss of the whole [B, B] matrix, as the
contrastive stage of DiffusionRet does.
"""

from __future__ import annotations

import torch
from torch import nn

from diffret_cli.distributed import DistInfo, gather_no_grad, gather_with_grad
from diffret_cli.losses import symmetric_infonce
from diffret_cli.model.diffusionret import TextFeatures, VideoFeatures
from diffret_cli.training.context import RunContext
from diffret_cli.training.contrastive import PairData
from diffret_cli.training.stage import Stage


class DITSStep(nn.Module):
    """One forward: this rank's pairs -> the global InfoNCE on v_0 scores."""

    def __init__(self, model: nn.Module, dist: DistInfo):
        super().__init__()
        # the trained parts as submodules, so DDP sees (and synchronises) their parameters
        self.parts = nn.ModuleList(m for m in (model.encoder, model.temporal, model.pooling, model.denoiser)
                                   if m is not None)
        self.model, self.dist = [model], dist  # list: not registered a second time

    def forward(self, batch: dict, generator=None) -> tuple[torch.Tensor, dict]:
        m, d = self.model[0], self.dist
        text = m.encode_text(batch["ids"], batch["mask"])
        video = m.encode_video(batch["frames"], batch["frame_mask"])
        # the lambda_k z noise only when the model config asks for it in training (OPEN)
        v0 = m.query_embedding(text.cls, noise=bool(m.config["train_noise"]), generator=generator)
        shift = ((v0 - text.cls).norm(dim=-1) / text.cls.norm(dim=-1).clamp_min(1e-8)).mean().detach()
        text = TextFeatures(gather_with_grad(text.tokens, d), gather_with_grad(text.cls, d),
                            gather_no_grad(batch["mask"], d))
        video = VideoFeatures(gather_with_grad(video.frames, d), gather_no_grad(batch["frame_mask"], d))
        loss = symmetric_infonce(m.contrastive_logits(text, video, gather_with_grad(v0, d)))
        # how far the flow moves a caption, relative to its embedding (0 at zero init)
        return loss, {"v0_shift": shift}


class DITSStage(Stage):
    number = 1
    validate_generative = True  # model selection on the v_0 scores

    def begin(self, ctx: RunContext, model: nn.Module, *, resumed: bool) -> None:
        if ctx.recipe[self.section].get("freeze_encoder"):  # the paper's ablation: 51.9 -> 39.2
            model.encoder.requires_grad_(False)

    def trainable(self, model):
        return [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    def data(self, ctx, model):
        return PairData(ctx, model)

    def step_module(self, ctx, model):
        return DITSStep(model, ctx.dist)

    def generator(self, ctx):
        # the noise of the unrolled steps (used only with model.train_noise)
        return torch.Generator().manual_seed(ctx.recipe["train"]["seed"] + 7919 * (ctx.dist.rank + 1))
