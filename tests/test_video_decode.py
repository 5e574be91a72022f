"""Video decoding on real files: sampling by real timestamps, rotation, damaged inputs,
and agreement between the decord and PyAV backends.

The videos under tests/data/videos are byte-exact copies of public test files (see the
README there). Damaged variants (truncated, audio-only) are made in tmp_path.
"""

from __future__ import annotations

import json
import platform
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from diffret_cli.data import video
from diffret_cli.data.video import (
    DecodedVideo,
    available_backends,
    decode_sampled,
    decoder_settings,
    probe,
)
from diffret_cli.errors import ConfigError, DecodeError

VIDEOS = Path(__file__).parent / "data" / "videos"
CORRUPTED = VIDEOS / "decord__corrupted.mp4"
SHORT = VIDEOS / "decord__unordered.mov"
ROTATED = VIDEOS / "decord__video_90.mov"
WEBM_VP9 = VIDEOS / "ffmpegwasm__Big_Buck_Bunny_180_10s.webm"
HD = VIDEOS / "ffmpegwasm__video-1080p-60fps-2s.mp4"
INDEO = VIDEOS / "ffmpegwasm__video-1s.avi"
VFR = VIDEOS / "mediaelement__echo-hereweare.webm"
DEMO = VIDEOS / "mmaction2__demo.mp4"
AVI_BFRAMES = VIDEOS / "mmaction2__test.avi"

BACKENDS = available_backends()
HAVE_DECORD = "decord" in BACKENDS
X86 = platform.machine().lower() in {"x86_64", "amd64"}


def _cut(src: Path, dst: Path, fraction: float = 0.5) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


# --------------------------------------------------------------------------- backends


def test_backend_list_and_order():
    assert BACKENDS[-1] == "pyav"
    # decord ships x86_64 wheels and is a dependency there; elsewhere PyAV alone is expected
    if X86:
        assert BACKENDS == ["decord", "pyav"]
    else:
        assert BACKENDS in (["pyav"], ["decord", "pyav"])


def test_unknown_backend_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown video backend 'ffmpeg'"):
        decode_sampled(DEMO, backend="ffmpeg")


def test_without_decord_auto_uses_pyav_and_decord_request_says_how_to_fix(monkeypatch):
    monkeypatch.setattr(video, "decord_module", lambda: None)
    assert available_backends() == ["pyav"]
    out = decode_sampled(DEMO)
    assert out.backend == "pyav" and out.frames.shape == (10, 224, 298, 3)
    with pytest.raises(DecodeError, match="'decord' is not installed") as err:
        decode_sampled(DEMO, backend="decord")
    assert "backend='pyav'" in str(err.value)


def test_decoder_settings_records_versions_and_rule():
    s = decoder_settings()
    assert s["sampling_rule"] == video.SAMPLING_RULE
    assert s["versions"]["av"] == av.__version__
    if HAVE_DECORD:
        import decord

        assert s["versions"]["decord"] == decord.__version__
    else:
        assert s["versions"]["decord"] is None
    assert s["backend_order"] == BACKENDS
    json.dumps(s)  # recordable as is
    assert video.DECODER_SETTINGS() == s


# --------------------------------------------------------------------------- bad inputs


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "videos" / "video7020.mp4"
    with pytest.raises(DecodeError, match="not found") as err:
        decode_sampled(missing)
    assert str(missing) in str(err.value)
    with pytest.raises(DecodeError, match="not found"):
        probe(missing)


