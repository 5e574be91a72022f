"""The interface of the model-layer plugin kinds: encoders, denoisers, schedules, samplers.

Each kind has one abstract base class here and one contract test in
``tests/test_contracts.py`` that every registered plugin of that kind must pass (shapes,
dtypes, device moves, config round trip, seeded determinism), run on the arguments the
plugin's :meth:`~diffret_cli.configurable.ConfigurablePlugin.example_args` gives. A
third-party plugin subclasses the base (imported from :mod:`diffret_cli.sdk`), takes
keyword-only constructor arguments that ``config()`` returns (so
``type(p)(**p.config())`` rebuilds it), and registers under the group ``diffret.<kind>``
in its ``pyproject.toml``. The dataset plugin interface belongs to the data layer
(:mod:`diffret_cli.data.plugin`).

Notation (DiffusionRet paper, section 3): ``B`` queries, ``K`` candidates per query,
``T`` frames, ``L`` tokens, ``D`` embedding width.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from torch import nn

from diffret_cli.configurable import ConfigurablePlugin


# --------------------------------------------------------------------------- encoders
class Encoder(nn.Module, ConfigurablePlugin, ABC):
    """A dual encoder: token features + sentence feature for text, one feature per frame.

    ``encode_text(ids [N,L] int64, mask [N,L]) -> (tokens [N,L,D], cls [N,D])``;
    ``encode_frames(frames [N,T,3,H,W] float, mask [N,T]) -> [N,T,D]``.
    """

    embed_dim: int
    image_size: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]

    @abstractmethod
    def tokenize(self, texts: list[str], max_words: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids [N, max_words] (int64, zero padded) and mask [N, max_words] (int64)."""

    @abstractmethod
    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ...

    @abstractmethod
    def encode_frames(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ...

    @abstractmethod
    def logit_scale(self) -> torch.Tensor:
        """exp of the learnable log temperature, clamped to at most 100 (CLIP)."""

    # What a model may build from the text tower. DiffusionRet initialises its temporal
    # transformer from the first text layers (paper section 3.2); an encoder without a
    # text transformer returns None from all three and the model starts from scratch.
    def text_layer_state(self, index: int) -> dict[str, torch.Tensor] | None:
        """State dict of text transformer layer ``index`` (keys as in a
        ``ResidualAttentionBlock``: ``ln_1``, ``attn``, ``ln_2``, ``mlp``), or None if
        the encoder has no such layer."""
        return None

    def text_attention_heads(self) -> int | None:
        """Attention heads of the text transformer layers, or None without them (a layer
        state only fits a block with the same head count)."""
        return None

    def text_positional_embedding(self) -> torch.Tensor | None:
        """The text positional embedding [context, D], or None."""
        return None

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Every parameter exactly once, by what the optimiser does with it:

        - ``"pretrained"``: trained at the encoder's own (lower) learning rate;
        - ``"frozen"``: never updated (the encoder keeps ``requires_grad`` False on them).

        The split is structural: it does not change when a trainer freezes or unfreezes
        the whole encoder with ``requires_grad_`` (stage 2 freezes everything).
        """
        return {"pretrained": list(self.parameters()), "frozen": []}


# -------------------------------------------------------------------------- denoisers
@dataclass
class DenoiserContext:
    """Everything a denoiser computes once per query batch and reuses at every step.

    ``state_shape`` is the shape of the state the sampler iterates ([B,K] scores for
    DiffusionRet; [B,D] query embeddings for a DITS-style head) and ``anchor`` the state a
    truncated sampler starts from (None for samplers that start from noise).
    ``scratch`` is the denoiser's own: what it keeps from one step to the next for speed
    only (output buffers, index tensors), never read by anyone else.
    """

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    state_shape: tuple[int, ...] | None = None
    anchor: torch.Tensor | None = None
    scratch: dict[str, Any] = field(default_factory=dict)


class Denoiser(nn.Module, ConfigurablePlugin, ABC):
    """Predicts the clean score vector x0 [B,K] from a noisy one x_t [B,K] and step t [B].

    ``direction`` is "t2v" (query: text cls [B,D]; candidates: frames [B,K,T,D] with
    mask [B,K,T]) or "v2t" (query: frames [B,T,D] with mask [B,T]; candidates: text cls
    [B,K,D]). Arguments are named after the modality, not the role, as in the official
    code: ``forward(x_t, t, text, video, video_mask)``.

    ``prepare`` does the step-invariant work once (frame pooling, projections of the
    candidates); ``step`` is the per-step cost. ``forward == step(prepare(...))``.
    """

    direction: ClassVar[str]
    width: int
    #: True when the denoiser honours ``candidate_mask`` [B,K] bool: slots that are False
    #: take no part in any softmax over the candidates, as if the row had only its True
    #: slots. ``forward`` hands it to ``step`` as ``ctx.tensors["candidate_mask"]``
    #: (``forward_indexed``, if the denoiser has it, takes it as a keyword). Training passes
    #: it for the rows that exclusive hard negatives pad (``stage2.hard_negatives: exclusive``).
    masks_candidates: ClassVar[bool] = False

    @abstractmethod
    def prepare(self, text: torch.Tensor, video: torch.Tensor, video_mask: torch.Tensor) -> DenoiserContext:
        ...

    @abstractmethod
    def step(self, x_t: torch.Tensor, t: torch.Tensor, ctx: DenoiserContext) -> torch.Tensor:
        ...

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor, video: torch.Tensor,
                video_mask: torch.Tensor, candidate_mask: torch.Tensor | None = None) -> torch.Tensor:
        ctx = self.prepare(text, video, video_mask)
        if candidate_mask is not None:
            if not self.masks_candidates:
                raise ValueError(f"{type(self).__name__} does not take candidate_mask (its masks_candidates "
                                 f"is False): it would attend to the masked slots anyway")
            ctx.tensors["candidate_mask"] = candidate_mask
        return self.step(x_t, t, ctx)

    def fuse(self, base: torch.Tensor, sample: torch.Tensor, ctx: DenoiserContext, *,
             alpha: float = 1.0, tau: float = 1.0) -> torch.Tensor:
        """New scores [B,K] of the candidates from their stage-1 scores ``base`` and the
        sampler's output. DiffusionRet (Eq. 13): base + alpha * softmax(tau * x0); a head
        whose state is an embedding (DITS) scores the candidates from it instead."""
        return base + alpha * torch.softmax(tau * sample, dim=-1)


# -------------------------------------------------------------------------- schedules
class NoiseSchedule(ConfigurablePlugin, ABC):
    """A pure function of its config: the betas of a discrete diffusion, float64."""

    num_steps: int

    @abstractmethod
    def betas(self) -> np.ndarray:
        """float64 array [num_steps] of beta_t."""


# --------------------------------------------------------------------------- samplers
#: ``model_fn(x_t [B,...], t [B] int64) -> prediction`` of what the sampler's
#: ``prediction`` attribute says ("x0" for DiffusionRet, "eps" for DITS). ``t`` is
#: read-only: a full sampler passes one element expanded to B rows, so a write to one
#: row would change them all (clone it first).
ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def uniform_step(t: torch.Tensor) -> int | None:
    """The step index shared by every row of ``t`` [B], as a Python int, when that is
    known without reading the tensor's values on a device: a CPU tensor of one row, or one
    whose rows are a single element in memory (stride 0, as :class:`FullSampler` passes
    the step of a chain, ``torch.full((1,), i).expand(B)``). ``None`` otherwise: then the
    rows may differ (stage-2 training draws a step per row) or reading one would wait for
    the GPU, and a model indexes its per-step tables row by row.

    A model or sampler that keeps tables per step can then take row ``s`` as a view
    instead of gathering B rows: on CPU a 50-step chain spends about as long on such
    gathers and their index arithmetic as on the re-ranking step's arithmetic at small B.
    """
    if t.device.type != "cpu" or t.dim() != 1 or t.numel() == 0:
        return None
    if t.numel() == 1 or t.stride(0) == 0:
        return int(t[0])
    return None


@dataclass
class SampleResult:
    sample: torch.Tensor
    #: per step (if requested): the state fed to the model, its raw output, and the
    #: (clamped) x0 prediction where the sampler has one
    trajectory: list[dict[str, torch.Tensor]] | None = None


class Sampler(ConfigurablePlugin, ABC):
    """Turns a model into a sample by iterating steps from a start state.

    One interface for both families, so callers never special-case:

    - a *full* sampler (DDPM, DDIM) starts from Gaussian noise: ``start`` ignores the
      anchor and draws ``x_T ~ N(0, I)`` of the requested shape;
    - a *truncated* sampler (DITS) starts from the anchor itself (the text embedding)
      and moves it a few steps.

    The caller always does ``x = sampler.start(shape=..., anchor=..., generator=g)`` then
    ``sampler.sample(model_fn, x, generator=g)``.

    A sampler's attributes are its configuration only: what one chain carries from step
    to step (a multistep solver's previous predictions) lives for that chain, in the
    ``state`` dict :class:`~diffret_cli.full_sampler.FullSampler` hands to every
    ``update``, never on ``self``; so one instance can run any number of chains, in any
    order or interleaved.
    """

    prediction: ClassVar[str] = "x0"  # what model_fn predicts: "x0" or "eps"
    truncated: ClassVar[bool] = False

    @abstractmethod
    def start(self, *, shape: tuple[int, ...], anchor: torch.Tensor | None = None,
              generator: torch.Generator | None = None, device=None,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
        ...

    @abstractmethod
    def sample(self, model_fn: ModelFn, x_start: torch.Tensor, *,
               generator: torch.Generator | None = None, record: bool = False) -> SampleResult:
        ...

    @abstractmethod
    def timesteps(self) -> list[int]:
        """The step indices the model is called with, in calling order."""
