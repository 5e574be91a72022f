"""Frame thumbnails from the prepared frame cache, and the common PNG writer."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from diffret_cli.features import frame_counts
from diffret_cli.preprocess import select_frame_indices

#: the colour of a ground truth in every figure (the paper marks it green)
GT_COLOR = "#1a9641"
OTHER_COLOR = "#9e9e9e"


def model_frames(split, video_id: str, max_frames: int) -> np.ndarray:
    """The cached frames the model sees for ``video_id`` ([T,H,W,3] uint8, T <= max_frames):
    the same evenly spaced selection as training and evaluation."""
    n = frame_counts(split).get(video_id)
    if n:
        frames, _ = split.frames(video_id, indices=select_frame_indices(n, max_frames))
        return frames
    frames, _ = split.frames(video_id)
    return frames[select_frame_indices(len(frames), max_frames)]


def strip(frames: np.ndarray, count: int, *, height: int = 48) -> np.ndarray:
    """``count`` evenly spaced frames side by side, each resized to ``height`` rows
    (nearest neighbour: thumbnails only), one uint8 image [height, W, 3]."""
    frames = np.asarray(frames)
    picked = frames[select_frame_indices(len(frames), count)]
    tiles = []
    for f in picked:
        h, w = f.shape[:2]
        width = max(1, round(w * height / h))
        rows = (np.arange(height) * h / height).astype(np.int64)
        cols = (np.arange(width) * w / width).astype(np.int64)
        tiles.append(f[rows][:, cols])
        tiles.append(np.full((height, 2, 3), 255, dtype=np.uint8))  # a white gap between frames
    return np.concatenate(tiles[:-1], axis=1)


def new_figure(width: float, height: float):
    """A matplotlib figure on the Agg backend (no display needed), not registered with
    pyplot, so figures are freed with their last reference."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def png_bytes(fig, *, dpi: int = 100) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def save_png(fig, path: str | Path, *, dpi: int = 100) -> Path:
    from diffret_cli.fileio import atomic_write_bytes

    path = Path(path)
    atomic_write_bytes(path, png_bytes(fig, dpi=dpi))
    return path
