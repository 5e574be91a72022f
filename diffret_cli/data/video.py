"""Video decoding: one interface over two backends, with time-based frame sampling.

Why two backends: decord reads chosen frames by index quickly (it seeks, so a sparse
sample of a long video decodes little), but it has no aarch64 wheels and fails on some
files (damaged streams, AVI files whose packets carry no presentation time). PyAV wraps
a current FFmpeg, is always installed and decodes nearly anything, but only
sequentially. ``backend="auto"`` tries decord and, on *any* decord error, decodes the
file again with PyAV; the fallback is recorded in :attr:`DecodedVideo.warnings`.

Sampling rule (the same for both backends; :func:`decode_sampled` documents it in
full): frames are chosen by their real presentation timestamps, never by
``index / nominal_fps``. Variable-frame-rate files exist in the benchmarks (a WebM
with a nominal 30 fps holds 836 frames over 44.5 s); indexing by nominal rate would
sample only the first 28 s of it.

Timestamps are seconds from the stream's start time, which is also what decord
reports and what annotation start/end times count from.

Rotation: phone videos store a display matrix instead of rotated pixels. decord
applies it; PyAV returns the stored picture plus ``frame.rotation``. Frames returned
here are always in display orientation, whichever backend decoded them.
"""

from __future__ import annotations

import functools
import heapq
import math
import os
import re
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import av
import numpy as np
import PIL
from PIL import Image

from diffret_cli.errors import ConfigError, DecodeError

__all__ = [
    "VideoInfo",
    "DecodedVideo",
    "probe",
    "decode_sampled",
    "available_backends",
    "decoder_settings",
    "DECODER_SETTINGS",
    "SAMPLING_RULE",
]

#: Version tag of the sampling rule; a prepared dataset records it so that frames
#: sampled under a different rule are never mixed silently.
SAMPLING_RULE = "nearest-pts-to-window-centre/v1"

# PyAV may output frames whose pts are out of order (AVI with packed B-frames carries
# decode-order times); the frames themselves come out in display order. Timestamps are
# re-sorted over a window of this many frames (H.264 reorders at most 16).
_REORDER_WINDOW = 16
# Stop decoding after this many consecutive packets fail: the rest is not video data.
_MAX_CONSECUTIVE_ERRORS = 32
# Frames per decord get_batch call: bounds the full-resolution frames held at once
# (8 x 1080p RGB = 50 MB); decord's own decoder buffers come on top.
_DECORD_CHUNK = 8
_BACKENDS = ("decord", "pyav")
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
    """

    frames: np.ndarray
    timestamps: np.ndarray
    info: VideoInfo
    backend: str
    partial: bool = False
    warnings: list[str] = field(default_factory=list)


class _BackendFailure(Exception):
    """decord could not do the job; ``auto`` falls back to PyAV."""


# --------------------------------------------------------------------------- backends


@functools.lru_cache(maxsize=1)
def _decord_module() -> Any | None:
    """decord, or None where it cannot be imported (no aarch64 wheels)."""
    try:
        import decord  # noqa: PLC0415 - optional, imported on use
    except Exception:  # ImportError, or OSError from a broken shared library
        return None
    return decord


def available_backends() -> list[str]:
    """Backends usable here, in the order ``backend="auto"`` tries them."""
    return ["decord", "pyav"] if _decord_module() is not None else ["pyav"]


def decoder_settings() -> dict[str, Any]:
    """Backend versions and decoding settings, for a prepared dataset to record.

    Two datasets prepared with different settings here can hold different pixels for
    the same video, so the prepare step stores this next to the frames.
    """
    decord = _decord_module()
    ffmpeg = {k: ".".join(map(str, v)) for k, v in av.library_versions.items()}
    return {
        "sampling_rule": SAMPLING_RULE,
        "sampling": "frame with pts nearest each t_k = start + (k + 0.5) / fps, t_k < clip end; "
                    "clips shorter than 1/fps give their middle frame; repeats dropped; "
                    "max_frames keeps round(linspace(0, n - 1, max_frames))",
        "resize": "PIL bicubic, short side to short_side, aspect kept",
        "rotation": "display matrix applied (display orientation)",
        "colour": "FFmpeg swscale to rgb24",
        "backend_order": available_backends(),
        "versions": {
            "decord": getattr(decord, "__version__", None) if decord is not None else None,
            "av": av.__version__,
            "ffmpeg": ffmpeg,
            "pillow": PIL.__version__,
            "numpy": np.__version__,
        },
    }


#: Alias: the settings are computed on call so that versions are those of this process.
DECODER_SETTINGS = decoder_settings


# --------------------------------------------------------------------------- helpers


def _check_file(path: str | os.PathLike) -> Path:
    """Fail early, with the path in the message, on what no backend can read."""
    p = Path(path)
    if not p.exists():
        raise DecodeError(f"video file not found: {p}",
                          hint="check the path, or the video directory the dataset was "
                               "prepared from; `diffret data info NAME` lists missing videos")
    if p.is_dir():
        raise DecodeError(f"expected a video file, got a directory: {p}",
                          hint="pass the path of a video file inside it")
    if p.stat().st_size == 0:
        raise DecodeError(f"video file is empty (0 bytes): {p}",
                          hint="the download or extraction was interrupted; fetch the "
                               "file again")
    return p


def _resolve_backends(backend: str) -> list[str]:
    if backend == "auto":
        return available_backends()
    if backend not in _BACKENDS:
        raise ConfigError(f"unknown video backend {backend!r}",
                          hint=f"use one of: auto, {', '.join(_BACKENDS)}")
    if backend == "decord" and _decord_module() is None:
        raise DecodeError("video backend 'decord' is not installed here",
                          hint="pip install decord (x86_64 wheels only), or use "
                               "backend='pyav' or 'auto'")
    return [backend]


def _cw_rotation(ccw_degrees: float | int | None) -> int:
    """FFmpeg's counter-clockwise display angle -> clockwise quarter turns in degrees."""
    if not ccw_degrees:
        return 0
    return int((-round(float(ccw_degrees) / 90.0) * 90) % 360)


