"""The Python API: everything the CLI does, callable from a notebook or a script.

    from diffret_cli import api

    model = api.load("runs/quickstart-20261123-101500")          # run dir or checkpoint
    texts = api.encode_texts(model, ["a red circle moves left"])
    videos = api.encode_videos(model, frames)                    # uint8 [N,T,H,W,3] or list of them
    scores = api.score(model, texts, videos)                     # stage-1 S [N_text, N_video]
    t2v, v2t = api.rerank(model, scores, texts, videos)          # diffusion re-ranked

    model = api.convert_official("best.pth")                     # official DiffusionRet weights
    api.save(model, "checkpoints/converted")

    run = api.train(api.load_recipe("quickstart"))               # a run directory
    results = api.evaluate_run(run)                              # its recipe's targets, as `diffret eval`
    result = api.evaluate(model, "synthetic", split="test")      # one prepared split
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from diffret_cli.checkpoint import load_model, save_model
from diffret_cli.errors import ConfigError
from diffret_cli.evaluation import EvalSettings, EvalTarget, evaluate_dataset, evaluate_run
from diffret_cli.families import build_model
from diffret_cli.model.diffusionret import DiffusionRet, TextFeatures, VideoFeatures
from diffret_cli.preprocess import frames_to_tensor, select_frame_indices
from diffret_cli.recipes import load_recipe
from diffret_cli.training import train

__all__ = ["build", "load", "save", "convert_official", "encode_texts", "encode_videos", "score", "rerank",
           "evaluate", "evaluate_run", "train", "load_recipe", "EvalSettings", "EvalTarget",
           "TextFeatures", "VideoFeatures"]


def build(config: dict | None = None, *, load_pretrained: bool = True):
    """A model from a config of any family (``config["family"]``, default DiffusionRet:
    see ``diffret_cli.model.config.DEFAULT_CONFIG``)."""
    return build_model(config, load_pretrained=load_pretrained)


def evaluate(model, dataset: str, *, split: str = "test", settings: EvalSettings | None = None,
             data_root: str | Path | None = None, **overrides) -> dict:
    """Metrics of ``model`` on a prepared split (``overrides``: EvalSettings fields,
    e.g. ``steps=10``, ``qb_norm=True``)."""
    settings = (settings or EvalSettings()).with_overrides(**overrides)
    return evaluate_dataset(model, EvalTarget(dataset, split), settings,
                            data_root=Path(data_root) if data_root else None)


def load(path: str | Path, *, device: str = "cpu") -> DiffusionRet:
    """A model from a checkpoint directory or a run directory (its best checkpoint)."""
    return load_model(Path(path), map_location=device).eval()


def save(model: DiffusionRet, directory: str | Path) -> Path:
    return save_model(model, Path(directory))


def convert_official(path: str | Path, **config_overrides) -> DiffusionRet:
    from diffret_cli import convert

    return convert.convert_official(convert.load_official(Path(path)), config_overrides=config_overrides)


@torch.no_grad()
def encode_texts(model: DiffusionRet, texts: list[str], *, batch_size: int = 256) -> TextFeatures:
    from diffret_cli.features import encode_texts as _enc

    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise ConfigError("encode_texts needs a non-empty list of strings",
                          hint='pass e.g. ["a man is playing guitar"]')
    device = next(model.parameters()).device
    return _enc(model.eval(), texts, batch_size=batch_size, device=device)


@torch.no_grad()
def encode_videos(model: DiffusionRet, videos, *, batch_size: int = 16) -> VideoFeatures:
    """``videos``: a uint8 array [N,T,H,W,3] or a list of [T,H,W,3] arrays (any T, any size)."""
    enc, max_frames = model.encoder, model.config["max_frames"]
    device = next(model.parameters()).device
    model.eval()
    feats, masks = [], []
    batch = []

    def flush():
        x = torch.stack([b[0] for b in batch]).to(device)
        m = torch.stack([b[1] for b in batch]).to(device)
        v = model.encode_video(x, m)
        feats.append(v.frames)
        masks.append(m)
        batch.clear()

    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size}; it must be >= 1", hint="pass batch_size=16 (the default)")
    for i, frames in enumerate(videos):
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0 or frames.dtype != np.uint8:
            raise ConfigError(f"video {i}: expected uint8 frames [T, H, W, 3] with T >= 1, got "
                              f"{frames.dtype} {list(frames.shape)}",
                              hint="decode the video first (e.g. with decord or PyAV) and pass its RGB frames; "
                              "a video with no frames cannot be encoded")
        frames = frames[select_frame_indices(len(frames), max_frames)]
        batch.append(frames_to_tensor(frames, image_size=enc.image_size, mean=enc.image_mean, std=enc.image_std,
                                      max_frames=max_frames))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    if not feats:
        raise ConfigError("encode_videos got no videos", hint="pass a non-empty list of [T, H, W, 3] uint8 arrays")
    return VideoFeatures(torch.cat(feats), torch.cat(masks))


@torch.no_grad()
def score(model: DiffusionRet, texts: TextFeatures, videos: VideoFeatures) -> torch.Tensor:
    """Stage-1 similarity S [N_text, N_video] (paper Eq. 10)."""
    return model.similarity_matrix(texts, videos)


@torch.no_grad()
def rerank(model: DiffusionRet, scores: torch.Tensor, texts: TextFeatures, videos: VideoFeatures, *,
           steps: int | None = None, topk: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Diffusion re-ranked (t2v [N_text, N_video], v2t [N_video, N_text])."""
    g = torch.Generator(device=scores.device).manual_seed(seed)
    return model.rerank(scores, texts, videos, steps=steps, topk_t2v=topk, topk_v2t=topk, generator=g)
