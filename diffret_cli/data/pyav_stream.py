"""A file's video stream through PyAV: opening it with an error that names the fix, and
what its container header says (codec, size, rate, expected length), without decoding."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import av

from diffret_cli.data.video_frames import cw_rotation
from diffret_cli.errors import DecodeError


def _parse_hms(text: str) -> float | None:
    """'00:00:10.333000000' (Matroska DURATION tag) -> seconds."""
    m = re.fullmatch(r"\s*(\d+):(\d{1,2}):(\d{1,2}(?:\.\d*)?)\s*", text or "")
    if not m:
        return None
    return int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])


@dataclass
class StreamHeader:
    """What the container header says about the video stream (PyAV, no decoding)."""

    codec: str
    width: int
    height: int
    nominal_fps: float
    frames: int | None
    expected_end: float | None  # seconds, header's idea of the video's end
    expected_tol: float  # how far short of it a stream may end before it is "partial"
    declared_end: float | None = None  # frames / nominal fps: what the frame count declares


def open_video_stream(path: Path):
    """Open ``path`` with PyAV: (container, video stream), or a DecodeError saying why."""
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except av.FFmpegError as exc:
        raise DecodeError(
            f"cannot open video {path}: {exc.strerror or exc}",
            hint="the file is damaged, truncated or not a video (an MP4 cut short loses "
                 "its index, which is written at the end); download or re-encode it again"
        ) from exc
    if not container.streams.video:
        found = ", ".join(f"{s.type}:{getattr(s.codec_context, 'name', '?')}"
                          for s in container.streams) or "none"
        container.close()
        raise DecodeError(f"no video stream in {path} (streams: {found})",
                          hint="this file holds no pictures; replace it with the video")
    return container, container.streams.video[0]


def stream_header(container, stream) -> StreamHeader:
    """The header's view of ``stream`` (of ``container``): no packet is decoded."""
    cc = stream.codec_context
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(rate) if rate else 0.0
    end, tol = None, 0.0
    if stream.duration and stream.time_base:
        end = float(stream.duration * stream.time_base)
        tol = max(0.5, 2.5 / fps if fps else 0.5)
    elif _parse_hms(stream.metadata.get("DURATION", "")) is not None:
        end = _parse_hms(stream.metadata["DURATION"])
        tol = max(0.5, 2.5 / fps if fps else 0.5)
    elif container.duration:
        # container duration includes audio, which may outlast the picture: be lenient
        end = container.duration / 1_000_000
        tol = max(1.0, 0.05 * end)
    frames = stream.frames or None
    # A truncated AVI keeps its header: 164 frames declared, a stream duration computed
    # from the few packets left. The declared count is the better witness of the length.
    declared = frames / fps if frames and fps else None
    return StreamHeader(codec=cc.name, width=stream.width or cc.width,
                   height=stream.height or cc.height, nominal_fps=fps, frames=frames, expected_end=end,
                   expected_tol=tol if end is not None else max(0.5, 2.5 / fps if fps else 0.5),
                   declared_end=declared)


def first_rotation(container, stream) -> int:
    """Clockwise rotation from the first decodable frame (PyAV 18 exposes the display
    matrix on frames only). 0 when nothing decodes."""
    try:
        for packet in container.demux(stream):
            for frame in packet.decode():
                return cw_rotation(frame.rotation)
    except av.FFmpegError:
        pass
    return 0
