"""The frame cache: frames sampled once, stored so training never decodes video again.

One safetensors file per video holds every sampled frame JPEG-encoded and packed into a
single byte buffer:

- ``images``      uint8  [N]     all frames' JPEG (or PNG) bytes, back to back
- ``offsets``     int64  [T+1]   frame ``i`` is ``images[offsets[i]:offsets[i+1]]``
- ``timestamps``  float64 [T]    each frame's presentation time, seconds from the stream start

and string metadata: format, video id, frame count and size, codec and JPEG quality, a
SHA-1 of the contents (so ``verify`` catches silent corruption), plus what the writer adds
(sampling fps, short side, duration, partial, ...).

Why this shape: JPEG at quality 90 and short side 224 is ~10-30 KB a frame (measured on
Kinetics, WebM and NTU clips), so MSRVTT at 1 fps (10k videos, ~150k frames) is ~3 GB
instead of the ~40 GB raw uint8 frames would take; one file per video keeps reads to one
``open`` and lets ``prepare`` resume per video; the header-only metadata makes "is this
item done?" cheap. Files are written atomically
(:func:`~diffret_cli.fileio.atomic_write_bytes`), so a file that exists is complete.

Video ids become file names through SHA-1 (ids contain ``/``, ``@``, ``.``...), sharded
by the first two hex digits so a million videos never land in one directory.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from diffret_cli.fileio import atomic_write_bytes, is_temp_name
from diffret_cli.errors import DiffretError

FORMAT = "diffret-frames/1"
SUFFIX = ".safetensors"
DEFAULT_QUALITY = 90
CODECS = ("jpeg", "png")


class FrameCacheError(DiffretError):
    """A cache file is missing, unreadable, or does not hold what its manifest says."""


def cache_key(video_id: str) -> str:
    """The deterministic, file-system-safe name of ``video_id`` (SHA-1 hex of its UTF-8)."""
    return hashlib.sha1(video_id.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class CachedItem:
    """What a cache file's header says about it (read without touching the frames)."""

    video_id: str
    num_frames: int
    height: int
    width: int
    metadata: dict[str, str] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        """A metadata value decoded from JSON (writers store every extra as JSON)."""
        if key not in self.metadata:
            return default
        try:
            return json.loads(self.metadata[key])
        except ValueError:
            return self.metadata[key]


# ------------------------------------------------------------------------- encoding
def encode_frames(frames: np.ndarray, *, quality: int = DEFAULT_QUALITY,
                 codec: str = "jpeg") -> tuple[np.ndarray, np.ndarray]:
    """Encode ``frames`` (uint8 [T,H,W,3]); returns (bytes buffer uint8 [N], offsets int64 [T+1]).

    ``codec="png"`` stores frames losslessly: used for generated datasets, whose flat
    colours compress well in PNG and whose exact pixel values tests rely on.
    """
    from PIL import Image

    if codec not in CODECS:
        raise ValueError(f"codec must be one of {CODECS}, got {codec!r}")

    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [T,H,W,3], got {frames.dtype} {tuple(frames.shape)}")
    chunks: list[bytes] = []
    offsets = np.zeros(len(frames) + 1, dtype=np.int64)
    for i, frame in enumerate(frames):
        buf = io.BytesIO()
        img = Image.fromarray(np.ascontiguousarray(frame), "RGB")
        if codec == "jpeg":
            img.save(buf, format="JPEG", quality=quality)
        else:
            img.save(buf, format="PNG", compress_level=6)
        chunks.append(buf.getvalue())
        offsets[i + 1] = offsets[i] + len(chunks[-1])
    data = np.frombuffer(b"".join(chunks), dtype=np.uint8) if chunks else np.zeros(0, np.uint8)
    return data, offsets


def decode_image(data: bytes | np.ndarray) -> np.ndarray:
    """One encoded frame (JPEG or PNG) -> uint8 [H,W,3]."""
    from PIL import Image

    with Image.open(io.BytesIO(bytes(data))) as img:
        return np.asarray(img.convert("RGB"))


