"""Shared by the DITS tests: a tiny DITS model config and an in-memory split."""

from __future__ import annotations

from typing import Any

import numpy as np

from diffret_cli.data.types import VideoEntry

F = 4  # frames per video


def tiny_dits_config(**overrides) -> dict[str, Any]:
    """A tiny DITS model (32-d open_clip from scratch) whose step network is not
    zero-initialised, so it moves v from the first step."""
    from train_helpers import tiny_model_config

    cfg = {"family": "dits", "encoder": tiny_model_config()["encoder"],
           "denoiser": {"name": "dits_step", "args": {"hidden": 32, "depth": 2, "heads": 4, "zero_init": False}},
           "pooling": {"name": "xpool", "args": {"heads": 1, "dropout": 0.3, "chunk_size": 4}},
           "sampler": {"name": "dits", "args": {"num_steps": 10, "sample_steps": 3}},
           "max_words": 16, "max_frames": F}
    cfg.update(overrides)
    return cfg


class FakeSplit:
    """A split with in-memory frames: .videos (VideoEntry) and .frames(video_id)."""

    def __init__(self, videos, frames):
        self.videos, self._frames = videos, frames

    def frames(self, video_id: str, indices=None):
        f = self._frames[video_id]
        return (f if indices is None else f[indices]), None


def fake_split(order: list[int], captions: dict[int, tuple[str, ...]], *, size: int = 32) -> FakeSplit:
    """Videos ``v<i>`` for i in ``order`` (random frames, seeded), with ``captions[i]``."""
    rng = np.random.default_rng(0)
    frames = {f"v{i}": rng.integers(0, 256, (F, size, size, 3), dtype=np.uint8) for i in captions}
    return FakeSplit([VideoEntry(video_id=f"v{i}", captions=captions[i]) for i in order], frames)
