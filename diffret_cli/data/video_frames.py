"""Frame selection and pictures, shared by both decoding backends.

The sampling plan (which timestamps to aim for), the nearest-timestamp selector that
both backends use so they pick the same frames, rotation and resize of the pictures,
and the public result types re-exported by :mod:`diffret_cli.data.video`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import av
import numpy as np


# Timestamps closer than this count as equally near a target (the earlier frame wins):
# decord reports float32 seconds, PyAV exact ones, and a tie must not split the backends.
_TIE_EPS = 1e-5


@dataclass
class VideoInfo:
    """What a video file holds, as a backend sees it.

    ``width``/``height`` are the display size, after rotation. ``rotation`` is the
    clockwise turn (0/90/180/270) the display matrix asks for: 90 for a phone held
    upright. ``duration`` runs from the stream start to the end of the last frame,
    measured from frame timestamps, not from the header. ``num_frames`` is the number
    of frames the backend found, or None when it did not read the whole stream.
    """

    path: str
    backend: str
    codec: str
    width: int
    height: int
    rotation: int
    nominal_fps: float
    duration: float
    num_frames: int | None


@dataclass
class DecodedVideo:
    """Frames sampled from one video.

    ``frames`` is uint8 ``[T, H, W, 3]`` RGB in display orientation, resized;
    ``timestamps`` float64 ``[T]`` holds each frame's real presentation time (seconds).
    ``partial`` is True when the stream broke part-way (or ends well before its header
    says) and the frames that did decode were kept; ``warnings`` says what happened.
    ``decoded_frames`` counts the pictures the decoder produced (the cost of sampling;
    PyAV only, None from decord): fewer than the stream holds when frames no other
    frame refers to were skipped.
    """

    frames: np.ndarray
    timestamps: np.ndarray
    info: VideoInfo
    backend: str
    partial: bool = False
    warnings: list[str] = field(default_factory=list)
    decoded_frames: int | None = None


class BackendFailure(Exception):
    """decord could not do the job; ``auto`` falls back to PyAV."""


def cw_rotation(ccw_degrees: float | int | None) -> int:
    """FFmpeg's counter-clockwise display angle -> clockwise quarter turns in degrees."""
    if not ccw_degrees:
        return 0
    return int((-round(float(ccw_degrees) / 90.0) * 90) % 360)


def display_size(width: int, height: int, rotation: int) -> tuple[int, int]:
    return (height, width) if rotation in (90, 270) else (width, height)


def output_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """(w, h) with the short side equal to ``short_side``, aspect ratio kept."""
    if short_side is None:
        return width, height
    scale = short_side / min(width, height)
    # round half up (not Python's half-to-even) so that sizes do not depend on parity
    w = max(1, int(math.floor(width * scale + 0.5)))
    h = max(1, int(math.floor(height * scale + 0.5)))
    if width <= height:
        w = short_side
    else:
        h = short_side
    return w, h


#: FFmpeg swscale filter used for every resize. Bilinear because decord's scale filter
#: (FFmpeg 4.1, which it bundles) has no other setting; PyAV is told the same, so both
#: backends resize alike. swscale widens the filter when shrinking (no aliasing). Mean
#: absolute difference to PIL bicubic on 320x240 and 640x360 H.264: 1.6 / 255, about
#: what JPEG quality 90 itself changes (1.5); cost 0.6 ms a frame against PIL's 1.3-3.1.
SCALER = "BILINEAR"


def resize_rgb(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize RGB ``rgb`` to ``size`` = (w, h) with FFmpeg's scaler (:data:`SCALER`).

    For frames that arrive as RGB (rotated videos read by decord); PyAV frames and
    unrotated decord frames are scaled from YUV inside the decoder instead.
    """
    if (rgb.shape[1], rgb.shape[0]) == size:
        return np.ascontiguousarray(rgb)
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    return frame.reformat(width=size[0], height=size[1], interpolation=SCALER).to_ndarray()


@dataclass(frozen=True)
class SamplingPlan:
    start: float  # clip start (seconds)
    end: float  # clip end requested (inf = to the end of the video)
    fps: float

    def grid(self, k: int) -> float:
        # computed from k, not accumulated, so that both backends get identical floats
        return self.start + (k + 0.5) / self.fps


class FrameSelector:
    """Online nearest-timestamp picker shared by both backends.

    Frames are fed in display order with increasing timestamps. Target ``t_k`` is
    settled as soon as a frame at or after it arrives: the nearer of that frame and
    the previous one wins (ties, within ``_TIE_EPS``, go to the earlier frame).
    Settling early is what lets PyAV keep only the chosen frames instead of the whole
    video. A frame nearest to several targets is picked once.
    """

    def __init__(self, target: Callable[[int], float], limit: float,
                 convert: Callable[[Any], Any] = lambda x: x):
        self._target = target
        self._limit = limit  # targets at or after this are not used
        self._convert = convert
        self._k = 0
        self.prev: tuple[float, int, Any] | None = None
        self.picks: list[tuple[float, int, Any]] = []  # (timestamp, seq, converted)

    def done(self) -> bool:
        return self._target(self._k) >= self._limit

    def feed(self, ts: float, seq: int, payload: Any) -> None:
        while not self.done():
            t = self._target(self._k)
            if ts < t:
                break
            prev = self.prev
            if prev is not None and t - prev[0] <= ts - t + _TIE_EPS:
                self._pick(prev)
            else:
                self._pick((ts, seq, payload))
            self._k += 1
        self.prev = (ts, seq, payload)

    def finish(self, coverage_end: float) -> None:
        """Targets after the last frame but before ``coverage_end`` take the last frame."""
        while self.prev is not None:
            t = self._target(self._k)
            if t >= min(self._limit, coverage_end):
                break
            self._pick(self.prev)
            self._k += 1

    def _pick(self, item: tuple[float, int, Any]) -> None:
        if self.picks and self.picks[-1][1] == item[1]:
            return
        self.picks.append((item[0], item[1], self._convert(item[2])))


def grid_selector(plan: SamplingPlan, convert=lambda x: x) -> FrameSelector:
    return FrameSelector(plan.grid, plan.end, convert)


def middle_selector(plan: SamplingPlan, clip_end: float, convert=lambda x: x) -> FrameSelector:
    mid = plan.start + (clip_end - plan.start) / 2
    return FrameSelector(lambda k: mid if k == 0 else math.inf, math.inf, convert)


def thin_indices(n: int, max_frames: int | None) -> list[int]:
    """Indices of ``max_frames`` evenly spaced items out of ``n`` (all when fewer)."""
    if max_frames is None or n <= max_frames:
        return list(range(n))
    return [int(i) for i in np.linspace(0, n - 1, max_frames).round().astype(int)]


@dataclass
class BackendResult:
    frames: list[np.ndarray]
    timestamps: list[float]
    info: VideoInfo
    partial: bool
    warnings: list[str]
    decoded: int | None = None  # pictures the decoder produced (None: not known)