def test_zero_byte_file(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(DecodeError, match=r"empty \(0 bytes\)") as err:
        decode_sampled(empty)
    assert str(empty) in str(err.value) and err.value.hint


def test_directory_is_not_a_video(tmp_path):
    with pytest.raises(DecodeError, match="directory"):
        decode_sampled(tmp_path)


def test_mp4_cut_in_half_loses_its_index(tmp_path):
    # this MP4 keeps its index (moov) at the end: half a file cannot be opened at all
    cut = _cut(DEMO, tmp_path / "half.mp4")
    with pytest.raises(DecodeError, match="cannot open video") as err:
        decode_sampled(cut)
    assert str(cut) in str(err.value) and "truncated" in err.value.hint


def _faststart_copy(src: Path, dst: Path) -> Path:
    """Remux (no re-encoding) with the index at the front, as web uploads often are."""
    faststart = {"movflags": "+faststart"}
    with av.open(str(src)) as inp, av.open(str(dst), "w", options=faststart) as out:
        in_stream = inp.streams.video[0]
        out_stream = out.add_stream_from_template(in_stream)
        for packet in inp.demux(in_stream):
            if packet.dts is None:
                continue
            packet.stream = out_stream
            out.mux(packet)
    return dst


def test_truncated_faststart_mp4_keeps_decoded_frames(tmp_path):
    cut = _cut(_faststart_copy(DEMO, tmp_path / "fs.mp4"), tmp_path / "fs_half.mp4")
    out = decode_sampled(cut)
    assert out.partial is True
    assert out.backend == "pyav"  # decord cannot open it; PyAV reads what is there
    assert out.frames.shape == (5, 224, 298, 3)
    np.testing.assert_allclose(out.timestamps, [0.5, 1.5, 2.5, 3.5, 4.5], atol=1 / 28)
    assert any("truncated" in w for w in out.warnings)
    # H.264 whose packet index reads: auto decodes with PyAV directly, decord is not tried
    assert not any(w.startswith("decord:") for w in out.warnings)
    with pytest.raises(DecodeError, match=r"only 5 frame\(s\) sampled .* 8 needed") as err:
        decode_sampled(cut, min_frames=8)
    assert str(cut) in str(err.value)


@pytest.mark.parametrize("backend", BACKENDS)
def test_truncated_webm_is_partial(tmp_path, backend):
    # Matroska cut short ends without any decoder error: only the header duration tells
    cut = _cut(WEBM_VP9, tmp_path / "half.webm")
    out = decode_sampled(cut, backend=backend)
    assert out.partial is True and out.backend == backend
    assert out.frames.shape == (4, 224, 398, 3)
    np.testing.assert_allclose(out.timestamps, [0.5, 1.5, 2.5, 3.5], atol=0.034)
    assert any("10.00 s" in w and "truncated" in w for w in out.warnings)
    # the intact file is not partial
    assert decode_sampled(WEBM_VP9, backend=backend).partial is False


@pytest.mark.parametrize("backend", ["auto", "pyav"])
def test_truncated_avi_is_partial_by_its_declared_frame_count(tmp_path, backend):
    # An AVI cut short keeps its header (164 frames at 25 fps); FFmpeg's stream duration
    # is then computed from the packets left (0.88 s), so only the frame count tells.
    cut = tmp_path / "cut.avi"
    cut.write_bytes((VIDEOS / "mmaction2__test.avi").read_bytes()[:40000])
    out = decode_sampled(cut, backend=backend)
    assert out.partial is True and len(out.frames) == 1
    assert any("(10 frame(s) decoded) but the header declares 164 frames (6.56 s at 25 fps)" in w
               for w in out.warnings), out.warnings
    assert decode_sampled(VIDEOS / "mmaction2__test.avi", backend=backend).partial is False


def test_corrupted_mp4_keeps_what_decodes():
    out = decode_sampled(CORRUPTED)
    assert out.partial is True
    # PyAV resumes after the bad packet at 3.0 s, so all five windows are filled
    assert out.backend == "pyav"
    np.testing.assert_allclose(out.timestamps, [0.5, 1.5, 2.5, 3.5, 4.5], atol=1e-9)
    assert out.frames.shape == (5, 224, 398, 3)
    assert any("failed to decode" in w and "3.10 s" in w for w in out.warnings)
    with pytest.raises(DecodeError, match=r"only 5 frame\(s\).*6 needed"):
        decode_sampled(CORRUPTED, min_frames=6)


def test_corrupted_mp4_with_decord_keeps_frames_before_the_damage():
    if not HAVE_DECORD:
        assert not X86
        return
    out = decode_sampled(CORRUPTED, backend="decord")
    assert out.partial is True and out.backend == "decord"
    np.testing.assert_allclose(out.timestamps, [0.5, 1.5, 2.5], atol=1e-6)
    assert any("could not read 2 of 5" in w for w in out.warnings)
    # the frames it did read are PyAV's (each backend scales with its own FFmpeg build:
    # within 1/255 on average, where neighbouring samples differ by more than 12)
    ref = decode_sampled(CORRUPTED, backend="pyav")
    gap = np.abs(out.frames[:, None].astype(int) - ref.frames[None]).mean(axis=(2, 3, 4))
    assert gap.argmin(axis=1).tolist() == [0, 1, 2] and gap.min(axis=1).max() < 1.0


def _audio_only(path: Path, codec: str) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=16000)
        stream.layout = "mono"
        samples = np.sin(np.linspace(0, 440 * 2 * np.pi, 16000)).astype(np.float32)
        fmt = "fltp" if codec == "aac" else "s16"
        data = samples[None] if fmt == "fltp" else (samples * 3e4).astype(np.int16)[None]
        for i in range(0, 16000, 1024):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data[:, i:i + 1024]),
                                               format=fmt, layout="mono")
            frame.sample_rate = 16000
            frame.pts = i
            frame.time_base = Fraction(1, 16000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@pytest.mark.parametrize("name,codec", [("speech.m4a", "aac"), ("speech.wav", "pcm_s16le")])
def test_audio_only_file_has_no_video_stream(tmp_path, name, codec):
    path = _audio_only(tmp_path / name, codec)
    with pytest.raises(DecodeError, match="no video stream") as err:
        decode_sampled(path)
    assert str(path) in str(err.value) and "audio" in str(err.value)
    with pytest.raises(DecodeError, match="no video stream"):
        probe(path)


# --------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("backend", BACKENDS)
def test_video_shorter_than_a_window_gives_its_middle_frame(backend):
    # 4 frames at 32 fps (0.125 s): t_0 = 0.5 s lies past the end -> middle (0.0625 s)
    out = decode_sampled(SHORT, backend=backend)
    assert out.frames.shape == (1, 224, 224, 3)
    np.testing.assert_allclose(out.timestamps, [0.0625], atol=1e-6)
    assert out.partial is False and out.warnings == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_1080p_60fps(backend):
    out = decode_sampled(HD, backend=backend)
    assert out.frames.shape == (2, 224, 398, 3)
    assert out.frames.dtype == np.uint8
    np.testing.assert_allclose(out.timestamps, [0.5, 1.5], atol=1e-6)
    assert (out.info.width, out.info.height, out.info.nominal_fps) == (1920, 1080, 60.0)
    assert out.info.duration == pytest.approx(2.0, abs=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_indeo4_avi_decodes(backend):
    out = decode_sampled(INDEO, backend=backend)
    assert out.info.codec == "indeo4"
    assert out.frames.shape == (1, 224, 239, 3)  # 256x240 -> short side 224
    assert abs(out.timestamps[0] - 0.5) <= 1 / 35 / 2 + 1e-6
    assert out.frames.std() > 10  # a picture, not a blank buffer


@pytest.mark.parametrize("backend", BACKENDS)
def test_variable_frame_rate_uses_real_timestamps(backend):
    # nominal 30 fps but 836 frames over 44.57 s: index/fps would stop at 27.9 s
    out = decode_sampled(VFR, backend=backend)
    assert out.frames.shape == (45, 224, 398, 3)
    assert out.timestamps[0] == pytest.approx(0.5, abs=0.05)
    assert out.timestamps[-1] - out.timestamps[0] > 43.5
    targets = 0.5 + np.arange(45)
    assert np.abs(out.timestamps - targets).max() <= 0.05  # largest frame gap is 0.1 s
    assert out.info.duration == pytest.approx(44.566, abs=1e-3)
    assert out.info.num_frames == 836


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_frames_keeps_evenly_spaced_frames(backend):
    full = decode_sampled(DEMO, backend=backend)
    assert len(full.timestamps) == 10
    few = decode_sampled(DEMO, max_frames=4, backend=backend)
    keep = np.linspace(0, 9, 4).round().astype(int)  # [0, 3, 6, 9]
    assert np.array_equal(few.timestamps, full.timestamps[keep])
    assert np.array_equal(few.frames, full.frames[keep])


@pytest.mark.parametrize("backend", BACKENDS)
def test_clip_start_end(backend):
    out = decode_sampled(DEMO, start=2.0, end=5.0, backend=backend)
    np.testing.assert_allclose(out.timestamps, [2.5, 3.5, 4.5], atol=1 / 28 / 2)
    # a clip shorter than 1/fps: one frame, nearest its middle (2.3 s; frames every 1/28 s)
    one = decode_sampled(DEMO, start=2.0, end=2.6, backend=backend)
    np.testing.assert_allclose(one.timestamps, [64 / 28], atol=1e-6)
    with pytest.raises(DecodeError, match="past the end"):
        decode_sampled(DEMO, start=20.0, end=25.0, backend=backend)


def test_fps_and_short_side_none():
    out = decode_sampled(DEMO, fps=3.0, short_side=None, backend="pyav")
    assert out.frames.shape == (30, 256, 340, 3)
    diffs = np.diff(out.timestamps)
    assert np.all(diffs > 0) and abs(diffs.mean() - 1 / 3) < 0.01


def test_invalid_arguments():
    with pytest.raises(ValueError, match="fps"):
        decode_sampled(DEMO, fps=0)
    with pytest.raises(ValueError, match="end"):
        decode_sampled(DEMO, start=3, end=2)
    with pytest.raises(ValueError, match="min_frames"):
        decode_sampled(DEMO, min_frames=0)


def test_avi_with_out_of_order_pts_keeps_display_order():
    """PyAV returns these frames in display order but with decode-order pts
    (1, 2, 4, 3, 5, 7, 6, ...). Sorting the frames by pts would swap neighbours; the
    sampled frame at time t must be the decoder's frame number round(t / 0.04) - 1."""
    out = decode_sampled(AVI_BFRAMES, fps=5, short_side=None, backend="pyav")
    assert len(out.timestamps) == 33
    assert np.all(np.diff(out.timestamps) > 0)
    with av.open(str(AVI_BFRAMES)) as c:
        raw = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    raw_pts = [int(round(t / 0.04)) for t in out.timestamps]
    for frame, pts in zip(out.frames, raw_pts):
        assert np.array_equal(frame, raw[pts - 1])
    # the positions sampled include swapped ones (else this test would prove nothing)
    with av.open(str(AVI_BFRAMES)) as c:
        decode_order_pts = [f.pts for f in c.decode(video=0)]
    assert any(decode_order_pts[p - 1] != p for p in raw_pts)
    if HAVE_DECORD:  # decord's timestamps for this AVI are unusable: auto falls back
        auto = decode_sampled(AVI_BFRAMES)
        assert auto.backend == "pyav"
        assert any("timestamps" in w for w in auto.warnings)


def test_decode_is_deterministic():
    a = decode_sampled(VFR, fps=0.5)
    b = decode_sampled(VFR, fps=0.5)
    assert a.backend == b.backend
    assert np.array_equal(a.frames, b.frames)
    assert np.array_equal(a.timestamps, b.timestamps)


def test_result_type():
    out = decode_sampled(DEMO)
    assert isinstance(out, DecodedVideo)
    assert out.timestamps.dtype == np.float64 and out.frames.flags["C_CONTIGUOUS"]
    assert out.info.path == str(DEMO) and out.info.codec == "h264"


# --------------------------------------------------------------------------- rotation


@pytest.mark.parametrize("backend", BACKENDS)
def test_rotated_phone_video_is_portrait(backend):
    # stored 568x320 with a -90 display matrix: shown as 320 wide, 568 high
    out = decode_sampled(ROTATED, backend=backend)
    assert out.frames.shape == (1, 398, 224, 3)
    assert (out.info.width, out.info.height, out.info.rotation) == (320, 568, 90)


def test_rotated_video_same_pixels_from_both_backends():
    if not HAVE_DECORD:
        assert not X86
        return
    a = decode_sampled(ROTATED, backend="decord", short_side=None)
    b = decode_sampled(ROTATED, backend="pyav", short_side=None)
    assert a.frames.shape == b.frames.shape == (1, 568, 320, 3)
    assert np.abs(a.frames.astype(int) - b.frames).mean() < 1.0


def _marked_video(path: Path, ccw_degrees: int) -> Path:
    """64x32 picture, white top-left quadrant, stored with a display rotation."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        stream.set_display_rotation(ccw_degrees)
        img = np.zeros((32, 64, 3), np.uint8)
        img[:16, :32] = 255
        for i in range(10):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def _white_quadrant(frame: np.ndarray) -> str:
    h, w = frame.shape[:2]
    quads = {"top-left": frame[: h // 2, : w // 2], "top-right": frame[: h // 2, w // 2:],
             "bottom-left": frame[h // 2:, : w // 2], "bottom-right": frame[h // 2:, w // 2:]}
    return max(quads, key=lambda k: quads[k].mean())


@pytest.mark.parametrize("ccw,cw,shape,quadrant", [
    (90, 270, (64, 32), "bottom-left"),
    (-90, 90, (64, 32), "top-right"),
    (180, 180, (32, 64), "bottom-right"),
])
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_rotation_is_applied(tmp_path, backend, ccw, cw, shape, quadrant):
    path = _marked_video(tmp_path / f"rot{ccw}.mp4", ccw)
    out = decode_sampled(path, short_side=None, backend=backend)
    assert out.info.rotation == cw
    assert out.frames.shape[1:3] == shape
    assert _white_quadrant(out.frames[0]) == quadrant


# --------------------------------------------------------------------------- agreement


@pytest.mark.parametrize("path", [DEMO, VFR, HD, INDEO, ROTATED, SHORT, WEBM_VP9],
                         ids=lambda p: p.name)
def test_backends_agree(path):
    if not HAVE_DECORD:
        assert not X86
        return
    a = decode_sampled(path, backend="decord")
    b = decode_sampled(path, backend="pyav")
    assert a.frames.shape == b.frames.shape
    interval = 1.0 / b.info.nominal_fps
    assert np.abs(a.timestamps - b.timestamps).max() <= interval
    assert np.abs(a.frames.astype(int) - b.frames).mean() < 2.0
    assert (a.info.width, a.info.height, a.info.rotation) == (
        b.info.width, b.info.height, b.info.rotation)
    assert a.info.duration == pytest.approx(b.info.duration, abs=interval)


# --------------------------------------------------------------------------- probe


@pytest.mark.parametrize("backend", BACKENDS)
def test_probe(backend):
    info = probe(VFR, backend=backend)
    assert info.backend == backend and info.codec == "vp8"
    assert (info.width, info.height) == (480, 270)
    assert info.nominal_fps == 30.0
    assert info.duration == pytest.approx(44.566, abs=1e-3)  # not 836 / 30 = 27.9
    assert info.num_frames == 836
    rotated = probe(ROTATED, backend=backend)
    assert (rotated.width, rotated.height, rotated.rotation) == (320, 568, 90)
    assert probe(SHORT, backend=backend).duration == pytest.approx(0.125, abs=1e-6)
