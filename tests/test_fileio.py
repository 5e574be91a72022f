"""diffret_cli.fileio: readers see the old content or the new one, never half, never nothing."""

from __future__ import annotations

import json
import sys
import threading

import pytest

from diffret_cli.fileio import (atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text,
                                is_temp_name, replace_dir)


def test_writers_replace_content_and_leave_no_temp_files(tmp_path):
    p = tmp_path / "sub" / "f.json"
    atomic_write_json(p, {"b": 1, "a": [1, 2]})
    assert p.read_text() == '{\n  "b": 1,\n  "a": [\n    1,\n    2\n  ]\n}\n'
    atomic_write_text(p, "héllo")
    assert p.read_bytes() == "héllo".encode("utf-8")
    atomic_write_bytes(p, b"\x00\x01")
    assert p.read_bytes() == b"\x00\x01"
    assert [q.name for q in p.parent.iterdir()] == ["f.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    p = tmp_path / "f.txt"
    p.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(p) as tmp:
            tmp.write_text("half")
            assert is_temp_name(tmp.name) and tmp.parent == p.parent
            raise RuntimeError("crash mid-write")
    assert p.read_text() == "old"
    assert [q.name for q in tmp_path.iterdir()] == ["f.txt"]


def _folder(path, text):
    path.mkdir(parents=True)
    (path / "a.txt").write_text(text)
    (path / "b.txt").write_text(text)
    return path


def test_replace_dir_into_a_new_and_an_existing_folder(tmp_path):
    dst = tmp_path / "last"
    replace_dir(_folder(tmp_path / ".tmp-1", "one"), dst)
    assert (dst / "a.txt").read_text() == "one"
    replace_dir(_folder(tmp_path / ".tmp-2", "two"), dst)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]  # old folder and temp gone
    assert [(dst / n).read_text() for n in ("a.txt", "b.txt")] == ["two", "two"]
    with pytest.raises(FileNotFoundError):
        replace_dir(tmp_path / ".tmp-missing", dst)
    assert (dst / "a.txt").read_text() == "two"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="one-step swap needs renameat2 (Linux)")
def test_replace_dir_never_leaves_an_instant_without_the_folder(tmp_path):
    """A reader polling the folder while it is replaced 300 times always finds a complete one."""
    dst = _folder(tmp_path / "last", "0")
    stop = threading.Event()
    seen: dict[str, int] = {"missing": 0, "reads": 0}

    def reader():
        while not stop.is_set():
            try:
                (dst / "a.txt").read_text()
            except FileNotFoundError:
                seen["missing"] += 1
                continue
            seen["reads"] += 1

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(1, 301):
            replace_dir(_folder(tmp_path / f".tmp-{i}", str(i)), dst)
    finally:
        stop.set()
        t.join()
    assert (dst / "a.txt").read_text() == "300"
    assert seen["reads"] > 0
    assert seen["missing"] == 0, seen
    assert json.dumps(sorted(p.name for p in tmp_path.iterdir())) == '["last"]'
