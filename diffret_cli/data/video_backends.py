"""The two decoding backends behind :func:`diffret_cli.data.video.decode_sampled`.

PyAV decodes sequentially, keeping only the frames the plan selects (and, for H.264/
HEVC, not decoding the non-reference frames it does not select, as
:func:`diffret_cli.data.packet_plan.packet_plan` plans);
decord reads its timestamp table and then only the chosen frames by index. Both end in
the same selection routine (:mod:`diffret_cli.data.video_frames`), so where both can
read a file they return the same frames, scaled in the decoder from YUV by FFmpeg.
"""

from __future__ import annotations

import functools
import heapq
import re
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from diffret_cli.data.packet_plan import PacketPlan, packet_plan
from diffret_cli.data.pyav_stream import StreamHeader, first_rotation, open_video_stream, stream_header
from diffret_cli.data.video_frames import (SCALER, BackendFailure, BackendResult, FrameSelector, SamplingPlan,
                                           VideoInfo, cw_rotation, display_size, grid_selector, middle_selector,
                                           output_size, resize_rgb)
from diffret_cli.errors import DecodeError


# PyAV may output frames whose pts are out of order (AVI with packed B-frames carries
# decode-order times); the frames themselves come out in display order. Timestamps are
# re-sorted over a window of this many frames (H.264 reorders at most 16).
_REORDER_WINDOW = 16


# Stop decoding after this many consecutive packets fail: the rest is not video data.
_MAX_CONSECUTIVE_ERRORS = 32


# Frames per decord get_batch call: bounds the frames held at once (8 x 1080p RGB =
# 50 MB when decord cannot scale them itself); decord's own buffers come on top.
_DECORD_CHUNK = 8


@functools.lru_cache(maxsize=1)
def decord_module() -> Any | None:
    """decord, or None where it cannot be imported (no aarch64 wheels)."""
    try:
        import decord  # noqa: PLC0415 - optional, imported on use
    except Exception:  # ImportError, or OSError from a broken shared library
        return None
    try:
        # decord's bundled FFmpeg prints "[h264 @ 0x...]" lines straight to stderr; every
        # failure it reports also comes back as an exception, recorded in the warnings.
        decord.logging.set_level(decord.logging.QUIET)
    except Exception:  # noqa: BLE001 - an older decord without the logging module
        pass
    return decord


def _shortfall(header: StreamHeader, coverage_end: float, wanted_end: float, decoded: int | None) -> str | None:
    """A warning when the stream ends well before the header (or clip end) says: by its
    duration, or by its declared frame count at the nominal rate."""
    ends = [e for e in (header.expected_end, header.declared_end) if e is not None]
    if not ends:
        return None
    end = max(ends)
    if coverage_end >= min(end, wanted_end) - header.expected_tol:
        return None
    got = f" ({decoded} frame(s) decoded)" if decoded is not None else ""
    if header.declared_end is not None and end == header.declared_end:
        said = (f"the header declares {header.frames} frames ({header.declared_end:.2f} s at "
                f"{header.nominal_fps:g} fps)")
    else:
        said = f"the header says the video runs to {end:.2f} s"
    return f"frames end at {coverage_end:.2f} s{got} but {said}: the file is probably truncated"


@dataclass
class _Pass:
    """Outcome of one sequential PyAV pass."""

    selector: FrameSelector
    header: StreamHeader
    geometry: dict[str, Any]  # rotation, display width/height, output size (first frame)
    count: int  # frames in the stream when read to the end, else those decoded before the stop
    partial: bool
    warnings: list[str]
    coverage_end: float | None  # end of the last frame; None when stopped at the clip end
    decoded: int = 0  # pictures the decoder produced (fewer than count when some were skipped)
    clean: bool = True  # no packet failed and the demuxer read to the end


