"""The DiffusionRet family (ICCV 2023): a CLIP dual encoder trained contrastively (stage
1), then two denoisers that generate a distribution over each query's candidates (stage
2, on features of the frozen stage 1)."""

from __future__ import annotations

import copy

from torch import nn

from diffret_cli.families.base import ModelFamily


class DiffusionRetFamily(ModelFamily):
    name = "diffusionret"

    def default_config(self) -> dict:
        from diffret_cli.model.config import DEFAULT_CONFIG

        return copy.deepcopy(DEFAULT_CONFIG)

    def build(self, config: dict | None, *, load_pretrained: bool = True) -> nn.Module:
        from diffret_cli.model.diffusionret import DiffusionRet

        return DiffusionRet(config, load_pretrained=load_pretrained)

    def stages(self):
        from diffret_cli.training.contrastive import ContrastiveStage
        from diffret_cli.training.generation import GenerationStage

        return {1: ContrastiveStage(), 2: GenerationStage()}
