"""Random cached features of the official shapes (DIFFUSIONRET.md section 2).

Stage-1 outputs as diffret caches them: per text, token features [L,D] with a mask of
``valid`` leading tokens ([SOT] + words + [EOT], zero padded to ``words``) and the EOT
("cls") feature; per video, ``frames`` frame features after the temporal transformer
with a frame mask. Only shapes and masks matter for speed; values are Gaussian.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: MSRVTT with CLIP ViT-B/32: 32 word slots of which 8-20 are used, 12 frames, width 512
OFFICIAL = {"words": 32, "valid_words": (8, 20), "frames": 12, "width": 512}


@dataclass
class CachedFeatures:
    tokens: torch.Tensor  # [N_text, L, D]
    text_mask: torch.Tensor  # [N_text, L] int64
    cls: torch.Tensor  # [N_text, D]
    frames: torch.Tensor  # [N_video, T, D]
    frame_mask: torch.Tensor  # [N_video, T] int64

    def to(self, device) -> "CachedFeatures":
        return CachedFeatures(*(x.to(device) for x in (self.tokens, self.text_mask, self.cls, self.frames,
                                                        self.frame_mask)))


def official_shape_features(n_text: int, n_video: int | None = None, *, words: int = OFFICIAL["words"],
                            valid_words: tuple[int, int] = OFFICIAL["valid_words"],
                            frames: int = OFFICIAL["frames"], min_frames: int | None = None,
                            width: int = OFFICIAL["width"], scale: float = 0.3, seed: int = 0) -> CachedFeatures:
    """``n_text`` texts and ``n_video`` videos (default as many) of random features.
    Each text has a uniform number of valid tokens in ``valid_words``; each video a
    uniform number of valid frames in [``min_frames``, ``frames``] (default: all)."""
    n_video = n_text if n_video is None else n_video
    lo, hi = valid_words
    if not 1 <= lo <= hi <= words:
        raise ValueError(f"valid_words must satisfy 1 <= lo <= hi <= words={words}, got {valid_words}")
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(lo, hi + 1, (n_text,), generator=g)
    text_mask = (torch.arange(words) < lengths[:, None]).long()
    n_frames = torch.randint(min_frames or frames, frames + 1, (n_video,), generator=g)
    frame_mask = (torch.arange(frames) < n_frames[:, None]).long()
    tokens = scale * torch.randn(n_text, words, width, generator=g)
    cls = tokens[torch.arange(n_text), lengths - 1].clone()  # the EOT token's feature
    video = scale * torch.randn(n_video, frames, width, generator=g)
    return CachedFeatures(tokens, text_mask, cls, video, frame_mask)
