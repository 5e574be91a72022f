"""The fast paths of ``data prepare`` give the frames the plain paths give.

- PyAV skips non-reference frames nobody picks (H.264/HEVC): the frames, timestamps,
  info, partial flag and warnings equal those of a full decode, on clean, damaged and
  clipped files, and fewer pictures are decoded;
- ``auto`` sends a long-GOP H.264 file to PyAV and leaves a short-GOP one to decord;
- frames are scaled inside the decoder: the same shapes, and close to PIL bicubic;
- ``prepare`` reports its workers' CPU time, and the benchmark runs end to end.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from prepare_helpers import FakeVids, make_many

from diffret_cli.data import video_backends
from diffret_cli.data.prepare import prepare
from diffret_cli.data.video import DECORD_GOP_SHARE, available_backends, decode_sampled
from diffret_cli.data.packet_plan import packet_plan
from diffret_cli.data.video_frames import SamplingPlan
from diffret_cli.registry import registry

VIDEOS = Path(__file__).parent / "data" / "videos"
DEMO = VIDEOS / "mmaction2__demo.mp4"  # H.264 with B-frames, 280 frames
CORRUPTED = VIDEOS / "decord__corrupted.mp4"  # H.264, one damaged packet at 3.1 s
WEBM_VP9 = VIDEOS / "ffmpegwasm__Big_Buck_Bunny_180_10s.webm"
AVI_BFRAMES = VIDEOS / "mmaction2__test.avi"  # MPEG-4 part 2, packed B-frames
HAVE_DECORD = "decord" in available_backends()


def _h264(path: Path, *, seconds: float, keyint: int, fps: int = 10, size=(64, 48)) -> Path:
    """A moving gradient in H.264 with B-frames and a keyframe every ``keyint`` frames."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"preset": "veryfast", "g": str(keyint), "keyint_min": str(keyint), "bf": "3"}
        for i in range(int(seconds * fps)):
            img = np.stack([128 + 100 * np.sin(x / 7 + i / 3), 128 + 100 * np.cos(y / 5 - i / 4),
                            np.full_like(x, (9 * i) % 250)], axis=-1).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def _both(monkeypatch, path: Path, **kw):
    """(with skipping, full decode) of the same call through the PyAV backend."""
    monkeypatch.setattr(video_backends, "SKIP_NONREF", True)
    fast = decode_sampled(path, backend="pyav", **kw)
    monkeypatch.setattr(video_backends, "SKIP_NONREF", False)
    full = decode_sampled(path, backend="pyav", **kw)
    return fast, full


def _assert_same(fast, full):
    assert np.array_equal(fast.frames, full.frames)
    assert np.array_equal(fast.timestamps, full.timestamps)
    assert fast.info == full.info
    assert (fast.partial, fast.warnings) == (full.partial, full.warnings)


@pytest.mark.parametrize("kw", [{"fps": 1.0}, {"fps": 3.0}, {"fps": 2.0, "start": 1.2, "end": 4.1},
                                {"fps": 1.0, "start": 0.3, "end": 0.6}], ids=str)
def test_skipping_gives_the_full_decode_on_h264(monkeypatch, kw):
    fast, full = _both(monkeypatch, DEMO, **kw)
    _assert_same(fast, full)
    assert fast.decoded_frames < full.decoded_frames
    if "start" not in kw:  # whole file: its unpicked B-frames (4 in 10) are not decoded
        assert fast.decoded_frames <= 0.7 * full.decoded_frames, (fast.decoded_frames, full.decoded_frames)


@pytest.mark.parametrize("kw", [{"fps": 1.0}, {"fps": 3.0, "start": 3.3, "end": 5.0}, {"fps": 0.2, "start": 6.0,
                                                                                        "end": 6.3}], ids=str)
def test_skipping_gives_the_full_decode_with_gops_and_clips(tmp_path, monkeypatch, kw):
    path = _h264(tmp_path / "g.mp4", seconds=8, keyint=12)
    fast, full = _both(monkeypatch, path, **kw)
    _assert_same(fast, full)
    assert fast.decoded_frames < full.decoded_frames


