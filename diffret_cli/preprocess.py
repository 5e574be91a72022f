"""From cached frames to model input: frame selection, resize, crop, normalise.

DiffusionRet samples 1 frame per second (done once by ``diffret data prepare``), then keeps
``max_frames`` evenly spaced ones, resizes the short side to the model's image size
(bicubic), centre-crops and normalises with CLIP's mean and std.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def select_frame_indices(num_frames: int, max_frames: int) -> np.ndarray:
    """Evenly spaced indices when there are more frames than ``max_frames``, else all."""
    if num_frames <= max_frames:
        return np.arange(num_frames)
    return np.linspace(0, num_frames - 1, max_frames).round().astype(np.int64)


def frames_to_tensor(frames: np.ndarray, *, image_size: int, mean, std, max_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [T,H,W,3] -> (float [max_frames,3,S,S] zero-padded, int64 mask [max_frames])."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames [T,H,W,3], got {frames.shape}")
    t = min(len(frames), max_frames)
    x = torch.from_numpy(np.ascontiguousarray(frames[:t])).permute(0, 3, 1, 2).float() / 255.0
    h, w = x.shape[-2:]
    if min(h, w) != image_size:
        scale = image_size / min(h, w)
        size = (max(image_size, round(h * scale)), max(image_size, round(w * scale)))
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp_(0, 1)
    h, w = x.shape[-2:]
    top, left = (h - image_size) // 2, (w - image_size) // 2
    x = x[..., top:top + image_size, left:left + image_size]
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    out = torch.zeros(max_frames, 3, image_size, image_size)
    out[:t] = x
    mask = torch.zeros(max_frames, dtype=torch.long)
    mask[:t] = 1
    return out, mask
