"""Finding video files on disk for dataset entries, in the layouts the benchmarks use."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from diffret_cli.data import locate
from diffret_cli.data.locate import VIDEO_EXTENSIONS, clear_video_index, find_video_file
from diffret_cli.data.types import VideoEntry

# Real DiDeMo names (albanie/collaborative-experts misc/datasets/didemo/test_list.txt)
DIDEMO_BARE_DOT = "10052357@N03_7585070382_5762149bfc."
DIDEMO_MOV = "10015567@N08_3655084291_d8b8eab9e6.mov"
DIDEMO_3GP = "14386397@N07_4622585736_a1e3a73e78.3gp"
LSMDC_CLIP = "1004_Juno_00.00.31.904-00.00.35.339"


@pytest.fixture(autouse=True)
def _fresh_index():
    clear_video_index()
    yield
    clear_video_index()


def _touch(root: Path, *rels: str) -> None:
    for rel in rels:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\x00")


def _entry(video_id: str, filename: str | None = None) -> VideoEntry:
    return VideoEntry(video_id=video_id, captions=("a caption",), filename=filename)


def test_video_id_with_any_known_extension(tmp_path):
    _touch(tmp_path, "videos/video1.mp4", "videos/video2.webm", "videos/video3.MKV",
           "videos/video4.flv", "videos/notes.txt")
    dirs = ["videos", "."]
    assert find_video_file(tmp_path, dirs, _entry("video1")) == tmp_path / "videos/video1.mp4"
    assert find_video_file(tmp_path, dirs, _entry("video2")) == tmp_path / "videos/video2.webm"
    assert find_video_file(tmp_path, dirs, _entry("video3")) == tmp_path / "videos/video3.MKV"
    assert find_video_file(tmp_path, dirs, _entry("video4")) == tmp_path / "videos/video4.flv"
    assert find_video_file(tmp_path, dirs, _entry("notes")) is None
    assert find_video_file(tmp_path, dirs, _entry("video9")) is None


def test_extension_order_and_directory_order(tmp_path):
    _touch(tmp_path, "videos/a.webm", "videos/a.mp4", "b.mp4", "videos/b.avi")
    dirs = ["videos", "."]
    assert VIDEO_EXTENSIONS[:2] == (".mp4", ".webm")
    assert find_video_file(tmp_path, dirs, _entry("a")) == tmp_path / "videos/a.mp4"
    # the first directory wins over a preferred extension in a later one
    assert find_video_file(tmp_path, dirs, _entry("b")) == tmp_path / "videos/b.avi"
    assert find_video_file(tmp_path, [".", "videos"], _entry("b")) == tmp_path / "b.mp4"


def test_missing_directories_are_ignored(tmp_path):
    _touch(tmp_path, "YouTubeClips/-4wsuPCjDBc_5_15.avi")
    dirs = ["videos", "YouTubeClips", "."]
    found = find_video_file(tmp_path, dirs, _entry("-4wsuPCjDBc_5_15"))
    assert found == tmp_path / "YouTubeClips/-4wsuPCjDBc_5_15.avi"
    assert find_video_file(tmp_path / "nowhere", dirs, _entry("-4wsuPCjDBc_5_15")) is None


def test_lsmdc_nested_movie_folders(tmp_path):
    _touch(tmp_path, f"avi/1004_Juno/{LSMDC_CLIP}.avi")
    dirs = ["videos", "avi", "."]
    want = tmp_path / f"avi/1004_Juno/{LSMDC_CLIP}.avi"
    # by the exact relative name the LSMDC plugin gives
    named = _entry(LSMDC_CLIP, f"1004_Juno/{LSMDC_CLIP}.avi")
    assert find_video_file(tmp_path, dirs, named) == want
    # by id alone: one level of sub-directories is searched
    assert find_video_file(tmp_path, dirs, _entry(LSMDC_CLIP)) == want


def test_lsmdc_flat_copy_and_reencoded(tmp_path):
    _touch(tmp_path, f"videos/{LSMDC_CLIP}.mp4")
    found = find_video_file(tmp_path, ["videos", "avi", "."],
                            _entry(LSMDC_CLIP, f"1004_Juno/{LSMDC_CLIP}.avi"))
    assert found == tmp_path / f"videos/{LSMDC_CLIP}.mp4"


def test_didemo_original_names(tmp_path):
    _touch(tmp_path, f"videos/{DIDEMO_BARE_DOT}", f"videos/{DIDEMO_MOV}", f"videos/{DIDEMO_3GP}")
    dirs = ["videos", "."]
    for name in (DIDEMO_BARE_DOT, DIDEMO_MOV, DIDEMO_3GP):
        assert find_video_file(tmp_path, dirs, _entry(name, name)) == tmp_path / "videos" / name


def test_didemo_reencoded_copies(tmp_path):
    # "<name>.mp4" (name kept) and "<stem>.mp4" are both accepted
    _touch(tmp_path, f"videos/{DIDEMO_MOV}.mp4", "videos/10052357@N03_7585070382_5762149bfc.mp4")
    dirs = ["videos", "."]
    assert find_video_file(tmp_path, dirs, _entry(DIDEMO_MOV, DIDEMO_MOV)) == (
        tmp_path / f"videos/{DIDEMO_MOV}.mp4")
    assert find_video_file(tmp_path, dirs, _entry(DIDEMO_BARE_DOT, DIDEMO_BARE_DOT)) == (
        tmp_path / "videos/10052357@N03_7585070382_5762149bfc.mp4")
    assert find_video_file(tmp_path, dirs, _entry(DIDEMO_3GP, DIDEMO_3GP)) is None


def test_exact_name_beats_reencoded_copy(tmp_path):
    _touch(tmp_path, f"compressed/{DIDEMO_MOV}.mp4", f"originals/{DIDEMO_MOV}")
    found = find_video_file(tmp_path, ["compressed", "originals"], _entry(DIDEMO_MOV, DIDEMO_MOV))
    assert found == tmp_path / f"originals/{DIDEMO_MOV}"


def test_archive_debris_is_not_a_video(tmp_path):
    _touch(tmp_path, "videos/._video1.mp4", "__MACOSX/videos/._video1.mp4",
           "__MACOSX/video1.mp4")
    assert find_video_file(tmp_path, ["videos", "."], _entry("video1")) is None
    _touch(tmp_path, "videos/video1.mp4")
    clear_video_index()
    found = find_video_file(tmp_path, ["videos", "."], _entry("video1"))
    assert found == tmp_path / "videos/video1.mp4"


def test_directories_are_listed_once_for_many_lookups(tmp_path, monkeypatch):
    _touch(tmp_path, *[f"videos/video{i}.mp4" for i in range(0, 2000, 2)], "videos/sub/x.avi")
    calls: list[str] = []
    real = os.scandir

    def counting(path):
        calls.append(str(path))
        return real(path)

    monkeypatch.setattr(locate.os, "scandir", counting)
    dirs = ["videos", "."]
    found = [find_video_file(tmp_path, dirs, _entry(f"video{i}")) for i in range(10_000)]
    assert sum(f is not None for f in found) == 1000
    assert found[2] == tmp_path / "videos/video2.mp4" and found[3] is None
    # videos, videos/sub, ., ./videos: four listings in total, not 10,000
    assert len(calls) == 4
    # a new source is indexed on its own; clearing the cache re-lists
    find_video_file(tmp_path, ["videos"], _entry("video0"))
    assert len(calls) == 6
    _touch(tmp_path, "videos/video1.mp4")
    assert find_video_file(tmp_path, dirs, _entry("video1")) is None  # cached listing
    clear_video_index()
    assert find_video_file(tmp_path, dirs, _entry("video1")) == tmp_path / "videos/video1.mp4"


def test_plugin_default_locate_uses_it(tmp_path):
    from diffret_cli.data.plugin import DatasetPlugin

    class Layout:  # stands in for a plugin: locate_video only calls video_dirs()
        def video_dirs(self) -> list[str]:
            return ["videos", "."]

    _touch(tmp_path, "videos/video7.webm")
    found = DatasetPlugin.locate_video(Layout(), tmp_path, _entry("video7"))
    assert found == tmp_path / "videos/video7.webm"
