"""``prepare``: bad videos recorded not fatal, resumable, idempotent, parse-before-work."""

from __future__ import annotations

import json

import numpy as np
import pytest
from prepare_helpers import FakeVids, make_source, make_video

from diffret_cli.data.framecache import FrameCache
from diffret_cli.data.manifest import PreparedDataset
from diffret_cli.data.prepare import prepare
from diffret_cli.errors import AnnotationError, ConfigError
from diffret_cli.registry import registry


@pytest.fixture
def fakevids():
    registry().register("datasets", "fakevids", FakeVids)
    yield "fakevids"
    registry().unregister("datasets", "fakevids")


def _manifests(root, name="fakevids"):
    ds = PreparedDataset.open(root, name)
    return {s: ds.split(s).rows() for s in ds.splits}


def test_bad_videos_are_recorded_and_never_stop_the_run(tmp_path, fakevids):
    src = make_source(tmp_path)
    root = tmp_path / "root"
    report = prepare(fakevids, data_root=root, source=src, short_side=32, workers=1, progress=False)

    train, test = report.splits["train"], report.splits["test"]
    assert (train.videos, train.ok, train.partial) == (5, 1, 1)
    assert train.skipped == {"decode-error": 1, "empty-file": 1, "missing-video": 1}
    assert (test.videos, test.ok, test.partial, test.skipped) == (3, 2, 0, {"no-video-stream": 1})
    assert train.captions == 3 and test.captions == 2  # usable videos only
    assert train.problems == 1 and report.problems[0]["item"] == "nocap"
    assert report.videos == 7 and report.decoded == 3  # good1 decoded once for both splits

    ds = PreparedDataset.open(root, fakevids)
    assert ds.splits == ("train", "test") and ds.protocol == "single"
    rows = {r["video_id"]: r for r in ds.split("train").rows()}
    assert list(rows) == ["good1", "empty", "missing", "garbage", "broken"]  # annotation order
    assert rows["good1"]["status"] == "ok" and rows["good1"]["num_frames"] == 3
    assert rows["good1"]["duration"] == pytest.approx(3.0) and rows["good1"]["fps"] == 1.0
    assert rows["empty"]["reason"].startswith("empty-file")
    assert rows["missing"]["reason"].startswith("missing-video") and rows["missing"]["video_path"] == ""
    assert rows["garbage"]["reason"].startswith("decode-error: cannot open video")
    assert rows["broken"]["status"] == "partial" and "failed to decode" in rows["broken"]["reason"]
    assert [v.video_id for v in ds.split("train").videos] == ["good1", "broken"]
    assert dict(ds.split("test").skipped) == {"audio": ds.split("test").skipped[0][1]}
    assert ds.split("test").skipped[0][1].startswith("no-video-stream")

    frames, ts = ds.frames("good1")
    assert frames.shape == (3, 32, 43, 3) and frames.dtype == np.uint8
    np.testing.assert_allclose(ts, [0.5, 1.5, 2.5])
    # frame k is the one nearest t = k + 0.5 s at 10 fps: grey level 20 * (10k + 5) % 250
    np.testing.assert_allclose(frames.reshape(3, -1).mean(1), [100, 50, 0], atol=4)
    frames2, _ = ds.split("test").frames("good2")
    assert frames2.shape == (2, 32, 57, 3)

    saved = json.loads((root / fakevids / "prepare_report.json").read_text())
    skipped = {(s["split"], s["video_id"]): s for s in saved["skipped"]}
    assert set(skipped) == {("train", "empty"), ("train", "missing"), ("train", "garbage"), ("test", "audio")}
    assert skipped[("train", "garbage")]["file"].endswith("garbage.mp4")
    assert "Invalid data" in skipped[("train", "garbage")]["detail"]
    assert saved["problems"][0]["reason"] == "no-caption"
    info = json.loads((root / fakevids / "prepared.json").read_text())
    digest = info["splits"]["train"].pop("manifest_sha256")  # of the Arrow data: checked on open
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert info["splits"]["train"] == {"protocol": "single", "videos": 5, "ready": 2, "ok": 1, "partial": 1,
                                       "skipped": 3, "captions": 3, "frames": 3 + rows["broken"]["num_frames"],
                                       "shared_videos": {"test": 1}}  # good1 is listed by both splits
    assert info["splits"]["test"]["shared_videos"] == {"train": 1} and train.shared == {"test": 1}
    assert info["decoder"]["sampling_rule"] and info["fps"] == 1.0 and info["short_side"] == 32


def test_rerun_skips_cached_items_and_gives_the_same_manifests(tmp_path, fakevids):
    src = make_source(tmp_path)
    root = tmp_path / "root"
    prepare(fakevids, data_root=root, source=src, short_side=32, workers=1, progress=False)
    first = _manifests(root)
    cache = FrameCache(root / fakevids / "frames")
    before = {v: cache.path(v).read_bytes() for v in ("good1", "good2", "broken")}

    again = prepare(fakevids, data_root=root, source=src, short_side=32, workers=1, progress=False)
    assert (again.decoded, again.cached, again.frames_written) == (0, 3, 0)
    assert again.splits["train"].cached == 2 and again.splits["test"].cached == 2
    assert _manifests(root) == first
    assert {v: cache.path(v).read_bytes() for v in before} == before  # not rewritten

    # An interrupted run: one file gone, one half-written under its final name (as if a
    # copy was cut), and a stray temp file from a killed writer.
    cache.remove("good2")
    cache.path("broken").write_bytes(before["broken"][:200])
    stray = cache.path("good1").with_name(".tmp-999-dead-" + cache.path("good1").name)
    stray.write_bytes(b"half a file")
    third = prepare(fakevids, data_root=root, source=src, short_side=32, workers=1, progress=False)
    assert (third.decoded, third.cached) == (2, 1)
    assert not stray.exists()
    assert _manifests(root) == first
    assert all(cache.verify(v) is None for v in before)


