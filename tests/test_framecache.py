"""The frame cache: round trip, safe file names, atomic writes, corruption detection."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

from diffret_cli.data import framecache as fc
from diffret_cli.data.framecache import FrameCache, cache_key
from diffret_cli.fileio import atomic_write_bytes


def _frames(t: int = 4, h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """Smooth images (JPEG-friendly) that differ per frame."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    out = np.empty((t, h, w, 3), np.uint8)
    for i in range(t):
        base = rng.uniform(30, 200, 3)
        for c in range(3):
            out[i, :, :, c] = np.clip(base[c] + 40 * np.sin(x / (7 + i) + c) + 30 * np.cos(y / 9), 0, 255)
    return out


def test_round_trip_jpeg(tmp_path):
    cache = FrameCache(tmp_path)
    frames = _frames()
    ts = np.array([0.0, 1.0, 2.0, 3.5])
    cache.write("video7", frames, ts, metadata={"fps": 1.0, "partial": False, "reason": ""})
    out, out_ts = cache.read("video7")
    assert out.shape == (4, 48, 64, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out_ts, ts)
    # JPEG quality 90 on smooth images: small mean error, frames stay distinguishable
    err = np.abs(out.astype(int) - frames.astype(int)).mean(axis=(1, 2, 3))
    assert (err < 3.0).all(), err
    assert np.abs(out[0].astype(int) - frames[1].astype(int)).mean() > 10
    info = cache.info("video7")
    assert (info.num_frames, info.height, info.width) == (4, 48, 64)
    assert info.get("fps") == 1.0 and info.get("partial") is False and info.get("missing", 7) == 7
    assert info.metadata["codec"] == "jpeg" and info.metadata["quality"] == "90"


def test_png_codec_is_lossless_and_indices_select_frames(tmp_path):
    cache = FrameCache(tmp_path, codec="png")
    frames = _frames(t=5, seed=3)
    cache.write("g", frames, np.arange(5) / 2.0)
    out, ts = cache.read("g", indices=[4, 0, -1])
    np.testing.assert_array_equal(out, frames[[4, 0, 4]])
    np.testing.assert_array_equal(ts, [2.0, 0.0, 2.0])
    np.testing.assert_array_equal(cache.read_timestamps("g"), np.arange(5) / 2.0)
    with pytest.raises(IndexError):
        cache.read("g", indices=[5])


def test_ids_map_to_safe_sharded_names(tmp_path):
    cache = FrameCache(tmp_path)
    ids = ["1011_The_Help/1011_The_Help_00.00.43.000-00.00.48.000",  # LSMDC: slash
           "10015567@N08_3655084291_d8b58466fa.mov",  # DiDeMo: '@' and '.'
           "v_--0edUL8zmA", "../../etc/passwd", "vidéo 1"]
    paths = [cache.path(v) for v in ids]
    assert len(set(paths)) == len(ids)
    for vid, p in zip(ids, paths):
        key = hashlib.sha1(vid.encode("utf-8")).hexdigest()
        assert cache_key(vid) == key
        assert p == tmp_path / key[:2] / f"{key}.safetensors"
        assert p.parent.parent == tmp_path  # never escapes the root
    frames = _frames(t=1)
    for vid in ids:
        cache.write(vid, frames, [0.0])
    assert all(cache.has(v) for v in ids)
    assert sorted(cache.info(v).video_id for v in ids) == sorted(ids)
    assert len(list(cache.iter_files())) == len(ids)


def test_crash_during_write_leaves_no_file(tmp_path, monkeypatch):
    cache = FrameCache(tmp_path)

    def boom(src, dst):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="simulated"):
        cache.write("v", _frames(t=2), [0.0, 1.0])
    monkeypatch.undo()
    assert not cache.has("v")
    assert list(tmp_path.rglob("*")) == [cache.path("v").parent]  # the shard dir only, no temp file


def test_stray_temp_file_is_ignored_and_write_replaces(tmp_path):
    cache = FrameCache(tmp_path)
    shard = cache.path("v").parent
    shard.mkdir(parents=True)
    # what a run killed mid-write leaves behind: a half temp file next to the final name
    (shard / f".tmp-123-abcd-{cache.path('v').name}").write_bytes(b"\x00" * 100)
    assert not cache.has("v")
    assert list(cache.iter_files()) == []
    cache.write("v", _frames(t=3), [0.0, 1.0, 2.0])
    assert cache.has("v") and cache.read("v")[0].shape[0] == 3


def test_atomic_write_bytes_replaces_whole_file(tmp_path):
    p = tmp_path / "a" / "f.bin"
    atomic_write_bytes(p, b"old contents")
    atomic_write_bytes(p, b"new")
    assert p.read_bytes() == b"new"
    assert [x.name for x in p.parent.iterdir()] == ["f.bin"]


def test_verify_finds_each_kind_of_damage(tmp_path):
    cache = FrameCache(tmp_path)
    for vid in ("a", "b", "c", "d"):
        cache.write(vid, _frames(t=3, seed=len(vid)), [0.0, 1.0, 2.0])
    assert cache.verify("a", expected_frames=3, decode=True) is None
    # wrong frame count in the manifest
    assert "3 frames, manifest says 4" in cache.verify("a", expected_frames=4)
    # truncated file: not even a valid header any more
    p = cache.path("b")
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    assert "unreadable" in cache.verify("b") and not cache.has("b")
    # one flipped byte inside a frame: structure intact, checksum catches it
    p = cache.path("c")
    raw = bytearray(p.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    p.write_bytes(bytes(raw))
    assert cache.has("c")
    assert "checksum mismatch" in cache.verify("c")
    # deleted
    cache.remove("d")
    assert "missing" in cache.verify("d")
    # a file renamed onto another id's path is caught
    os.replace(cache.path("a"), cache.path("d"))
    assert "holds video 'a'" in cache.verify("d")


def test_rejects_bad_input(tmp_path):
    cache = FrameCache(tmp_path)
    with pytest.raises(ValueError, match="timestamps"):
        cache.write("x", _frames(t=2), [0.0])
    with pytest.raises(ValueError, match="uint8"):
        fc.encode_frames(np.zeros((1, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="codec"):
        FrameCache(tmp_path, codec="webp")