def test_a_damaged_h264_file_falls_back_to_the_full_decode(monkeypatch):
    fast, full = _both(monkeypatch, CORRUPTED, fps=1.0)
    _assert_same(fast, full)
    assert fast.partial and any("failed to decode" in w for w in fast.warnings)
    # the skipping pass saw the damage and was redone in full: both passes are counted
    assert fast.decoded_frames > full.decoded_frames


def test_packet_plan_only_for_codecs_that_skip_and_predicts_the_picks():
    plan = SamplingPlan(0.0, float("inf"), 1.0)
    assert packet_plan(WEBM_VP9, plan) is None  # VP9: not in the skipping codecs
    assert packet_plan(AVI_BFRAMES, plan) is None  # MPEG-4 part 2 in AVI: decode-order times
    packets = packet_plan(DEMO, plan)
    full = decode_sampled(DEMO, backend="pyav", fps=1.0)
    assert packets.count == full.info.num_frames == 280
    assert packets.picks == full.timestamps.tolist()
    assert packets.gop_skippable == 0.0  # one GOP: nothing to seek past


def test_auto_picks_pyav_for_long_gops_and_decord_for_short_ones(tmp_path):
    long_gop = _h264(tmp_path / "long.mp4", seconds=12, keyint=100)
    short_gop = _h264(tmp_path / "short.mp4", seconds=12, keyint=3)  # 0.3 s GOPs, sampled once a second
    plan = SamplingPlan(0.0, float("inf"), 1.0)
    assert packet_plan(long_gop, plan).gop_skippable < DECORD_GOP_SHARE <= packet_plan(short_gop, plan).gop_skippable
    a, b = decode_sampled(long_gop), decode_sampled(short_gop)
    assert a.backend == "pyav" and a.decoded_frames < 120
    assert b.backend == ("decord" if HAVE_DECORD else "pyav")
    assert len(a.frames) == len(b.frames) == 12


@pytest.mark.parametrize("backend", available_backends())
def test_frames_scaled_in_the_decoder_are_close_to_pil_bicubic(backend):
    scaled = decode_sampled(DEMO, fps=1.0, backend=backend)
    big = decode_sampled(DEMO, fps=1.0, backend=backend, short_side=None)
    assert scaled.frames.shape == (10, 224, 298, 3) and big.frames.shape == (10, 256, 340, 3)
    ref = np.stack([np.asarray(Image.fromarray(f).resize((298, 224), Image.Resampling.BICUBIC))
                    for f in big.frames])
    diff = np.abs(scaled.frames.astype(int) - ref).mean()
    # about JPEG quality 90's own error; a wrong frame or size would be far off
    assert diff < 2.5, diff
    assert np.abs(scaled.frames[1:].astype(int) - ref[:-1]).mean() > 4 * diff


def test_prepare_reports_worker_cpu_time(tmp_path):
    src = make_many(tmp_path, 3, seconds=2.0)
    registry().register("datasets", "fakevids", FakeVids)
    try:
        report = prepare("fakevids", data_root=tmp_path / "root", source=src, workers=2, progress=False)
        again = prepare("fakevids", data_root=tmp_path / "root", source=src, workers=2, progress=False)
    finally:
        registry().unregister("datasets", "fakevids")
    assert report.decoded == 3 and report.frames_written == 6
    assert 0 < report.cpu_seconds < report.seconds * 2 + 1  # two workers at most
    saved = json.loads((tmp_path / "root" / "fakevids" / "prepare_report.json").read_text())
    assert saved["cpu_seconds"] == pytest.approx(again.cpu_seconds)
    assert again.cached == 3 and again.cpu_seconds < report.cpu_seconds  # cached: checksums only


@pytest.mark.slow
def test_bench_prepare_runs_and_writes_json(tmp_path):
    sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
    import bench_prepare

    out = tmp_path / "bench.json"
    assert bench_prepare.main(["--videos", "2", "--seconds", "1", "--workers", "2", "--rounds", "1",
                               "--keep", str(tmp_path / "videos"), "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    rows = {r["method"]: r for r in res["rows"]}
    assert rows["diffret 3 fps"]["frames"] == 6 and rows["diffret 1 fps"]["frames"] == 2
    assert all(r["cpu_ms_per_frame"] > 0 and r["frames_per_s"] > 0 for r in rows.values())
    assert len(res["load_before"]) == 3
