"""Batched encoding of a prepared split (evaluation, and the stage-2 feature cache).

Stage 2 trains only the denoisers on features of a frozen stage-1 model, and nothing in
stage 2 augments its inputs, so features are computed once per split instead of running
CLIP on every batch (the official code's largest cost).

:func:`iter_text_features` / :func:`iter_video_features` yield one batch at a time, so a
caller that writes each batch away (the stage-2 cache,
:mod:`diffret_cli.training.feature_cache`) holds one batch, whatever the split's size;
:func:`encode_texts` / :func:`encode_videos` gather a whole split (evaluation galleries)
into one preallocated float32 output.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from diffret_cli.model.diffusionret import TextFeatures, VideoFeatures
from diffret_cli.preprocess import frames_to_tensor, select_frame_indices


@dataclass
class SplitTexts:
    """Every caption of a split (the text-to-video queries) and its video's index."""

    captions: list[str]
    caption_video: np.ndarray  # [C] int64

    @classmethod
    def from_split(cls, split) -> "SplitTexts":
        caps, owner = [], []
        for i, v in enumerate(split.videos):
            for c in v.captions:
                caps.append(c)
                owner.append(i)
        return cls(caps, np.asarray(owner, dtype=np.int64))


def frame_counts(split) -> dict[str, int]:
    """video id -> frames in the cache, from the manifest (no cache file is opened); empty
    for a split-like object without a manifest table."""
    table = getattr(split, "table", None)
    if table is None:
        return {}
    table = table.select_columns(["video_id", "num_frames"])
    return dict(zip(table["video_id"], table["num_frames"]))


class ModelFrames:
    """Model-ready frames of one video of a prepared split: ``max_frames`` evenly spaced
    cached frames (only those are decoded), resized, centre-cropped, normalised."""

    def __init__(self, split, *, max_frames: int, image_size: int, mean, std):
        self.split, self.counts = split, frame_counts(split)
        self.max_frames, self.image_size, self.mean, self.std = max_frames, image_size, mean, std

    def __call__(self, video_id: str) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.counts.get(video_id)
        if n:  # decode only the frames that will be used
            frames, _ = self.split.frames(video_id, indices=select_frame_indices(n, self.max_frames))
        else:  # count unknown: read all, then pick
            frames, _ = self.split.frames(video_id)
            frames = frames[select_frame_indices(len(frames), self.max_frames)]
        return frames_to_tensor(frames, image_size=self.image_size, mean=self.mean, std=self.std,
                                max_frames=self.max_frames)


class VideoFrames(Dataset):
    """Model-ready frames of every video of a prepared split."""

    def __init__(self, split, *, max_frames: int, image_size: int, mean, std):
        self.videos = split.videos
        self.load = ModelFrames(split, max_frames=max_frames, image_size=image_size, mean=mean, std=std)

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, i: int):
        return self.load(self.videos[i].video_id)


def autocast_for(device: torch.device, precision: str):
    """bf16/fp16 autocast on CUDA; a no-op context elsewhere or for fp32."""
    if device.type != "cuda" or precision == "fp32":
        return nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` (CUDA when there is one, else CPU), ``cpu`` or ``cuda[:N]``; a device this
    machine does not have is an error that says what it has."""
    from diffret_cli.errors import ConfigError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {name!r}", hint="use auto, cpu or cuda[:N]") from exc
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device {name!r} asked for, but this machine has no usable CUDA GPU",
                              hint="use --device cpu (or train.device=cpu), or auto to take a GPU when there is one")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"device {name!r} asked for, but this machine has {count} GPU(s)",
                              hint=f"use cuda:0 .. cuda:{count - 1}")
    elif device.type != "cpu":
        raise ConfigError(f"device {name!r} is not supported (the diffusion coefficients are float64, which "
                          f"{device.type} lacks)", hint="use auto, cpu or cuda[:N]")
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


@torch.no_grad()
def iter_text_features(model, captions: list[str], *, batch_size: int, device,
                       precision: str = "fp32") -> Iterator[TextFeatures]:
    """Features of ``captions``, one batch at a time (as the encoder returns them, on
    ``device``): what a caller keeps is its choice, so memory is bounded by one batch."""
    max_words = model.config["max_words"]
    for i in range(0, len(captions), batch_size):
        ids, mask = model.encoder.tokenize(captions[i:i + batch_size], max_words)
        with autocast_for(device, precision):
            f = model.encode_text(ids.to(device), mask.to(device))
        yield TextFeatures(f.tokens, f.cls, mask.to(device))


@torch.no_grad()
def iter_video_features(model, split, *, batch_size: int, device, precision: str = "fp32", num_workers: int = 0,
                        indices: Sequence[int] | None = None) -> Iterator[VideoFeatures]:
    """Features of the split's videos (or of ``split.videos[i]`` for ``i`` in
    ``indices``, in that order), one batch at a time, on ``device``."""
    enc = model.encoder
    ds = VideoFrames(split, max_frames=model.config["max_frames"], image_size=enc.image_size,
                     mean=enc.image_mean, std=enc.image_std)
    if indices is not None:
        ds = Subset(ds, list(indices))
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    for frames, mask in loader:
        frames, mask = frames.to(device, non_blocking=True), mask.to(device)
        with autocast_for(device, precision):
            v = model.encode_video(frames, mask)
        yield VideoFeatures(v.frames, mask)


def _fill(out: list[torch.Tensor | None], start: int, total: int, parts: tuple[torch.Tensor, ...],
          dtypes: tuple[torch.dtype | None, ...]) -> None:
    """Copy one batch into preallocated outputs (allocated on the first batch): the
    features are held once, not once per batch plus once concatenated."""
    for j, (x, dt) in enumerate(zip(parts, dtypes)):
        if out[j] is None:
            out[j] = torch.empty((total, *x.shape[1:]), dtype=dt or x.dtype, device=x.device)
        out[j][start:start + len(x)] = x


@torch.no_grad()
def encode_texts(model, captions: list[str], *, batch_size: int, device, precision: str = "fp32") -> TextFeatures:
    """Every caption's features, float32, on ``device``."""
    if not captions:
        raise ValueError("no captions to encode")
    out: list[torch.Tensor | None] = [None, None, None]
    start = 0
    for f in iter_text_features(model, captions, batch_size=batch_size, device=device, precision=precision):
        _fill(out, start, len(captions), (f.tokens, f.cls, f.mask), (torch.float32, torch.float32, None))
        start += len(f.cls)
    return TextFeatures(*out)


@torch.no_grad()
def encode_videos(model, split, *, batch_size: int, device, precision: str = "fp32",
                  num_workers: int = 0) -> VideoFeatures:
    """Every video's features, float32, on ``device``."""
    total = len(split.videos)
    if not total:
        raise ValueError("no videos to encode")
    out: list[torch.Tensor | None] = [None, None]
    start = 0
    for v in iter_video_features(model, split, batch_size=batch_size, device=device, precision=precision,
                                 num_workers=num_workers):
        _fill(out, start, total, (v.frames, v.mask), (torch.float32, None))
        start += len(v.mask)
    return VideoFeatures(*out)
