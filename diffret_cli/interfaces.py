"""The interface of every plugin kind.

Each kind has one abstract base class here and one contract test in
``tests/test_contracts.py`` that every registered plugin of that kind must pass (shapes,
dtypes, device moves, config round trip, seeded determinism). A third-party plugin
subclasses the base, takes keyword-only constructor arguments that ``config()`` returns
(so ``type(p)(**p.config())`` rebuilds it), and registers under the group
``diffret.<kind>`` in its ``pyproject.toml``.

Notation (DiffusionRet paper, section 3): ``B`` queries, ``K`` candidates per query,
``T`` frames, ``L`` tokens, ``D`` embedding width.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from torch import nn

from diffret_cli.data.types import Protocol, SplitAnnotations, VideoEntry


class ConfigurablePlugin:
    """Keyword-only constructor arguments round-trip through ``config()``."""

    def config(self) -> dict[str, Any]:  # pragma: no cover - every plugin overrides
        raise NotImplementedError


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

    def text_layer_state(self, index: int) -> dict[str, torch.Tensor] | None:
        """State dict of text transformer layer ``index`` (to initialise a temporal
        transformer from it, as DiffusionRet does), or None if the encoder has none."""
        return None

    def text_positional_embedding(self) -> torch.Tensor | None:
        return None

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by learning-rate group: {"pretrained": [...], "frozen": [...]}."""
        return {"pretrained": list(self.parameters()), "frozen": []}


# -------------------------------------------------------------------------- denoisers
@dataclass
class DenoiserContext:
    """Everything a denoiser computes once per query batch and reuses at every step.

    ``state_shape`` is the shape of the state the sampler iterates ([B,K] scores for
    DiffusionRet; [B,D] query embeddings for a DITS-style head) and ``anchor`` the state a
    truncated sampler starts from (None for samplers that start from noise).
    """

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    state_shape: tuple[int, ...] | None = None
    anchor: torch.Tensor | None = None


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

    @abstractmethod
    def prepare(self, text: torch.Tensor, video: torch.Tensor, video_mask: torch.Tensor) -> DenoiserContext:
        ...

    @abstractmethod
    def step(self, x_t: torch.Tensor, t: torch.Tensor, ctx: DenoiserContext) -> torch.Tensor:
        ...

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor, video: torch.Tensor,
                video_mask: torch.Tensor) -> torch.Tensor:
        return self.step(x_t, t, self.prepare(text, video, video_mask))

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
#: ``prediction`` attribute says ("x0" for DiffusionRet, "eps" for DITS).
ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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


# --------------------------------------------------------------------------- datasets
@dataclass(frozen=True)
class DownloadSource:
    """Where a dataset's files can be fetched from (for ``diffret data prepare``)."""

    name: str  # e.g. "annotations", "videos"
    urls: tuple[str, ...]  # tried in order
    filename: str  # saved as
    sha256: str | None = None
    size: int | None = None
    extract: bool = True
    note: str = ""


class DatasetPlugin(ConfigurablePlugin, ABC):
    """Reads a benchmark's files exactly as distributed.

    ``load_split(source, split)`` parses the annotation files under ``source`` (the
    official layout) and returns :class:`SplitAnnotations`; it raises
    :class:`~diffret_cli.errors.AnnotationError` (file, line or key, what was expected)
    on a malformed file and records per-item problems without raising.
    """

    name: ClassVar[str]
    splits: ClassVar[tuple[str, ...]]
    protocol: ClassVar[Protocol]
    #: paper settings for this benchmark
    max_words: ClassVar[int] = 32
    max_frames: ClassVar[int] = 12
    #: None when the data cannot be downloaded (LSMDC), with the reason in download_note
    downloads: ClassVar[tuple[DownloadSource, ...] | None] = None
    download_note: ClassVar[str] = ""

    @abstractmethod
    def annotation_files(self, split: str) -> list[str]:
        """Paths (relative to the source dir) of the files ``load_split(split)`` reads."""

    @abstractmethod
    def load_split(self, source: Path, split: str) -> SplitAnnotations:
        ...

    def video_dirs(self) -> list[str]:
        """Directories (relative to the source dir) searched for video files."""
        return ["videos", "."]

    def locate_video(self, source: Path, entry: VideoEntry) -> Path | None:
        """The video file of ``entry`` under ``source``, or None when it is missing."""
        from diffret_cli.data.locate import find_video_file

        return find_video_file(source, self.video_dirs(), entry)

    #: frames per second of what ``generate`` returns (generated datasets only)
    generated_fps: ClassVar[float] = 1.0

    def generate(self, entry: VideoEntry) -> "np.ndarray | None":
        """Frames of a procedurally generated video ([T,H,W,3] uint8), or None for a
        dataset read from files. Lets ``synthetic`` skip video files entirely."""
        return None
