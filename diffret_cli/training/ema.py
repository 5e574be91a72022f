"""Exponential moving average of the trainable weights (``train.ema``)."""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    """Validated and saved in place of the raw weights when enabled: :meth:`swap` puts
    the average into the model (and the raw weights into the shadow) and back."""

    def __init__(self, params: dict[str, nn.Parameter], decay: float):
        self.decay = decay
        self.shadow = {k: p.detach().clone() for k, p in params.items()}

    @torch.no_grad()
    def update(self, params: dict[str, nn.Parameter]) -> None:
        for k, p in params.items():
            self.shadow[k].lerp_(p.detach(), 1 - self.decay)

    def swap(self, params: dict[str, nn.Parameter]) -> None:
        for k, p in params.items():
            tmp = p.detach().clone()
            p.data.copy_(self.shadow[k])
            self.shadow[k].copy_(tmp)