def _display_size(width: int, height: int, rotation: int) -> tuple[int, int]:
    return (height, width) if rotation in (90, 270) else (width, height)


def _output_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
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


def _resize(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bicubic resize to ``size`` = (w, h), as CLIP preprocessing does it (PIL)."""
    if (rgb.shape[1], rgb.shape[0]) == size:
        return np.ascontiguousarray(rgb)
    img = Image.fromarray(np.ascontiguousarray(rgb))
    return np.asarray(img.resize(size, Image.Resampling.BICUBIC))


def _parse_hms(text: str) -> float | None:
    """'00:00:10.333000000' (Matroska DURATION tag) -> seconds."""
    m = re.fullmatch(r"\s*(\d+):(\d{1,2}):(\d{1,2}(?:\.\d*)?)\s*", text or "")
    if not m:
        return None
    return int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])


@dataclass
class _Header:
    """What the container header says about the video stream (PyAV, no decoding)."""

    codec: str
    width: int
    height: int
    nominal_fps: float
    frames: int | None
    expected_end: float | None  # seconds, header's idea of the video's end
    expected_tol: float  # how far short of it a stream may end before it is "partial"


def _open_pyav(path: Path):
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


def _header(container, stream) -> _Header:
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
    return _Header(codec=cc.name, width=stream.width or cc.width,
                   height=stream.height or cc.height, nominal_fps=fps, frames=stream.frames or None, expected_end=end,
                   expected_tol=tol)


def _shortfall(header: _Header, coverage_end: float, wanted_end: float) -> str | None:
    """A warning when the stream ends well before the header (or clip end) says."""
    if header.expected_end is None:
        return None
    need = min(header.expected_end, wanted_end)
    if coverage_end < need - header.expected_tol:
        return (f"frames end at {coverage_end:.2f} s but the header says the video runs to "
                f"{header.expected_end:.2f} s: the file is probably truncated")
    return None


# --------------------------------------------------------------------------- sampling


@dataclass(frozen=True)
class _Plan:
    start: float  # clip start (seconds)
    end: float  # clip end requested (inf = to the end of the video)
    fps: float

    def grid(self, k: int) -> float:
        # computed from k, not accumulated, so that both backends get identical floats
        return self.start + (k + 0.5) / self.fps


class _Selector:
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


def _grid_selector(plan: _Plan, convert=lambda x: x) -> _Selector:
    return _Selector(plan.grid, plan.end, convert)


def _middle_selector(plan: _Plan, clip_end: float, convert=lambda x: x) -> _Selector:
    mid = plan.start + (clip_end - plan.start) / 2
    return _Selector(lambda k: mid if k == 0 else math.inf, math.inf, convert)


def _thin(n: int, max_frames: int | None) -> list[int]:
    """Indices of ``max_frames`` evenly spaced items out of ``n`` (all when fewer)."""
    if max_frames is None or n <= max_frames:
        return list(range(n))
    return [int(i) for i in np.linspace(0, n - 1, max_frames).round().astype(int)]


@dataclass
class _Result:
    frames: list[np.ndarray]
    timestamps: list[float]
    info: VideoInfo
    partial: bool
    warnings: list[str]


# --------------------------------------------------------------------------- PyAV


def _pyav_first_rotation(container, stream) -> int:
    """Clockwise rotation from the first decodable frame (PyAV 18 exposes the display
    matrix on frames only). 0 when nothing decodes."""
    try:
        for packet in container.demux(stream):
            for frame in packet.decode():
                return _cw_rotation(frame.rotation)
    except av.FFmpegError:
        pass
    return 0


@dataclass
class _Pass:
    """Outcome of one sequential PyAV pass."""

    selector: _Selector
    header: _Header
    geometry: dict[str, Any]  # rotation, display width/height, output size (first frame)
    count: int  # frames decoded
    partial: bool
    warnings: list[str]
    coverage_end: float | None  # end of the last frame; None when stopped at the clip end


def _pyav_pass(path: Path, plan: _Plan, short_side: int | None,
               make_selector: Callable[[Callable], _Selector]) -> _Pass:
    """Decode ``path`` sequentially once, feeding frames to a selector.

    Packets are decoded one by one so that a damaged packet costs only the frames
    around it: decoding resumes at the next packet (FFmpeg recovers at the next
    keyframe) and the result is marked partial.
    """
    container, stream = _open_pyav(path)
    try:
        header = _header(container, stream)
        stream.thread_type = "AUTO"  # frame + slice threads; output order is unchanged
        tb = float(stream.time_base)
        origin = stream.start_time
        geometry: dict[str, Any] = {}

        def convert(frame) -> np.ndarray:
            rgb = frame.to_ndarray(format="rgb24")
            if geometry["rotation"]:
                rgb = np.rot90(rgb, k=(4 - geometry["rotation"] // 90) % 4)
            return _resize(rgb, geometry["out"])

        selector = make_selector(convert)
        if plan.start > 0:
            try:
                container.seek(int(plan.start / tb) + (origin or 0), stream=stream,
                               backward=True, any_frame=False)
            except av.FFmpegError:
                container.seek(0)  # not seekable: decode from the top

        # Frames come out of the decoder in display order, but their pts can be in
        # decode order (AVI with packed B-frames). Re-sorting the *frames* by pts would
        # swap neighbours; instead each frame takes the next smallest pts seen so far,
        # over a window of _REORDER_WINDOW frames. Correct pts pass through unchanged.
        heap: list[float] = []
        pending: deque = deque()
        default_dur = 1.0 / header.nominal_fps if header.nominal_fps else 0.04
        st = {"seq": 0, "last_raw": None, "stop": False, "last_ts": None, "last_dur": 0.0}

        def emit() -> None:
            ts = heapq.heappop(heap)
            seq, frame, dur = pending.popleft()
            selector.feed(ts, seq, frame)
            st["last_ts"], st["last_dur"] = ts, dur
            if selector.done() and ts >= plan.end:
                st["stop"] = True  # past the clip end with every target settled

        def take(frame) -> None:
            nonlocal origin
            if not geometry:
                rot = _cw_rotation(frame.rotation)
                w, h = _display_size(frame.width, frame.height, rot)
                geometry.update(rotation=rot, width=w, height=h,
                                out=_output_size(w, h, short_side))
            if frame.pts is None:
                raw = st["last_raw"] + default_dur if st["last_raw"] is not None else 0.0
            else:
                if origin is None:
                    origin = frame.pts
                raw = (frame.pts - origin) * tb
            st["last_raw"] = raw
            heapq.heappush(heap, raw)
            pending.append((st["seq"], frame, frame.duration * tb if frame.duration
                            else default_dur))
            st["seq"] += 1
            if len(pending) > _REORDER_WINDOW:
                emit()

        errors = consecutive = 0
        first_error: tuple[int | None, Exception] | None = None
        demux_error: Exception | None = None
        packets = container.demux(stream)
        while not st["stop"]:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except av.FFmpegError as exc:
                demux_error = exc
                break
            try:
                decoded = packet.decode()
            except av.FFmpegError as exc:
                errors += 1
                consecutive += 1
                first_error = first_error or (packet.pts, exc)
                if consecutive >= _MAX_CONSECUTIVE_ERRORS:
                    break
                continue
            if decoded:
                consecutive = 0
            for frame in decoded:
                take(frame)
        if demux_error is not None or consecutive >= _MAX_CONSECUTIVE_ERRORS:
            try:  # the demuxer gave up: flush the frames the decoder still holds
                for frame in stream.codec_context.decode(None):
                    take(frame)
            except av.FFmpegError:
                pass
        while pending and not st["stop"]:
            emit()

        warnings: list[str] = []
        if first_error is not None:
            pts, exc = first_error
            at = f" at {(pts - (origin or 0)) * tb:.2f} s" if pts is not None else ""
            warnings.append(f"{errors} packet(s) failed to decode (first{at}: "
                            f"{getattr(exc, 'strerror', None) or exc}); frames near them "
                            "are missing")
        if demux_error is not None:
            warnings.append("reading stopped part-way: "
                            f"{getattr(demux_error, 'strerror', None) or demux_error}")
        coverage_end = None
        if not st["stop"] and st["last_ts"] is not None:
            coverage_end = st["last_ts"] + st["last_dur"]
            selector.finish(coverage_end)
            short = _shortfall(header, coverage_end, plan.end)
            if short:
                warnings.append(short)
        return _Pass(selector=selector, header=header, geometry=geometry, count=st["seq"],
                     partial=bool(warnings), warnings=warnings, coverage_end=coverage_end)
    finally:
        container.close()


def _decode_pyav(path: Path, plan: _Plan, short_side: int | None) -> _Result:
    run = _pyav_pass(path, plan, short_side, lambda conv: _grid_selector(plan, conv))
    if not run.geometry:
        raise DecodeError(f"no frame of {path} could be decoded"
                          + (f" ({'; '.join(run.warnings)})" if run.warnings else ""),
                          hint="the video stream is damaged or uses a codec this FFmpeg "
                               "cannot decode; download it again or re-encode it")
    clip_end = plan.end if run.coverage_end is None else min(plan.end, run.coverage_end)
    if clip_end <= plan.start:
        raise DecodeError(f"clip start {plan.start:.2f} s is past the end of {path} "
                          f"({clip_end:.2f} s)", hint="check the clip's start time")
    if clip_end - plan.start < 1.0 / plan.fps:
        # shorter than one sampling window: its middle frame, from a second (short) pass
        run = _pyav_pass(path, plan, short_side,
                         lambda conv: _middle_selector(plan, clip_end, conv))
    geo, header = run.geometry, run.header
    whole = run.coverage_end is not None  # decoded to the end of the stream
    info = VideoInfo(path=str(path), backend="pyav", codec=header.codec, width=geo["width"],
                     height=geo["height"], rotation=geo["rotation"],
                     nominal_fps=header.nominal_fps,
                     duration=run.coverage_end if whole else (header.expected_end or 0.0),
                     num_frames=run.count if whole and plan.start == 0 else header.frames)
    picks = run.selector.picks
    return _Result([p[2] for p in picks], [p[0] for p in picks], info, run.partial,
                   run.warnings)


# --------------------------------------------------------------------------- decord


def _decode_decord(path: Path, plan: _Plan, short_side: int | None, *, salvage: bool) -> _Result:
    """Pick frames from decord's timestamp table, then read only those by index.

    ``salvage`` (decord chosen explicitly) reads frames one by one after a failed batch
    and keeps those that decode; under ``auto`` a failure goes to PyAV instead, which
    resumes after damaged packets.
    """
    decord = _decord_module()
    header, rotation = _pyav_header_and_rotation(path)  # DecodeError here is final: PyAV sees the same
    try:
        vr = decord.VideoReader(str(path), ctx=decord.cpu(0))
        n = len(vr)
        ts = np.asarray(vr.get_frame_timestamp(np.arange(n)), dtype=np.float64) if n else None
        nominal = float(vr.get_avg_fps())
    except Exception as exc:  # DECORDError, RuntimeError, ...
        raise _BackendFailure(f"decord could not open it: {_short(exc)}") from exc
    if not n:
        raise _BackendFailure("decord found no frames")
    starts = ts[:, 0]
    if not np.all(np.isfinite(ts)) or starts.min() < -1e-3 or np.any(np.diff(starts) < 0):
        raise _BackendFailure("decord returned unusable frame timestamps "
                              "(the container stores no presentation times)")
    coverage_end = float(ts[-1, 1])
    clip_end = min(plan.end, coverage_end)
    if clip_end <= plan.start:
        raise DecodeError(f"clip start {plan.start:.2f} s is past the end of {path} "
                          f"({clip_end:.2f} s)", hint="check the clip's start time")
    if clip_end - plan.start < 1.0 / plan.fps:
        selector = _middle_selector(plan, clip_end)
    else:
        selector = _grid_selector(plan)
    for i, t in enumerate(starts.tolist()):
        selector.feed(t, i, i)
        if selector.done() and t >= plan.end:
            break
    selector.finish(coverage_end)

    w, h = _display_size(header.width, header.height, rotation)
    out = _output_size(w, h, short_side)
    warnings: list[str] = []
    partial = False
    short = _shortfall(header, coverage_end, plan.end)
    if short:
        partial = True
        warnings.append(short)
    picks = selector.picks
    frames: list[np.ndarray] = []
    kept: list[float] = []

    def check(frame: np.ndarray) -> np.ndarray:
        if frame.shape[:2] != (h, w):
            raise _BackendFailure(f"decord frame is {frame.shape[1]}x{frame.shape[0]}, "
                                  f"expected {w}x{h} after rotation {rotation}")
        return _resize(frame, out)

    for c in range(0, len(picks), _DECORD_CHUNK):
        chunk = picks[c:c + _DECORD_CHUNK]
        try:
            batch = vr.get_batch([p[1] for p in chunk]).asnumpy()
        except Exception as exc:
            if not salvage:
                raise _BackendFailure(f"decord failed reading frames: {_short(exc)}") from exc
            for t, i, _ in chunk:
                try:
                    frames.append(check(vr[i].asnumpy()))
                    kept.append(t)
                except _BackendFailure:
                    raise
                except Exception:
                    partial = True
            continue
        for (t, _, _), frame in zip(chunk, batch):
            frames.append(check(frame))
            kept.append(t)
    if len(kept) < len(picks):
        warnings.append(f"decord could not read {len(picks) - len(kept)} of {len(picks)} "
                        "sampled frames; the file is damaged")
    info = VideoInfo(path=str(path), backend="decord", codec=header.codec, width=w, height=h,
                     rotation=rotation, nominal_fps=nominal or header.nominal_fps,
                     duration=coverage_end, num_frames=n)
    return _Result(frames, kept, info, partial, warnings)


def _short(exc: BaseException) -> str:
    """decord errors carry C++ log prefixes and backtraces; keep the message."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = next((ln for ln in reversed(lines) if not ln.startswith(("Stack", "[bt]"))),
                type(exc).__name__)
    text = re.sub(r"(\S*\[\d\d:\d\d:\d\d\] )?\S+\.(cc|h|cpp):\d+: ", "", text).strip()
    return text[:200]