def _pyav_pass(path: Path, plan: SamplingPlan, short_side: int | None,
               make_selector: Callable[[Callable], FrameSelector], threads: int = 0,
               skip_plan: PacketPlan | None = None) -> _Pass:
    """Decode ``path`` sequentially once, feeding frames to a selector.

    Packets are decoded one by one so that a damaged packet costs only the frames
    around it: decoding resumes at the next packet (FFmpeg recovers at the next
    keyframe) and the result is marked partial. With ``skip_plan``, only the packets it
    wants and those other frames refer to are decoded (skip_frame=NONREF).
    """
    container, stream = open_video_stream(path)
    try:
        header = stream_header(container, stream)
        stream.thread_type = "AUTO"  # frame + slice threads; output order is unchanged
        stream.codec_context.thread_count = threads  # 0: FFmpeg's choice (one per core)
        tb = float(stream.time_base)
        origin = stream.start_time
        geometry: dict[str, Any] = {}
        # one scaler for the whole pass: frame.reformat builds a new swscale context for
        # every frame object, which costs twice the scaling itself (1.8 against 0.5 ms a
        # frame at 640x360); the output is the same
        reformatter = VideoReformatter()

        def convert(frame) -> np.ndarray:
            # Scaled from YUV straight to the output size in one swscale call (the
            # colour conversion then runs on the small picture), then turned upright.
            rot = geometry["rotation"]
            w, h = geometry["out"]
            if rot in (90, 270):
                w, h = h, w  # the stored picture is the display one turned a quarter
            if (frame.width, frame.height) == (w, h):
                rgb = frame.to_ndarray(format="rgb24")
            else:
                rgb = reformatter.reformat(frame, width=w, height=h, format="rgb24",
                                           interpolation=SCALER).to_ndarray()
            if rot:
                rgb = np.ascontiguousarray(np.rot90(rgb, k=(4 - rot // 90) % 4))
            return rgb

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
                rot = cw_rotation(frame.rotation)
                w, h = display_size(frame.width, frame.height, rot)
                geometry.update(rotation=rot, width=w, height=h,
                                out=output_size(w, h, short_side))
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
        ctx, skipping = stream.codec_context, False
        while not st["stop"]:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except av.FFmpegError as exc:
                demux_error = exc
                break
            if skip_plan is not None:  # frame threads take the setting with each packet
                skip = packet.pts is not None and packet.pts not in skip_plan.wanted
                if skip != skipping:
                    ctx.skip_frame, skipping = ("NONREF" if skip else "DEFAULT"), skip
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
        count = st["seq"]
        if not st["stop"] and st["last_ts"] is not None:
            coverage_end = st["last_ts"] + st["last_dur"]
            if skip_plan is not None:  # read to the end: one frame per packet, skipped or not
                count = skip_plan.count
            selector.finish(coverage_end)
            short = _shortfall(header, coverage_end, plan.end, count if plan.start == 0 else None)
            if short:
                warnings.append(short)
        return _Pass(selector=selector, header=header, geometry=geometry, count=count,
                     partial=bool(warnings), warnings=warnings, coverage_end=coverage_end,
                     decoded=st["seq"], clean=first_error is None and demux_error is None)
    finally:
        container.close()


def _decode_pass(path: Path, plan: SamplingPlan, short_side: int | None,
                 make_selector: Callable[[Callable], FrameSelector], threads: int,
                 packets: PacketPlan | None) -> _Pass:
    """One sampling pass: non-reference frames skipped as ``packets`` plans, if the
    outcome is the one a full pass gives (same picks, nothing failed); otherwise, or
    without a plan, every frame is decoded."""
    if packets is not None:
        run = _pyav_pass(path, plan, short_side, make_selector, threads, packets)
        if run.clean and [p[0] for p in run.selector.picks] == packets.picks:
            return run
        full = _pyav_pass(path, plan, short_side, make_selector, threads)
        full.decoded += run.decoded  # the cost of both passes
        return full
    return _pyav_pass(path, plan, short_side, make_selector, threads)


#: Skip non-reference frames nobody picks (PyAV backend, H.264/HEVC). The frames
#: returned are the same either way; off only to compare against a full decode.
SKIP_NONREF = True


def decode_pyav(path: Path, plan: SamplingPlan, short_side: int | None, *, threads: int = 0,
                packets: PacketPlan | None = None) -> BackendResult:
    """Decode sequentially with PyAV. ``packets``: the :func:`packet_plan` of ``plan``
    when already made (it is made here otherwise)."""
    if SKIP_NONREF and packets is None:
        packets = packet_plan(path, plan)
    run = _decode_pass(path, plan, short_side, lambda conv: grid_selector(plan, conv), threads,
                       packets if SKIP_NONREF else None)
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
        first = run.decoded
        middle = lambda conv: middle_selector(plan, clip_end, conv)  # noqa: E731
        run = _decode_pass(path, plan, short_side, middle, threads,
                           packet_plan(path, plan, middle) if SKIP_NONREF else None)
        run.decoded += first
    geo, header = run.geometry, run.header
    whole = run.coverage_end is not None  # decoded to the end of the stream
    info = VideoInfo(path=str(path), backend="pyav", codec=header.codec, width=geo["width"],
                     height=geo["height"], rotation=geo["rotation"],
                     nominal_fps=header.nominal_fps,
                     duration=run.coverage_end if whole else (header.expected_end or 0.0),
                     num_frames=run.count if whole and plan.start == 0 else header.frames)
    picks = run.selector.picks
    return BackendResult([p[2] for p in picks], [p[0] for p in picks], info, run.partial,
                         run.warnings, decoded=run.decoded)


def decode_decord(path: Path, plan: SamplingPlan, short_side: int | None, *, salvage: bool,
                  threads: int = 0) -> BackendResult:
    """Pick frames from decord's timestamp table, then read only those by index.

    ``salvage`` (decord chosen explicitly) reads frames one by one after a failed batch
    and keeps those that decode; under ``auto`` a failure goes to PyAV instead, which
    resumes after damaged packets.

    decord scales unrotated video itself, from YUV, to the output size (its scale
    filter, bilinear). A rotated one is read at full size instead, so that the frame
    shape still shows whether decord turned it as PyAV says it should (a squeezed,
    unturned picture of the right size would go unnoticed), and resized afterwards.
    """
    decord = decord_module()
    header, rotation = _pyav_header_and_rotation(path)  # DecodeError here is final: PyAV sees the same
    w, h = display_size(header.width, header.height, rotation)
    out = output_size(w, h, short_side)
    scaled = rotation == 0 and out != (w, h)
    try:
        size = {"width": out[0], "height": out[1]} if scaled else {}
        vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=threads, **size)
        n = len(vr)
        ts = np.asarray(vr.get_frame_timestamp(np.arange(n)), dtype=np.float64) if n else None
        nominal = float(vr.get_avg_fps())
    except Exception as exc:  # DECORDError, RuntimeError, ...
        raise BackendFailure(f"decord could not open it: {_short(exc)}") from exc
    if not n:
        raise BackendFailure("decord found no frames")
    starts = ts[:, 0]
    if not np.all(np.isfinite(ts)) or starts.min() < -1e-3 or np.any(np.diff(starts) < 0):
        raise BackendFailure("decord returned unusable frame timestamps "
                              "(the container stores no presentation times)")
    coverage_end = float(ts[-1, 1])
    clip_end = min(plan.end, coverage_end)
    if clip_end <= plan.start:
        raise DecodeError(f"clip start {plan.start:.2f} s is past the end of {path} "
                          f"({clip_end:.2f} s)", hint="check the clip's start time")
    if clip_end - plan.start < 1.0 / plan.fps:
        selector = middle_selector(plan, clip_end)
    else:
        selector = grid_selector(plan)
    for i, t in enumerate(starts.tolist()):
        selector.feed(t, i, i)
        if selector.done() and t >= plan.end:
            break
    selector.finish(coverage_end)

    warnings: list[str] = []
    partial = False
    short = _shortfall(header, coverage_end, plan.end, n)
    if short:
        partial = True
        warnings.append(short)
    picks = selector.picks
    frames: list[np.ndarray] = []
    kept: list[float] = []

    def check(frame: np.ndarray) -> np.ndarray:
        if scaled:
            if frame.shape[:2] != (out[1], out[0]):
                raise BackendFailure(f"decord frame is {frame.shape[1]}x{frame.shape[0]}, "
                                     f"expected {out[0]}x{out[1]}")
            return frame
        if frame.shape[:2] != (h, w):
            raise BackendFailure(f"decord frame is {frame.shape[1]}x{frame.shape[0]}, "
                                  f"expected {w}x{h} after rotation {rotation}")
        return resize_rgb(frame, out)

    for c in range(0, len(picks), _DECORD_CHUNK):
        chunk = picks[c:c + _DECORD_CHUNK]
        try:
            batch = vr.get_batch([p[1] for p in chunk]).asnumpy()
        except Exception as exc:
            if not salvage:
                raise BackendFailure(f"decord failed reading frames: {_short(exc)}") from exc
            for t, i, _ in chunk:
                try:
                    frames.append(check(vr[i].asnumpy()))
                    kept.append(t)
                except BackendFailure:
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
    return BackendResult(frames, kept, info, partial, warnings)


def _short(exc: BaseException) -> str:
    """decord errors carry C++ log prefixes and backtraces; keep the message."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = next((ln for ln in reversed(lines) if not ln.startswith(("Stack", "[bt]"))),
                type(exc).__name__)
    text = re.sub(r"(\S*\[\d\d:\d\d:\d\d\] )?\S+\.(cc|h|cpp):\d+: ", "", text).strip()
    return text[:200]


def probe_pyav(path: Path) -> VideoInfo:
    container, stream = open_video_stream(path)
    try:
        header = stream_header(container, stream)
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
                        rotation = cw_rotation(frames[0].rotation)
                count += 1
                if packet.pts is not None:
                    if origin is None:
                        origin = packet.pts
                    stop = (packet.pts - origin + (packet.duration or 0)) * tb
                    end = stop if end is None else max(end, stop)
        except av.FFmpegError:
            pass  # a damaged tail: report what was readable
        rotation = rotation or 0
        w, h = display_size(header.width, header.height, rotation)
        return VideoInfo(path=str(path), backend="pyav", codec=header.codec, width=w, height=h,
                         rotation=rotation, nominal_fps=header.nominal_fps,
                         duration=float(end if end is not None else (header.expected_end or 0.0)),
                         num_frames=count or header.frames)
    finally:
        container.close()


def _pyav_header_and_rotation(path: Path):
    """Stream header facts and display rotation, read with PyAV (decord reports neither)."""
    container, stream = open_video_stream(path)
    try:
        return stream_header(container, stream), first_rotation(container, stream)
    finally:
        container.close()


def probe_decord(path: Path) -> VideoInfo:
    decord = decord_module()
    header, rotation = _pyav_header_and_rotation(path)
    try:
        vr = decord.VideoReader(str(path), ctx=decord.cpu(0))
        n = len(vr)
        end = float(vr.get_frame_timestamp([n - 1])[0, 1]) if n else 0.0
        fps = float(vr.get_avg_fps())
    except Exception as exc:
        raise DecodeError(f"decord cannot read {path}: {_short(exc)}",
                          hint="use backend='pyav' or 'auto'") from exc
    w, h = display_size(header.width, header.height, rotation)
    return VideoInfo(path=str(path), backend="decord", codec=header.codec, width=w, height=h,
                     rotation=rotation, nominal_fps=fps or header.nominal_fps,
                     duration=end, num_frames=n)
