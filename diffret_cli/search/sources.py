"""What an index is built from: a folder of the user's videos, or a prepared dataset.

A source is a list of :class:`SourceItem` (id, path, captions) and a way to read one
item's model-ready frames plus a thumbnail strip. Reading one item never raises: a
video that cannot be decoded comes back as an error string, which the build records and
skips (one bad file never stops an index of thousands).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from diffret_cli.errors import ConfigError, DiffretError
from diffret_cli.preprocess import frames_to_tensor, select_frame_indices

#: file name endings tried as videos in a folder (anything FFmpeg reads; decord or PyAV
#: decides for each file whether it really is one)
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp",
                  ".ts", ".mts", ".m2ts", ".ogv", ".vob", ".gif")
THUMB_FRAMES, THUMB_HEIGHT = 4, 72


@dataclass(frozen=True)
class SourceItem:
    id: str
    path: str | None  # the file a result links to (None: generated video, no file)
    captions: tuple[str, ...] = ()
    #: frames in the dataset's cache (None: unknown, decode to find out)
    num_frames: int | None = None


@dataclass
class Loaded:
    """One item read for the model, or the reason it could not be."""

    frames: torch.Tensor | None = None  # [max_frames,3,S,S] normalised
    mask: torch.Tensor | None = None  # [max_frames] int64
    thumb: bytes = b""
    error: str = ""


@dataclass
class Source:
    kind: str  # "videos" | "dataset"
    description: dict
    items: list[SourceItem]
    #: (item, frames uint8 [T,H,W,3]) for one item: the frames the model samples from
    read_frames: Callable[[SourceItem], np.ndarray] = field(repr=False, default=None)


def thumbnail_strip(frames: np.ndarray, *, count: int = THUMB_FRAMES, height: int = THUMB_HEIGHT) -> bytes:
    """A JPEG of ``count`` evenly spaced frames side by side, ``height`` pixels high."""
    from PIL import Image

    picks = frames[select_frame_indices(len(frames), count)]
    tiles = []
    for f in picks:
        im = Image.fromarray(np.ascontiguousarray(f))
        w = max(1, round(im.width * height / im.height))
        tiles.append(im.resize((w, height), Image.BICUBIC))
    gap = 3  # white gaps: frames of dark videos stay apart
    strip = Image.new("RGB", (sum(t.width for t in tiles) + gap * (len(tiles) - 1), height), (255, 255, 255))
    x = 0
    for t in tiles:
        strip.paste(t, (x, 0))
        x += t.width + gap
    buf = io.BytesIO()
    strip.save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def read_video_file(path: str | os.PathLike, *, fps: float = 1.0, short_side: int = 224, max_frames: int = 12,
                    backend: str = "auto") -> np.ndarray:
    """Frames uint8 [T,H,W,3] of a video file, sampled as ``diffret data prepare`` samples
    (1 fps on real timestamps), ``max_frames`` of them kept evenly spaced."""
    from diffret_cli.data.video import decode_sampled

    return decode_sampled(path, fps=fps, short_side=short_side, max_frames=max_frames, backend=backend).frames


def folder_source(root: str | os.PathLike, *, backend: str = "auto", fps: float = 1.0,
                  short_side: int = 224, max_frames: int = 12) -> Source:
    """Every video file under ``root`` (recursively, sorted; id = path relative to it)."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise ConfigError(f"--videos {root}: not a folder", hint="pass the folder that holds your video files")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise ConfigError(f"no video files under {root}",
                          hint=f"file names must end in one of: {', '.join(VIDEO_SUFFIXES)}")
    items = [SourceItem(str(p.relative_to(root)), str(p)) for p in files]

    def read(item: SourceItem) -> np.ndarray:
        return read_video_file(item.path, fps=fps, short_side=short_side, max_frames=max_frames, backend=backend)

    return Source("videos", {"kind": "videos", "path": str(root), "fps": fps, "backend": backend}, items, read)


def dataset_source(name: str, *, split: str = "test", data_root=None, max_frames: int = 12) -> Source:
    """The usable videos of a prepared dataset's split, with their captions, read from its
    frame cache exactly as evaluation reads them."""
    from diffret_cli.data.manifest import PreparedDataset

    data = PreparedDataset.open(data_root, name)
    sp = data.split(split)
    rows = {r["video_id"]: r for r in sp.table.select_columns(["video_id", "video_path", "num_frames"]).to_list()}
    items = []
    for v in sp.videos:
        r = rows.get(v.video_id, {})
        items.append(SourceItem(v.video_id, r.get("video_path") or None, tuple(v.captions), r.get("num_frames") or None))

    def read(item: SourceItem) -> np.ndarray:
        if item.num_frames:  # decode only the frames the model uses, as evaluation does
            frames, _ = sp.frames(item.id, indices=select_frame_indices(item.num_frames, max_frames))
            return frames
        frames, _ = sp.frames(item.id)
        return frames[select_frame_indices(len(frames), max_frames)]

    return Source("dataset", {"kind": "dataset", "name": name, "split": split, "root": str(data.root)}, items, read)


def load_item(source: Source, item: SourceItem, *, image_size: int, mean, std, max_frames: int,
              thumbs: bool = True) -> Loaded:
    """Model-ready frames of one item (never raises on a bad video: see :class:`Loaded`)."""
    try:
        frames = source.read_frames(item)
        frames = frames[select_frame_indices(len(frames), max_frames)]
        x, m = frames_to_tensor(frames, image_size=image_size, mean=mean, std=std, max_frames=max_frames)
        return Loaded(x, m, thumbnail_strip(frames) if thumbs else b"")
    except DiffretError as exc:
        return Loaded(error=exc.message)
    except Exception as exc:  # noqa: BLE001 - any decoder failure on one file is that file's problem
        return Loaded(error=f"{type(exc).__name__}: {exc}")


def load_file(path: str | os.PathLike, *, image_size: int, mean, std, max_frames: int, backend: str = "auto",
              thumbs: bool = True) -> Loaded:
    """One video file, model-ready (the query of a video-to-text search)."""
    src = Source("videos", {}, [], lambda item: read_video_file(item.path, short_side=image_size,
                                                                 max_frames=max_frames, backend=backend))
    return load_item(src, SourceItem(str(path), str(path)), image_size=image_size, mean=mean, std=std,
                     max_frames=max_frames, thumbs=thumbs)