# --------------------------------------------------------------------------- public API


def probe(path: str | os.PathLike, *, backend: str = "auto") -> VideoInfo:
    """Describe a video without decoding it (PyAV reads packets only; decord reads its
    frame index). ``duration`` comes from packet/frame timestamps, not the header.

    ``auto`` probes with PyAV: it is always installed and reads every container.
    """
    p = _check_file(path)
    _resolve_backends(backend)  # validates the name, and that decord is installed if asked
    return _probe_decord(p) if backend == "decord" else _probe_pyav(p)


def _probe_pyav(path: Path) -> VideoInfo:
    container, stream = _open_pyav(path)
    try:
        header = _header(container, stream)
        tb = float(stream.time_base)
        origin = stream.start_time
        rotation = None
        count = 0
        end = None
        try:
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                if rotation is None:  # decode until the first frame shows the rotation
                    try:
                        frames = packet.decode()
                    except av.FFmpegError:
                        frames = []
                    if frames:
                        rotation = _cw_rotation(frames[0].rotation)
                count += 1
                if packet.pts is not None:
                    if origin is None:
                        origin = packet.pts
                    stop = (packet.pts - origin + (packet.duration or 0)) * tb
                    end = stop if end is None else max(end, stop)
        except av.FFmpegError:
            pass  # a damaged tail: report what was readable
        rotation = rotation or 0
        w, h = _display_size(header.width, header.height, rotation)
        return VideoInfo(path=str(path), backend="pyav", codec=header.codec, width=w, height=h,
                         rotation=rotation, nominal_fps=header.nominal_fps,
                         duration=float(end if end is not None else (header.expected_end or 0.0)),
                         num_frames=count or header.frames)
    finally:
        container.close()


