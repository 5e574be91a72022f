"""A model family: how a retrieval model of one kind is built and trained.

DiffusionRet and DITS are families. A family is a plugin (entry-point group
``diffret.families``) that says three things:

- ``default_config()``: the model config with every default (plain data, no torch), what
  a recipe's ``model:`` section is validated against when it names the family in
  ``model.family``;
- ``build(config, load_pretrained=...)``: the model, an ``nn.Module`` that offers what
  evaluation and the API use (see :class:`RetrievalModel`);
- ``stages()``: its training stages, in order, each a :class:`diffret_cli.training.stage.Stage`
  that the family-agnostic loop (:mod:`diffret_cli.training.loop`) runs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:  # pragma: no cover - typing only; recipes read families without torch
    import torch
    from torch import nn

    from diffret_cli.training.stage import Stage


class RetrievalModel(Protocol):
    """What evaluation, the feature cache and the API call on a model of any family."""

    config: dict
    encoder: Any  # the Encoder plugin (tokenize, image_size, image_mean, image_std, ...)

    def full_config(self) -> dict: ...

    def encode_text(self, ids: "torch.Tensor", mask: "torch.Tensor"): ...  # -> TextFeatures

    def encode_video(self, frames: "torch.Tensor", mask: "torch.Tensor"): ...  # -> VideoFeatures

    def similarity_matrix(self, text, video) -> "torch.Tensor":
        """Stage-1 (dual encoder) scores [N_text, N_video]."""

    def rerank(self, sim: "torch.Tensor", text, video, *, steps: int | None = None,
               topk_t2v: int | None = None, topk_v2t: int | None = None,
               generator: "torch.Generator | None" = None, record: dict | None = None
               ) -> "tuple[torch.Tensor, torch.Tensor]":
        """The generative scores (the "diffusion" rows): (t2v [N_text, N_video],
        v2t [N_video, N_text])."""


class ModelFamily(ABC):
    name: ClassVar[str]

    @abstractmethod
    def default_config(self) -> dict:
        """The model config defaults (plain data)."""

    @abstractmethod
    def build(self, config: dict | None, *, load_pretrained: bool = True) -> "nn.Module":
        """The model from a (partial) config; ``load_pretrained=False`` builds the bare
        architecture for weights that come from a checkpoint."""

    @abstractmethod
    def stages(self) -> "dict[int, Stage]":
        """Stage number -> stage, in training order."""
