"""The interface of a training stage: what differs between stages and families.

The loop (:mod:`diffret_cli.training.loop`) owns everything common: the epoch order,
optimiser and LR schedule, mixed precision, DDP, EMA, logging, resume points and
validation. A stage says what trains, what a batch is, and what the loss is.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from diffret_cli.training.context import RunContext


class StageData(ABC):
    """The training items of a stage (caption-video pairs) and how to batch them."""

    @abstractmethod
    def __len__(self) -> int:
        ...

    @abstractmethod
    def batches(self, ctx: RunContext, index_lists: Sequence[list[int]]) -> Iterable[dict[str, Any]]:
        """One batch (tensors on ``ctx.device``) per list of item indices, in order."""


class Stage(ABC):
    #: the stage's number: its recipe section is ``stage<number>``
    number: int
    #: whether validation scores the generative rows (a stage that trains them)
    validate_generative: bool = False
    #: whether the encoders are frozen (validation features then never change)
    frozen_encoder: bool = False

    @property
    def section(self) -> str:
        return f"stage{self.number}"

    def begin(self, ctx: RunContext, model: nn.Module, *, resumed: bool) -> None:
        """Before anything is built: freeze what this stage does not train, load what it
        starts from. ``resumed``: the run restarts inside this stage."""

    @abstractmethod
    def trainable(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        """Named parameters this stage trains (``requires_grad`` already set)."""

    @abstractmethod
    def data(self, ctx: RunContext, model: nn.Module) -> StageData:
        ...

    @abstractmethod
    def step_module(self, ctx: RunContext, model: nn.Module) -> nn.Module:
        """A module whose ``forward(batch, generator)`` returns ``(loss, extras)`` for this
        rank's share of a global batch (extras: detached scalars to log). The loop wraps
        it in DDP."""

    def generator(self, ctx: RunContext) -> torch.Generator | None:
        """The stage's own random stream (noise, timesteps), saved with resume points."""
        return None