def _digest(data: np.ndarray, offsets: np.ndarray, timestamps: np.ndarray) -> str:
    """SHA-1 over everything a reader uses, stored at write time and re-checked by ``verify``."""
    h = hashlib.sha1(np.ascontiguousarray(data).tobytes())
    h.update(np.ascontiguousarray(offsets, dtype="<i8").tobytes())
    h.update(np.ascontiguousarray(timestamps, dtype="<f8").tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------- cache
class FrameCache:
    """Read and write per-video frame files under ``root``.

    ``write`` is safe to call from many processes at once for different videos (each
    write is one atomic rename); readers never see a partial file.
    """

    def __init__(self, root: str | os.PathLike, *, quality: int = DEFAULT_QUALITY, codec: str = "jpeg"):
        if codec not in CODECS:
            raise ValueError(f"codec must be one of {CODECS}, got {codec!r}")
        self.root = Path(root)
        self.quality = int(quality)
        self.codec = codec

    # paths ---------------------------------------------------------------------------
    def path(self, video_id: str) -> Path:
        key = cache_key(video_id)
        return self.root / key[:2] / (key + SUFFIX)

    def has(self, video_id: str) -> bool:
        """True when a complete, readable cache file for ``video_id`` exists."""
        return self.info(video_id) is not None

    def info(self, video_id: str) -> CachedItem | None:
        """The header of ``video_id``'s file, or None when missing or unreadable."""
        try:
            return self._header(self.path(video_id), video_id)
        except FrameCacheError:
            return None

    def iter_files(self) -> Iterator[Path]:
        """Every finished cache file (temp files from interrupted writes are skipped)."""
        if not self.root.is_dir():
            return
        for shard in sorted(self.root.iterdir()):
            if shard.is_dir():
                for f in sorted(shard.iterdir()):
                    if f.suffix == SUFFIX and not is_temp_name(f.name):
                        yield f

    # write ---------------------------------------------------------------------------
    def write(self, video_id: str, frames: np.ndarray, timestamps: Sequence[float] | np.ndarray, *,
              metadata: dict[str, Any] | None = None) -> Path:
        """Encode and store ``frames`` (uint8 [T,H,W,3]) with their ``timestamps`` [T].

        ``metadata`` values are stored JSON-encoded; read them back with
        :meth:`CachedItem.get`. Returns the file written.
        """
        from safetensors.numpy import save

        frames = np.asarray(frames)
        ts = np.asarray(timestamps, dtype=np.float64).reshape(-1)
        if frames.ndim != 4 or len(ts) != len(frames):
            raise ValueError(f"{video_id!r}: {len(ts)} timestamps for frames of shape {tuple(frames.shape)}")
        data, offsets = encode_frames(frames, quality=self.quality, codec=self.codec)
        meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
        meta.update({
            "format": FORMAT,
            "video_id": video_id,
            "num_frames": str(len(frames)),
            "height": str(frames.shape[1]),
            "width": str(frames.shape[2]),
            "codec": self.codec,
            "quality": str(self.quality),
            "sha1": _digest(data, offsets, ts),
        })
        blob = save({"images": data, "offsets": offsets, "timestamps": ts}, metadata=meta)
        path = self.path(video_id)
        atomic_write_bytes(path, blob)
        return path

    def remove(self, video_id: str) -> None:
        self.path(video_id).unlink(missing_ok=True)

    # read ----------------------------------------------------------------------------
    def read(self, video_id: str, *, indices: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Frames uint8 [T,H,W,3] and timestamps float64 [T] of ``video_id``.

        ``indices`` decodes only those frames (training samples a dozen of them).
        """
        path = self.path(video_id)
        item, tensors = self._load(path, video_id)
        data, offsets, ts = tensors["images"], tensors["offsets"], tensors["timestamps"]
        idx = list(range(item.num_frames)) if indices is None else [int(i) for i in indices]
        for i in idx:
            if not -item.num_frames <= i < item.num_frames:
                raise IndexError(f"frame {i} out of range for {video_id!r} with {item.num_frames} frames")
        idx = [i % item.num_frames for i in idx]
        if not idx:
            return np.zeros((0, item.height, item.width, 3), np.uint8), np.zeros(0, np.float64)
        frames = np.stack([decode_image(data[offsets[i]:offsets[i + 1]]) for i in idx])
        return frames, ts[idx].copy()

    def read_timestamps(self, video_id: str) -> np.ndarray:
        from safetensors import safe_open

        path = self.path(video_id)
        self._header(path, video_id)
        with safe_open(str(path), framework="numpy") as fh:
            return fh.get_tensor("timestamps")

    def verify(self, video_id: str, *, expected_frames: int | None = None, decode: bool = False) -> str | None:
        """None when ``video_id``'s file is intact, else what is wrong (one line).

        Checks: the file exists and parses, it belongs to ``video_id``, the frame count
        matches ``expected_frames``, offsets are consistent, the SHA-1 of the JPEG buffer
        (and offsets, timestamps) matches the one stored
        at write time, and (``decode=True``) every frame decodes.
        """
        path = self.path(video_id)
        try:
            item, tensors = self._load(path, video_id)
        except FrameCacheError as exc:
            return exc.message
        if expected_frames is not None and item.num_frames != expected_frames:
            return f"{path}: {item.num_frames} frames, manifest says {expected_frames}"
        data, offsets, ts = tensors["images"], tensors["offsets"], tensors["timestamps"]
        if len(offsets) != item.num_frames + 1 or len(ts) != item.num_frames:
            return f"{path}: {len(offsets) - 1} offsets / {len(ts)} timestamps for {item.num_frames} frames"
        if offsets[0] != 0 or offsets[-1] != len(data) or np.any(np.diff(offsets) <= 0):
            return f"{path}: frame offsets do not tile the JPEG buffer"
        sha = _digest(data, offsets, ts)
        if item.metadata.get("sha1") and sha != item.metadata["sha1"]:
            return f"{path}: content checksum mismatch (file corrupted after it was written)"
        if decode:
            for i in range(item.num_frames):
                try:
                    img = decode_image(data[offsets[i]:offsets[i + 1]])
                except Exception as exc:  # noqa: BLE001 - any decoder failure is the finding
                    return f"{path}: frame {i} does not decode ({type(exc).__name__}: {exc})"
                if img.shape[:2] != (item.height, item.width):
                    return f"{path}: frame {i} is {img.shape[1]}x{img.shape[0]}, header says {item.width}x{item.height}"
        return None

    # internals -----------------------------------------------------------------------
    def _header(self, path: Path, video_id: str | None) -> CachedItem:
        from safetensors import safe_open

        if not path.is_file():
            raise FrameCacheError(f"{path}: cache file missing" + (f" for {video_id!r}" if video_id else ""),
                                  hint="re-run `diffret data prepare` to rebuild it")
        try:
            with safe_open(str(path), framework="numpy") as fh:
                meta = dict(fh.metadata() or {})
                keys = set(fh.keys())
        except Exception as exc:  # noqa: BLE001 - a truncated/garbled file shows up here
            raise FrameCacheError(f"{path}: unreadable cache file ({type(exc).__name__}: {exc})",
                                  hint="delete it and re-run `diffret data prepare`") from exc
        if meta.get("format") != FORMAT or not {"images", "offsets", "timestamps"} <= keys:
            raise FrameCacheError(f"{path}: not a {FORMAT} file (format={meta.get('format')!r})",
                                  hint="delete it and re-run `diffret data prepare`")
        if video_id is not None and meta.get("video_id") != video_id:
            raise FrameCacheError(f"{path}: holds video {meta.get('video_id')!r}, expected {video_id!r}",
                                  hint="delete it and re-run `diffret data prepare`")
        try:
            return CachedItem(meta["video_id"], int(meta["num_frames"]), int(meta["height"]),
                              int(meta["width"]), meta)
        except (KeyError, ValueError) as exc:
            raise FrameCacheError(f"{path}: incomplete header ({exc})",
                                  hint="delete it and re-run `diffret data prepare`") from exc

    def _load(self, path: Path, video_id: str) -> tuple[CachedItem, dict[str, np.ndarray]]:
        from safetensors.numpy import load

        item = self._header(path, video_id)
        try:
            tensors = load(path.read_bytes())
        except Exception as exc:  # noqa: BLE001
            raise FrameCacheError(f"{path}: unreadable cache file ({type(exc).__name__}: {exc})",
                                  hint="delete it and re-run `diffret data prepare`") from exc
        return item, tensors
