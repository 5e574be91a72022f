"""Paper Figure B: a caption's text-frame attention over a video's frames.

The text-to-video denoiser pools each candidate video over its frames by attention to the
text (paper Eq. 4): ``a = softmax(t . f_j / temp)`` over the frames f_j, with the frame
mask applied as the denoiser applies it (official: multiplied after the softmax, no
renormalisation; ``renormalize_frames=True``: padded frames excluded first). The figure
draws that weight under each frame's thumbnail, for the caption's own video and for the
video stage 1 ranks highest among the others (the one it must be told apart from).
"""

from __future__ import annotations

import textwrap

import numpy as np
import torch

from diffret_cli.errors import ConfigError
from diffret_cli.metrics import ranks_from_scores
from diffret_cli.viz.frames import GT_COLOR, OTHER_COLOR, model_frames, new_figure

__all__ = ["text_frame_attention", "draw_attention", "attention_figure"]


@torch.no_grad()
def text_frame_attention(denoiser, text: torch.Tensor, frames: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """Eq. 4 attention weights [T] of one text cls feature ``text`` [D] over one video's
    frame features ``frames`` [T,D] (``mask`` [T]), as ``denoiser`` (the t2v head) pools."""
    for name in ("temp", "renormalize_frames"):
        if not hasattr(denoiser, name):
            raise ConfigError(f"the t2v denoiser {type(denoiser).__name__} has no {name!r}: it is not "
                              "DiffusionRet's text-frame attention (paper Eq. 4)",
                              hint="viz attention draws the query-candidate denoisers (t2v / v2t plugins)")
    logits = (frames.float() @ text.float()) / float(denoiser.temp)
    m = mask.to(logits.dtype)
    if denoiser.renormalize_frames:
        w = torch.softmax(logits.masked_fill(m == 0, float("-inf")), dim=-1).nan_to_num(0.0)
    else:  # the official code multiplies the mask in after the softmax
        w = torch.softmax(logits, dim=-1) * m
    return w.cpu().numpy()


def draw_attention(caption: str, rows: list[dict]):
    """``rows``: dicts with ``label``, ``frames`` [T,H,W,3] uint8, ``weights`` [T] and
    ``ground_truth`` (bool). One thumbnail row and one bar row per video; axes are labelled
    ``frames:<i>`` and ``weights:<i>`` (what the tests look up)."""
    t = max(len(r["frames"]) for r in rows)
    h, w = np.asarray(rows[0]["frames"]).shape[1:3]
    frame_in = 1.1  # inches a frame is wide; the thumbnail row keeps the frames' aspect
    img_in, bar_in, title_in = frame_in * h / w, 0.9, 0.3
    width = t * frame_in + 0.9
    fig = new_figure(width, len(rows) * (img_in + bar_in + 2 * title_in) + 0.6)
    grid = fig.add_gridspec(2 * len(rows), 1, height_ratios=[img_in + title_in, bar_in + title_in] * len(rows))
    for i, r in enumerate(rows):
        frames, w = np.asarray(r["frames"]), np.asarray(r["weights"], float)
        n = len(frames)
        if len(w) < n:
            raise ValueError(f"{len(w)} weights for {n} frames")
        color = GT_COLOR if r["ground_truth"] else OTHER_COLOR
        img = fig.add_subplot(grid[2 * i])
        img.set_label(f"frames:{i}")
        # frames side by side, each one unit wide, so bar j sits under frame j
        img.imshow(np.concatenate(list(frames), axis=1), extent=(0, n, 0, 1), aspect="auto")
        img.set_xticks([])
        img.set_yticks([])
        for j in range(1, n):  # a gap between frames
            img.axvline(j, color="white", linewidth=2)
        for side in img.spines.values():
            side.set_edgecolor(color)
            side.set_linewidth(3 if r["ground_truth"] else 1)
        img.set_title(r["label"], fontsize=8, loc="left", color=color)
        bars = fig.add_subplot(grid[2 * i + 1])
        bars.set_label(f"weights:{i}")
        bars.bar(np.arange(n) + 0.5, w[:n], width=0.8, color=color)
        for j, v in enumerate(w[:n]):
            bars.text(j + 0.5, v, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
        bars.set_xlim(0, n)
        bars.set_ylim(0, max(1e-6, float(w[:n].max())) * 1.3)
        bars.set_xticks(np.arange(n) + 0.5, [str(j + 1) for j in range(n)], fontsize=7)
        bars.tick_params(labelsize=7)
        bars.set_ylabel("attention", fontsize=7)
    text = f"text-frame attention (Eq. 4): \u201c{caption}\u201d"
    fig.suptitle("\n".join(textwrap.wrap(text, int(width * 12))), fontsize=9)
    return fig


def attention_figure(scores, *, model, caption: int, video: int | None = None):
    """Figure B for caption ``caption`` of a scored split: its own video (or ``video``) and
    stage 1's best other video."""
    if not hasattr(model, "denoiser_t2v"):
        raise ConfigError(f"the model ({type(model).__name__}) has no text-to-video denoiser, so no "
                          "text-frame attention (paper Eq. 4) to draw",
                          hint="viz attention draws DiffusionRet runs")
    n = len(scores.captions)
    if not 0 <= caption < n:
        raise ConfigError(f"caption {caption} is out of range: {scores.dataset} {scores.split_name} has {n} "
                          "captions", hint=f"pass --query 0..{n - 1}")
    gt = int(scores.caption_video[caption])
    row = scores.stage1[caption].clone()
    if video is None:
        videos = [gt]
        row[gt] = float("-inf")
        videos.append(int(row.argmax()))
    else:
        if not 0 <= video < len(scores.video_ids):
            raise ConfigError(f"video {video} is out of range ({len(scores.video_ids)} videos)",
                              hint=f"pass --video 0..{len(scores.video_ids) - 1}")
        videos = [video]
    # each video's rank for this caption, as diffret_cli.metrics ranks (ties count half)
    ranks = ranks_from_scores(scores.stage1[caption:caption + 1].expand(len(videos), -1), np.array(videos))
    max_frames = model.config["max_frames"]
    rows = []
    for v, rank in zip(videos, ranks.tolist()):
        vid = scores.video_ids[v]
        frames = model_frames(scores.split, vid, max_frames)
        w = text_frame_attention(model.denoiser_t2v, scores.text.cls[caption], scores.video.frames[v],
                                 scores.video.mask[v])
        kind = "ground truth" if v == gt else "best other video"
        label = f"{kind}: {vid} (stage-1 rank {rank:g}, S {float(scores.stage1[caption, v]):.3f})"
        lost = 1.0 - float(w.sum())
        if lost > 0.005:  # the official mask, applied after the softmax, drops what padded frames took
            label += f"; padded frames took {lost:.2f} of the attention"
        rows.append({"label": label,
                     "frames": frames, "weights": w[:len(frames)], "ground_truth": v == gt})
    return draw_attention(scores.captions[caption], rows)