def test_changed_settings_rebuild_the_cache(tmp_path, fakevids):
    src = make_source(tmp_path)
    root = tmp_path / "root"
    prepare(fakevids, data_root=root, source=src, short_side=32, workers=1, progress=False, splits=["test"])
    report = prepare(fakevids, data_root=root, source=src, short_side=24, fps=2.0, workers=1, progress=False,
                     splits=["test"])
    assert (report.decoded, report.cached) == (2, 0)
    frames, ts = PreparedDataset.open(root, fakevids).frames("good2")
    assert frames.shape == (4, 24, 43, 3)
    # window centres 0.25, 0.75, ... fall between two 10 fps frames: the earlier one wins
    np.testing.assert_allclose(ts, [0.2, 0.7, 1.2, 1.7], atol=1e-6)


def test_malformed_annotation_stops_before_any_work(tmp_path, fakevids):
    src = tmp_path / "src"
    make_video(src / "videos" / "a.mp4", seconds=1)
    # train is fine; test is malformed: prepare must fail before decoding train's videos
    (src / "annos.json").write_text(json.dumps({"train": {"a": ["cap"]}, "test": ["not", "a", "mapping"]}))
    root = tmp_path / "root"
    with pytest.raises(AnnotationError, match="key 'test' must map"):
        prepare(fakevids, data_root=root, source=src, workers=1, progress=False)
    assert not (root / fakevids).exists()


def test_split_selection_and_bad_arguments(tmp_path, fakevids):
    src = make_source(tmp_path)
    root = tmp_path / "root"
    with pytest.raises(ConfigError, match="no split 'val'; available: train, test"):
        prepare(fakevids, data_root=root, source=src, splits=["val"], progress=False)
    with pytest.raises(ConfigError, match="--fps"):
        prepare(fakevids, data_root=root, source=src, fps=0, progress=False)
    report = prepare(fakevids, data_root=root, source=src, splits=["test"], short_side=32, workers=1,
                     progress=False)
    assert list(report.splits) == ["test"] and report.videos == 3
    # adding a split later keeps the one prepared before (same settings)
    prepare(fakevids, data_root=root, source=src, splits=["train"], short_side=32, workers=1, progress=False)
    assert PreparedDataset.open(root, fakevids).splits == ("train", "test")


def test_parallel_workers_match_serial_and_survive_a_crashing_decoder(tmp_path):
    src = make_source(tmp_path)
    for i in range(3):
        make_video(src / "videos" / f"extra{i}.mp4", seconds=1 + i)
    annos = json.loads((src / "annos.json").read_text())
    annos["test"].update({f"extra{i}": [f"extra {i}"] for i in range(3)})
    (src / "annos.json").write_text(json.dumps(annos))

    registry().register("datasets", "fakevids", FakeVids)
    try:
        serial = prepare("fakevids", data_root=tmp_path / "serial", source=src, short_side=32, workers=1,
                         progress=False)
        parallel = prepare("fakevids", data_root=tmp_path / "parallel", source=src, short_side=32, workers=2,
                           progress=False)
        assert _manifests(tmp_path / "serial") == _manifests(tmp_path / "parallel")
        assert serial.decoded == parallel.decoded == 6
        # a worker killed mid-item (a segfaulting codec): that item alone is marked, the rest finish
        crashed = prepare("fakevids", data_root=tmp_path / "crash", source=src, short_side=32, workers=2,
                          progress=False, plugin_options={"crash_on": "extra1"})
    finally:
        registry().unregister("datasets", "fakevids")
    rows = {r["video_id"]: r for r in _manifests(tmp_path / "crash")["test"]}
    assert rows["extra1"]["status"] == "skipped" and rows["extra1"]["reason"].startswith("decoder-crash")
    assert [rows[f"extra{i}"]["num_frames"] for i in (0, 2)] == [1, 3]
    assert crashed.splits["test"].skipped == {"decoder-crash": 1, "no-video-stream": 1}
    assert crashed.splits["train"].ok == 1 and crashed.splits["train"].partial == 1


class _Unpicklable(FakeVids):
    """Holds a lock: cannot be sent to worker processes."""

    def __init__(self, **kw):
        super().__init__(**kw)
        import threading

        self._lock = threading.Lock()


def test_workers_that_cannot_start_fall_back_to_this_process(tmp_path):
    src = make_source(tmp_path)
    registry().register("datasets", "fakevids-unpicklable", _Unpicklable)
    try:
        report = prepare("fakevids-unpicklable", data_root=tmp_path / "r", source=src, short_side=32, workers=2,
                         progress=False)
    finally:
        registry().unregister("datasets", "fakevids-unpicklable")
    assert len(report.notes) == 1 and "decoded in this process instead" in report.notes[0]
    assert "pickle" in report.notes[0]
    # the same outcome as a normal run: no video blamed on a "crash"
    assert report.splits["train"].skipped == {"decode-error": 1, "empty-file": 1, "missing-video": 1}
    assert (report.splits["test"].ok, report.splits["train"].partial) == (2, 1)
