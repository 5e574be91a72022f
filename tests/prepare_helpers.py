"""Shared by tests/test_prepare.py and tests/test_cli_data.py: a small file-based dataset
plugin and a PyAV video writer, so prepare can be tested on real (tiny) video files.

The plugin lives in an importable module (not a test file) so worker processes started
by ``prepare(workers=2)`` can unpickle it.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import ClassVar

import numpy as np

from diffret_cli.data.types import ItemProblem, SplitAnnotations, VideoEntry
from diffret_cli.errors import AnnotationError
from diffret_cli.data.plugin import DatasetPlugin

DATA = Path(__file__).parent / "data" / "prepare"


def make_video(path: Path, *, seconds: float, fps: int = 10, size: tuple[int, int] = (64, 48),
               codec: str = "libx264") -> Path:
    """Write an H.264 MP4 whose frame ``i`` is a flat grey of level ``(20 * i) % 250``."""
    import av

    w, h = size
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(int(round(seconds * fps))):
            frame = av.VideoFrame.from_ndarray(np.full((h, w, 3), (20 * i) % 250, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def make_audio_only(path: Path) -> Path:
    """A Matroska file holding one MP2 audio stream and no video."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mp2", rate=44100)
        for i in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1152), np.int16), format="s16", layout="mono")
            frame.sample_rate, frame.pts = 44100, i * 1152
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


class FakeVids(DatasetPlugin):
    """Reads ``annos.json`` = {split: {video_id: [caption, ...]}}; videos are
    ``videos/<id>.mp4``. ``crash_on`` kills the worker process on that id (a stand-in for
    a decoder that segfaults); ``delay`` seconds of sleep per video make a run slow
    enough to interrupt at a chosen point."""

    name: ClassVar[str] = "fakevids"
    splits: ClassVar[tuple[str, ...]] = ("train", "test")
    protocol: ClassVar[str] = "single"

    def __init__(self, *, crash_on: str = "", delay: float = 0.0):
        self.crash_on = crash_on
        self.delay = delay

    def config(self):
        return {"crash_on": self.crash_on, "delay": self.delay}

    def annotation_files(self, split):
        return ["annos.json"]

    def load_split(self, source: Path, split: str) -> SplitAnnotations:
        path = Path(source) / "annos.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise AnnotationError(f"{path}: cannot read ({exc})", hint="fix the file") from exc
        if not isinstance(data.get(split), dict):
            raise AnnotationError(f"{path}: key {split!r} must map video ids to caption lists",
                                  hint="fix the file")
        videos, problems = [], []
        for vid, caps in data[split].items():
            if not caps:
                problems.append(ItemProblem(vid, "no-caption", "listed without captions", str(path)))
                continue
            videos.append(VideoEntry(vid, tuple(caps)))
        return SplitAnnotations(self.name, split, self.protocol, videos, problems)

    def locate_video(self, source: Path, entry: VideoEntry) -> Path | None:
        if self.crash_on and entry.video_id == self.crash_on:
            os.kill(os.getpid(), signal.SIGKILL)
        if self.delay:
            time.sleep(self.delay)
        p = Path(source) / "videos" / f"{entry.video_id}.mp4"
        return p if p.exists() else None


def make_source(root: Path) -> Path:
    """A source folder with good and bad videos of every kind prepare must survive.

    train: good1 (3 s), empty (0 bytes), missing (no file), garbage (random bytes),
           broken (a real damaged H.264 file: partial), nocap (no captions: a parser problem)
    test:  good2 (2 s, 96x54), audio (no video stream), good1 (shared with train)
    """
    src = root / "src"
    make_video(src / "videos" / "good1.mp4", seconds=3)
    make_video(src / "videos" / "good2.mp4", seconds=2, size=(96, 54))
    (src / "videos" / "empty.mp4").write_bytes(b"")
    (src / "videos" / "garbage.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    (src / "videos" / "broken.mp4").write_bytes((DATA / "corrupted_h264.mp4").read_bytes())
    make_audio_only(src / "videos" / "audio.mp4")
    annos = {
        "train": {"good1": ["a grey square fades in", "light rises"], "empty": ["x"], "missing": ["y"],
                  "garbage": ["z"], "broken": ["a damaged clip"], "nocap": []},
        "test": {"good2": ["two seconds of grey"], "audio": ["only sound"], "good1": ["the same video again"]},
    }
    (src / "annos.json").write_text(json.dumps(annos))
    return src


def make_many(root: Path, n: int, *, seconds: float = 1.0) -> Path:
    """A source folder of ``n`` small good videos (``v000`` ...) in one ``train`` split."""
    src = root / "src"
    for i in range(n):
        make_video(src / "videos" / f"v{i:03d}.mp4", seconds=seconds, size=(32, 24))
    (src / "annos.json").write_text(json.dumps({"train": {f"v{i:03d}": [f"clip {i}"] for i in range(n)},
                                                "test": {}}))
    return src


def main(argv: list[str]) -> None:
    """``python tests/prepare_helpers.py data prepare fakevids ...``: the real CLI, with
    FakeVids registered (fault-injection tests run this in a child process and kill it)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from prepare_helpers import FakeVids as Registered  # workers unpickle it from this module

    from diffret_cli.cli.main import main as cli_main
    from diffret_cli.registry import registry

    registry().register("datasets", "fakevids", Registered)
    cli_main(argv)


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
