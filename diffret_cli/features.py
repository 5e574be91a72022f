"""Batched encoding of a prepared split (evaluation, and the stage-2 feature cache).

Stage 2 trains only the denoisers on features of a frozen stage-1 model, and nothing in
stage 2 augments its inputs, so features are computed once per split instead of running
CLIP on every batch (the official code's largest cost).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

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
def encode_texts(model, captions: list[str], *, batch_size: int, device, precision: str = "fp32") -> TextFeatures:
    max_words = model.config["max_words"]
    toks, clss, masks = [], [], []
    for i in range(0, len(captions), batch_size):
        ids, mask = model.encoder.tokenize(captions[i:i + batch_size], max_words)
        with autocast_for(device, precision):
            f = model.encode_text(ids.to(device), mask.to(device))
        toks.append(f.tokens.float())
        clss.append(f.cls.float())
        masks.append(mask.to(device))
    return TextFeatures(torch.cat(toks), torch.cat(clss), torch.cat(masks))


@torch.no_grad()
def encode_videos(model, split, *, batch_size: int, device, precision: str = "fp32",
                  num_workers: int = 0) -> VideoFeatures:
    enc = model.encoder
    ds = VideoFrames(split, max_frames=model.config["max_frames"], image_size=enc.image_size,
                     mean=enc.image_mean, std=enc.image_std)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    feats, masks = [], []
    for frames, mask in loader:
        frames, mask = frames.to(device, non_blocking=True), mask.to(device)
        with autocast_for(device, precision):
            v = model.encode_video(frames, mask)
        feats.append(v.frames.float())
        masks.append(mask)
    return VideoFeatures(torch.cat(feats), torch.cat(masks))


def save_features(path: Path, text: TextFeatures, video: VideoFeatures, caption_video: np.ndarray,
                  dtype: torch.dtype = torch.float16) -> None:
    from diffret_cli.checkpoint import atomic_save_tensors

    atomic_save_tensors(path, {
        "text_tokens": text.tokens.to(dtype), "text_cls": text.cls.to(dtype), "text_mask": text.mask,
        "video_frames": video.frames.to(dtype), "video_mask": video.mask,
        "caption_video": torch.from_numpy(np.asarray(caption_video)),
    })


def load_features(path: Path, device) -> tuple[TextFeatures, VideoFeatures, np.ndarray]:
    """The cache as stored (float16 by default: MSRVTT's 180k captions x 32 tokens are
    6 GB in half precision); batches are cast to float32 when they are used."""
    from safetensors.torch import load_file

    t = load_file(str(path), device=str(device))
    return (TextFeatures(t["text_tokens"], t["text_cls"], t["text_mask"]),
            VideoFeatures(t["video_frames"], t["video_mask"]),
            t["caption_video"].cpu().numpy())