def _pyav_header_and_rotation(path: Path):
    """Stream header facts and display rotation, read with PyAV (decord reports neither)."""
    container, stream = _open_pyav(path)
    try:
        return _header(container, stream), _pyav_first_rotation(container, stream)
    finally:
        container.close()


def _probe_decord(path: Path) -> VideoInfo:
    decord = _decord_module()
    header, rotation = _pyav_header_and_rotation(path)
    try:
        vr = decord.VideoReader(str(path), ctx=decord.cpu(0))
        n = len(vr)
        end = float(vr.get_frame_timestamp([n - 1])[0, 1]) if n else 0.0
        fps = float(vr.get_avg_fps())
    except Exception as exc:
        raise DecodeError(f"decord cannot read {path}: {_short(exc)}",
                          hint="use backend='pyav' or 'auto'") from exc
    w, h = _display_size(header.width, header.height, rotation)
    return VideoInfo(path=str(path), backend="decord", codec=header.codec, width=w, height=h,
                     rotation=rotation, nominal_fps=fps or header.nominal_fps,
                     duration=end, num_frames=n)


def decode_sampled(path: str | os.PathLike, *, fps: float = 1.0, short_side: int | None = 224,
                   start: float | None = None, end: float | None = None,
                   max_frames: int | None = None, min_frames: int = 1,
                   backend: str = "auto") -> DecodedVideo:
    """Decode ``path`` at ``fps`` frames per second of real time.

    Sampling rule: the clip [``start``, ``end``) (default: the whole video, whose end is
    the end of its last frame) is cut into windows of 1/fps seconds; for each window
    centre ``t_k = start + (k + 0.5) / fps`` with ``t_k`` before the clip end, the frame
    whose presentation timestamp is nearest ``t_k`` is taken (ties: the earlier frame).
    Nearest-pts, rather than ``index = t * nominal_fps``, keeps variable-frame-rate
    video sampled across its whole length. A frame nearest several centres is taken
    once (nothing is duplicated); a clip shorter than 1/fps gives exactly one frame, the
    one nearest its middle. When more than ``max_frames`` frames were sampled,
    ``round(linspace(0, n - 1, max_frames))`` of them are kept (DiffusionRet's rule).

    Frames are RGB uint8 in display orientation (rotation metadata applied), resized
    bicubically so the short side equals ``short_side`` (None keeps the decoded size).

    A stream that breaks part-way keeps the frames that decoded (``partial=True``, with
    a warning) if at least ``min_frames`` remain; otherwise, and for files that cannot be
    read at all, :class:`~diffret_cli.errors.DecodeError` names the file and the fix.
    ``backend``: "auto" (decord, then PyAV on any decord error), "decord" or "pyav".
    """
    if not (fps > 0 and math.isfinite(fps)):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    if short_side is not None and short_side < 1:
        raise ValueError(f"short_side must be >= 1 or None, got {short_side!r}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1 or None, got {max_frames!r}")
    if min_frames < 1:
        raise ValueError(f"min_frames must be >= 1, got {min_frames!r}")
    plan = _Plan(start=max(0.0, float(start or 0.0)),
                 end=math.inf if end is None else float(end), fps=float(fps))
    if plan.end <= plan.start:
        raise ValueError(f"end ({end}) must be after start ({start})")
    p = _check_file(path)
    order = _resolve_backends(backend)

    notes: list[str] = []
    result: _Result | None = None
    for name in order:
        try:
            if name == "decord":
                result = _decode_decord(p, plan, short_side, salvage=backend == "decord")
            else:
                result = _decode_pyav(p, plan, short_side)
            break
        except _BackendFailure as exc:
            if backend == "decord":
                raise DecodeError(f"decord cannot decode {p}: {exc}",
                                  hint="use backend='pyav' or 'auto'") from exc
            notes.append(f"decord: {exc}; decoded with PyAV instead")
    assert result is not None  # pyav is always last and raises DecodeError on failure

    keep = _thin(len(result.frames), max_frames)
    frames = [result.frames[i] for i in keep]
    stamps = [result.timestamps[i] for i in keep]
    warnings = notes + result.warnings
    if len(frames) < min_frames:
        why = "; ".join(result.warnings) or "the video is too short for this sampling"
        raise DecodeError(f"only {len(frames)} frame(s) sampled from {p}, {min_frames} needed "
                          f"({why})",
                          hint="re-download or re-encode the file if it is damaged, or lower "
                               "min_frames")
    return DecodedVideo(frames=np.stack(frames).astype(np.uint8, copy=False),
                        timestamps=np.asarray(stamps, dtype=np.float64), info=result.info,
                        backend=result.info.backend, partial=result.partial,
                        warnings=warnings)
