"""Shared by tests/test_search*.py, test_index*.py and test_serve*.py: a tiny model, a
small prepared ``synthetic`` dataset and a folder of real (tiny) video files, built
once per test session under pytest's base temp folder."""

from __future__ import annotations

from pathlib import Path

import torch

from prepare_helpers import make_video
from train_helpers import prepare_synthetic, tiny_model_config

CAPTIONS = ["a grey square fades in", "light rises slowly", "a dark frame"]


def tiny_checkpoint(root: Path) -> Path:
    from diffret_cli import api

    ckpt = root / "ckpt"
    if not (ckpt / "model.safetensors").is_file():
        torch.manual_seed(0)
        api.save(api.build(tiny_model_config(), load_pretrained=False), ckpt)
    return ckpt


def prepared_synthetic(root: Path) -> Path:
    data = root / "data"
    if not (data / "synthetic" / "prepared.json").is_file():
        prepare_synthetic(data, num_train=8, num_val=4, num_test=12)
    return data


def video_folder(root: Path) -> Path:
    """Three decodable videos in two containers, one damaged file, one non-video file."""
    vids = root / "videos"
    if not vids.is_dir():
        make_video(vids / "a_clip.mp4", seconds=3, size=(64, 48))
        make_video(vids / "sub" / "b_clip.mp4", seconds=2, size=(48, 64))
        make_video(vids / "c_clip.mkv", seconds=2, size=(64, 48), codec="mpeg4")
        (vids / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
        (vids / "notes.txt").write_text("not a video")
    return vids


def world(base: Path) -> dict[str, Path]:
    """Checkpoint, prepared data and a video folder, made once under ``base``."""
    base.mkdir(parents=True, exist_ok=True)
    return {"ckpt": tiny_checkpoint(base), "data": prepared_synthetic(base), "videos": video_folder(base)}


def dataset_index(w: dict[str, Path], out: Path, **settings) -> Path:
    from diffret_cli import api
    from diffret_cli.search.build import BuildSettings, build_index
    from diffret_cli.search.sources import dataset_source

    if not (out / "index.json").is_file():
        model = api.load(w["ckpt"])
        src = dataset_source("synthetic", split="test", data_root=w["data"], max_frames=model.config["max_frames"])
        build_index(model, src, out, checkpoint=str(w["ckpt"].resolve()),
                    settings=BuildSettings(progress=False, batch_size=4, chunk_size=5, **settings))
    return out


def folder_index(w: dict[str, Path], out: Path) -> Path:
    from diffret_cli import api
    from diffret_cli.search.build import BuildSettings, build_index
    from diffret_cli.search.sources import folder_source

    if not (out / "index.json").is_file():
        model = api.load(w["ckpt"])
        src = folder_source(w["videos"], short_side=model.encoder.image_size, max_frames=model.config["max_frames"])
        build_index(model, src, out, checkpoint=str(w["ckpt"].resolve()),
                    settings=BuildSettings(progress=False, batch_size=2, chunk_size=2, extra_captions=CAPTIONS))
    return out
