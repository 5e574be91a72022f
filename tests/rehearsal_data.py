"""A prepared dataset written directly with the data layer's public writers (frame cache,
split manifests, ``prepared.json``), for tests that need a benchmark's *sizes* rather
than its content: the full-size rehearsal (tests/test_rehearsal.py) and the extraction
memory test (tests/test_distributed.py).

Frames are tiny generated images (a colour ramp per video plus a moving square, PNG),
captions are random word sequences of 5-20 words; nothing is decoded or downloaded.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from diffret_cli.data.framecache import FrameCache
from diffret_cli.data.manifest import write_prepared_json, write_split_manifest
from diffret_cli.data.paths import dataset_dir, frames_dir

WORDS = ("a man woman person people child dog cat car truck ball guitar piano song kitchen street beach "
         "field room stage video clip is are plays sings cooks runs walks talks drives shows dances "
         "in on at with of the and red blue green small large fast slowly outside inside").split()

#: MSRVTT at the paper's setting: the 9k training list (20 captions a video), the
#: official validation list (497 videos, 20 captions), the 1k-A test (one caption each)
MSRVTT_SIZES = {"train": (9000, 20), "val": (497, 20), "test": (1000, 1)}
PROTOCOLS = {"train": "multi", "val": "multi", "test": "single"}


def caption(rng: np.random.Generator) -> str:
    return " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), int(rng.integers(5, 21))))


def video_frames(index: int, num_frames: int, size: int) -> np.ndarray:
    """uint8 [T,S,S,3]: a per-video colour ramp with a square moving across it."""
    rng = np.random.default_rng(index)
    base = rng.integers(0, 256, 3)
    ramp = np.linspace(0, 1, size)[None, :, None] * rng.integers(-80, 80, 3)
    img = np.clip(base + ramp, 0, 255).astype(np.uint8).repeat(size, axis=0)
    out = np.repeat(img[None], num_frames, axis=0)
    side = max(2, size // 4)
    for t in range(num_frames):
        x = (t * (size - side)) // max(1, num_frames - 1)
        out[t, size // 3:size // 3 + side, x:x + side] = 255 - base
    return out


def _write_frames(args: tuple[str, list[tuple[str, int]], int, int]) -> int:
    """Write one chunk of videos' frame files (a worker process). Files are written with
    the frame cache's own writer; its fsyncs are skipped: this is throwaway test data in
    a temp folder, and 20,000 fsyncs would take minutes."""
    from unittest import mock

    folder, items, num_frames, frame_size = args
    cache = FrameCache(Path(folder), codec="png")
    with mock.patch("os.fsync", lambda fd: None):
        for vid, seed in items:
            cache.write(vid, video_frames(seed, num_frames, frame_size), np.arange(num_frames, dtype=np.float64),
                        metadata={"fps": 1.0})
    return len(items)


def write_dataset(data_root: Path, name: str, sizes: dict[str, tuple[int, int]], *, num_frames: int = 12,
                  frame_size: int = 32, seed: int = 0, workers: int = 2) -> Path:
    """``<data_root>/<name>`` prepared with ``sizes`` (split -> (videos, captions a video)).
    Every video gets ``num_frames`` frames at 1 fps; video ids are unique across splits."""
    import multiprocessing as mp

    from diffret_cli.data.manifest import manifest_digest

    root = dataset_dir(data_root, name)
    rng = np.random.default_rng(seed)
    rows: dict[str, list[dict]] = {}
    items = []
    offset = 0
    for split, (num_videos, per_video) in sizes.items():
        rows[split] = []
        for i in range(num_videos):
            vid = f"video{offset + i}"
            items.append((vid, seed * 1_000_003 + offset + i))
            rows[split].append({"video_id": vid, "captions": [caption(rng) for _ in range(per_video)],
                                "video_path": "", "duration": float(num_frames), "fps": 1.0,
                                "num_frames": num_frames, "status": "ok", "reason": "", "filename": "",
                                "start": -1.0, "end": -1.0})
        offset += num_videos
    chunks = [(str(frames_dir(root)), items[i::workers * 8], num_frames, frame_size) for i in range(workers * 8)]
    if workers > 1:
        with mp.get_context("spawn").Pool(workers) as pool:
            written = sum(pool.map(_write_frames, chunks))
    else:
        written = sum(map(_write_frames, chunks))
    assert written == len(items)
    splits = {}
    for split, (num_videos, per_video) in sizes.items():
        path = write_split_manifest(root, split, rows[split])
        splits[split] = {"protocol": PROTOCOLS.get(split, "multi"), "videos": num_videos, "ready": num_videos,
                         "ok": num_videos, "partial": 0, "skipped": 0, "captions": num_videos * per_video,
                         "frames": num_videos * num_frames, "manifest_sha256": manifest_digest(path),
                         "shared_videos": {}}
    write_prepared_json(root, {
        "dataset": name, "plugin_config": {"rehearsal": True, "sizes": {k: list(v) for k, v in sizes.items()}},
        "plugin_version": "rehearsal", "generated": True, "decoder": {"backend": "generated"}, "fps": 1.0,
        "short_side": frame_size, "frame_codec": "png", "jpeg_quality": 90, "cache_version": 1,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "source": "",
        "protocol": "multi", "max_words": 32, "max_frames": num_frames, "splits": splits,
    })
    return data_root
