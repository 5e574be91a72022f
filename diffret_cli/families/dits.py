"""The DITS family (NeurIPS 2024): a CLIP dual encoder with X-Pool pooling whose text
embedding is moved toward its video by a truncated sampler before scoring; one stage,
trained end to end with the contrastive loss through every unrolled step.

Importing this module does not import torch (recipes read families without it): the
model lives in :mod:`diffret_cli.model.dits`, its training stage in
:mod:`diffret_cli.families.dits_stage`.
"""

from __future__ import annotations

import copy

from diffret_cli.families.base import ModelFamily


class DITSFamily(ModelFamily):
    name = "dits"

    def default_config(self) -> dict:
        from diffret_cli.model.dits_config import DITS_DEFAULT_CONFIG

        return copy.deepcopy(DITS_DEFAULT_CONFIG)

    def build(self, config: dict | None, *, load_pretrained: bool = True):
        from diffret_cli.model.dits import DITS

        return DITS(config, load_pretrained=load_pretrained)

    def stages(self):
        from diffret_cli.families.dits_stage import DITSStage

        return {1: DITSStage()}
