"""Video decoding: one interface over two backends, with time-based frame sampling.

Why two backends: decord reads chosen frames by index quickly (it seeks, so a sparse
sample of a long video with short GOPs decodes little), but it has no aarch64 wheels and
fails on some files (damaged streams, AVI files whose packets carry no presentation
time). PyAV wraps a current FFmpeg, is always installed and decodes nearly anything,
sequentially; for H.264/HEVC it skips the frames no one picks and no frame refers to
(about half), which costs less than decord's seeking unless whole GOPs hold no sampled
frame. ``backend="auto"`` therefore reads the packet index first (no decoding): H.264/
HEVC files go to PyAV unless decord can skip :data:`DECORD_GOP_SHARE` of the packets;
the rest try decord and, on *any* decord error, PyAV again; the fallback is recorded in
:attr:`DecodedVideo.warnings`.

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

import math
import os
from pathlib import Path
from typing import Any

import av
import numpy as np
import PIL

from diffret_cli.data import video_backends
from diffret_cli.data.packet_plan import packet_plan
from diffret_cli.data.video_backends import decode_decord, decode_pyav, decord_module, probe_decord, probe_pyav
from diffret_cli.data.video_frames import (SCALER, BackendFailure, BackendResult, DecodedVideo, SamplingPlan,
                                           VideoInfo, thin_indices)
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

_BACKENDS = ("decord", "pyav")

#: ``auto`` leaves an H.264/HEVC file to decord only when seeking from keyframe to
#: keyframe skips at least this share of its packets (whole GOPs without a sampled
#: frame); otherwise PyAV, skipping non-reference frames, decodes less. Measured on 60 s
#: 640x360 H.264 at 1 fps, one decoder thread: GOPs of 0.5 s (share 0.5) decord 480 ms,
#: PyAV 693; 0.67 s (1/3) 743 / 638; 1 s (0) 860 / 648; 8.3 s (0) 844 / 620.
DECORD_GOP_SHARE = 0.4


# --------------------------------------------------------------------------- backends


def available_backends() -> list[str]:
    """Backends usable here, in the order ``backend="auto"`` tries them."""
    return ["decord", "pyav"] if decord_module() is not None else ["pyav"]


def decoder_settings() -> dict[str, Any]:
    """Backend versions and decoding settings, for a prepared dataset to record.

    Two datasets prepared with different settings here can hold different pixels for
    the same video, so the prepare step stores this next to the frames.
    """
    decord = decord_module()
    ffmpeg = {k: ".".join(map(str, v)) for k, v in av.library_versions.items()}
    return {
        "sampling_rule": SAMPLING_RULE,
        "sampling": "frame with pts nearest each t_k = start + (k + 0.5) / fps, t_k < clip end; "
                    "clips shorter than 1/fps give their middle frame; repeats dropped; "
                    "max_frames keeps round(linspace(0, n - 1, max_frames))",
        "resize": f"FFmpeg swscale {SCALER.lower()}, in the decoder from YUV, short side to "
                  "short_side, aspect kept",
        "rotation": "display matrix applied (display orientation)",
        "colour": "FFmpeg swscale to rgb24",
        "backend_order": available_backends(),
        "backend_choice": f"auto: PyAV skipping unpicked non-reference frames for H.264/HEVC "
                          f"unless decord's keyframe seeking skips >= {DECORD_GOP_SHARE:g} of the "
                          "packets; otherwise backend_order, the next on any error",
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
    if backend == "decord" and decord_module() is None:
        raise DecodeError("video backend 'decord' is not installed here",
                          hint="pip install decord (x86_64 wheels only), or use "
                               "backend='pyav' or 'auto'")
    return [backend]


# --------------------------------------------------------------------------- sampling


# --------------------------------------------------------------------------- PyAV


# --------------------------------------------------------------------------- decord


# --------------------------------------------------------------------------- public API


def probe(path: str | os.PathLike, *, backend: str = "auto") -> VideoInfo:
    """Describe a video without decoding it (PyAV reads packets only; decord reads its
    frame index). ``duration`` comes from packet/frame timestamps, not the header.

    ``auto`` probes with PyAV: it is always installed and reads every container.
    """
    p = _check_file(path)
    _resolve_backends(backend)  # validates the name, and that decord is installed if asked
    return probe_decord(p) if backend == "decord" else probe_pyav(p)


def decode_sampled(path: str | os.PathLike, *, fps: float = 1.0, short_side: int | None = 224,
                   start: float | None = None, end: float | None = None,
                   max_frames: int | None = None, min_frames: int = 1,
                   backend: str = "auto", threads: int = 0) -> DecodedVideo:
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

    Frames are RGB uint8 in display orientation (rotation metadata applied), resized so
    the short side equals ``short_side`` (None keeps the decoded size) by FFmpeg's
    scaler inside the decoder, before the conversion to RGB.

    A stream that breaks part-way keeps the frames that decoded (``partial=True``, with
    a warning) if at least ``min_frames`` remain; otherwise, and for files that cannot be
    read at all, :class:`~diffret_cli.errors.DecodeError` names the file and the fix.
    ``backend``: "auto" (see the module docstring: PyAV for H.264/HEVC unless decord's
    seeking skips more, else decord, then PyAV on any decord error), "decord" or "pyav".
    ``threads``: decoder threads (0: FFmpeg's choice, one per core); ``data prepare``
    gives each of its worker processes an equal share of the cores.
    """
    if not (fps > 0 and math.isfinite(fps)):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    if short_side is not None and short_side < 1:
        raise ValueError(f"short_side must be >= 1 or None, got {short_side!r}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1 or None, got {max_frames!r}")
    if min_frames < 1:
        raise ValueError(f"min_frames must be >= 1, got {min_frames!r}")
    if threads < 0:
        raise ValueError(f"threads must be >= 0 (0: one per core), got {threads!r}")
    plan = SamplingPlan(start=max(0.0, float(start or 0.0)),
                 end=math.inf if end is None else float(end), fps=float(fps))
    if plan.end <= plan.start:
        raise ValueError(f"end ({end}) must be after start ({start})")
    p = _check_file(path)
    order = _resolve_backends(backend)
    packets = None
    if backend == "auto" and video_backends.SKIP_NONREF:
        packets = packet_plan(p, plan)
        if packets is not None and (order[0] != "decord" or packets.gop_skippable < DECORD_GOP_SHARE):
            order = ["pyav"]

    notes: list[str] = []
    result: BackendResult | None = None
    for name in order:
        try:
            if name == "decord":
                result = decode_decord(p, plan, short_side, salvage=backend == "decord", threads=threads)
            else:
                result = decode_pyav(p, plan, short_side, threads=threads, packets=packets)
            break
        except BackendFailure as exc:
            if backend == "decord":
                raise DecodeError(f"decord cannot decode {p}: {exc}",
                                  hint="use backend='pyav' or 'auto'") from exc
            notes.append(f"decord: {exc}; decoded with PyAV instead")
    assert result is not None  # pyav is always last and raises DecodeError on failure

    keep = thin_indices(len(result.frames), max_frames)
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
                        warnings=warnings, decoded_frames=result.decoded)
