"""Faults a user meets around ``diffret data prepare``: the process killed part-way
(SIGKILL, SIGTERM), and damaged files (cache, manifests, prepared.json, annotation lists).

Kills: the real CLI runs in its own session (so every process it starts shares its
process group); it is killed at a chosen point, then every process of that group must be
gone (read from /proc), a rerun must complete, and ``data verify`` must pass.
Damaged files: each error names the file and the fix, and nothing else is touched.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from io import StringIO
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from prepare_helpers import FakeVids, make_many, make_source, make_video
from process_helpers import process_group, wait_for

from diffret_cli.cli.main import cli, main
from diffret_cli.data.framecache import FrameCache
from diffret_cli.data.manifest import PreparedDataError, PreparedDataset
from diffret_cli.data.paths import frames_dir
from diffret_cli.data.prepare import prepare
from diffret_cli.data.progress import PrepareProgress
from diffret_cli.errors import AnnotationError
from diffret_cli.registry import registry

HELPERS = Path(__file__).parent / "prepare_helpers.py"
linux_only = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")


@pytest.fixture
def fakevids():
    registry().register("datasets", "fakevids", FakeVids)
    yield "fakevids"
    registry().unregister("datasets", "fakevids")


# ----------------------------------------------------------------------------- kills
def _cli(src: Path, root: Path, *extra: str) -> list[str]:
    return [sys.executable, str(HELPERS), "data", "prepare", "fakevids", "--source", str(src), "--data-root",
            str(root), "--workers", "2", "--quiet", "--short-side", "16", "--option", "delay=0.3", *extra]


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> Path:
    return make_many(tmp_path_factory.mktemp("many"), 12)


@linux_only
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
@pytest.mark.parametrize("point", ["workers-started", "mid-decode"])
def test_killed_prepare_leaves_no_process_and_reruns_clean(tmp_path, many, sig, point):
    root = tmp_path / "data"
    frames = frames_dir(root / "fakevids")
    log = open(tmp_path / "killed.log", "w")
    proc = subprocess.Popen(_cli(many, root), start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    try:
        if point == "workers-started":  # prepare, resource tracker, fork server, 2 workers
            wait_for(lambda: len(process_group(proc.pid)) >= 5, 60, "the worker processes")
        else:
            wait_for(lambda: frames.is_dir() and len(list(frames.rglob("*.safetensors"))) >= 3, 60,
                      "three cache files")
        members = process_group(proc.pid)
        assert len(members) >= 4, members  # the pool is running: there is something to leak
        os.kill(proc.pid, sig)
        rc = proc.wait(timeout=30)
        assert rc == (-signal.SIGKILL if sig == signal.SIGKILL else 130), (rc, (tmp_path / "killed.log").read_text())
        # every process the killed run started is gone within a few watchdog periods
        wait_for(lambda: not (set(process_group(proc.pid)) & set(members)), 10,
                 f"processes of the killed run to exit (left: {process_group(proc.pid)})")
    finally:
        for pid in process_group(proc.pid):  # never leave a stray process behind, even on failure
            os.kill(pid, signal.SIGKILL)
        log.close()
    if sig == signal.SIGTERM:
        assert "aborted" in (tmp_path / "killed.log").read_text()  # handled like Ctrl-C
    rerun = subprocess.run(_cli(many, root), capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    verify = subprocess.run([sys.executable, str(HELPERS), "data", "verify", "fakevids", "--data-root", str(root)],
                            capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and "12 cache file(s)" in verify.stdout, verify.stdout + verify.stderr
    report = json.loads((root / "fakevids" / "prepare_report.json").read_text())
    assert report["splits"]["train"]["ready"] == 12 and report["videos"] == 12
    assert report["cached"] + report["decoded"] == 12 and report["cached"] >= (3 if point == "mid-decode" else 0)


# ------------------------------------------------------------------ damaged cache
def _prepared(tmp_path, name, **kw):
    src = make_source(tmp_path)
    root = tmp_path / "root"
    prepare(name, data_root=root, source=src, short_side=32, workers=1, progress=False, **kw)
    return src, root


def _stamps(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("damage", ["bit-flip", "truncated", "zero-byte"])
def test_damaged_cache_file_is_named_and_decoded_again(tmp_path, fakevids, damage, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # the table must not fold the path it names
    src, root = _prepared(tmp_path, fakevids)
    cache = FrameCache(frames_dir(root / fakevids))
    path = cache.path("good2")
    data = bytearray(path.read_bytes())
    if damage == "bit-flip":
        data[-100] ^= 0x01  # inside the JPEG bytes: the file still parses
    elif damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    untouched = {k: v for k, v in _stamps(cache.root).items() if not k.endswith(path.name)}

    with pytest.raises(SystemExit) as exit_:
        main(["data", "verify", fakevids, "--data-root", str(root)])
    assert exit_.value.code == 1
    out = capsys.readouterr().out
    assert str(path) in out and "good2" in out and "--repair" in out

    report = prepare(fakevids, data_root=root, source=src, short_side=32, workers=1, progress=False)
    assert [r["video_id"] for r in report.repaired] == ["good2"]  # reported, not silently replaced
    assert report.decoded == 1 and report.cached == 2  # only the damaged video decoded again
    assert {k: v for k, v in _stamps(cache.root).items() if k in untouched} == untouched
    assert cache.verify("good2") is None
    main(["data", "verify", fakevids, "--data-root", str(root)])  # exits 0: no SystemExit


def test_verify_repair_decodes_from_the_recorded_source(tmp_path, fakevids, capsys):
    src, root = _prepared(tmp_path, fakevids)
    cache = FrameCache(frames_dir(root / fakevids))
    before = cache.read("good1")[0]
    p = cache.path("good1")
    p.write_bytes(p.read_bytes()[:-7])
    untouched = {k: v for k, v in _stamps(cache.root).items() if not k.endswith(p.name)}
    main(["data", "verify", fakevids, "--data-root", str(root), "--repair"])  # no SystemExit: repaired
    assert "ok" in capsys.readouterr().out
    assert np.array_equal(cache.read("good1")[0], before)
    assert {k: v for k, v in _stamps(cache.root).items() if k in untouched} == untouched


# --------------------------------------------------------------- damaged manifests
@pytest.mark.parametrize("damage", ["arrow-truncated", "arrow-zero-byte", "arrow-bit-flip", "state-zero-byte"])
def test_damaged_manifest_is_named_with_the_fix_and_repaired(tmp_path, fakevids, damage, capsys):
    src, root = _prepared(tmp_path, fakevids)
    folder = root / fakevids / "manifests" / "train"
    arrow = next(folder.glob("*.arrow"))
    data = bytearray(arrow.read_bytes())
    if damage == "arrow-truncated":
        arrow.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "arrow-zero-byte":
        arrow.write_bytes(b"")
    elif damage == "arrow-bit-flip":
        i = bytes(data).index(b"a grey square fades in")  # a caption: still valid Arrow
        data[i] ^= 0x02
        arrow.write_bytes(bytes(data))
    else:
        (folder / "state.json").write_bytes(b"")
    frames_before = _stamps(frames_dir(root / fakevids))

    with pytest.raises(PreparedDataError) as err:
        PreparedDataset.open(root, fakevids).split("train")
    assert str(folder) in err.value.message and "--split train" in err.value.hint
    with pytest.raises(SystemExit) as exit_:
        main(["data", "info", fakevids, "--data-root", str(root)])
    assert exit_.value.code == 2
    printed = capsys.readouterr().err
    assert "Traceback" not in printed and str(folder) in " ".join(printed.split()) and "fix:" in printed
    # the test split and the frame cache are still good and untouched
    assert len(PreparedDataset.open(root, fakevids).split("test").videos) == 2
    assert _stamps(frames_dir(root / fakevids)) == frames_before

    main(["data", "verify", fakevids, "--data-root", str(root), "--repair"])
    rows = PreparedDataset.open(root, fakevids).split("train").rows()
    assert rows[0]["captions"] == ["a grey square fades in", "light rises"]
    assert _stamps(frames_dir(root / fakevids)) == frames_before  # manifests rebuilt from the cache


@pytest.mark.parametrize("damage", [b"", b'{"format": "diffret-prepared/1", "dataset": '])
def test_damaged_prepared_json_names_the_file(tmp_path, fakevids, damage, capsys):
    src, root = _prepared(tmp_path, fakevids)
    (root / fakevids / "prepared.json").write_bytes(damage)
    frames_before = _stamps(frames_dir(root / fakevids))
    with pytest.raises(SystemExit) as exit_:
        main(["data", "info", fakevids, "--data-root", str(root)])
    err = " ".join(capsys.readouterr().err.split())
    assert exit_.value.code == 2 and str(root / fakevids / "prepared.json") in err
    assert f"re-run `diffret data prepare {fakevids}`" in err
    assert _stamps(frames_dir(root / fakevids)) == frames_before
    prepare(fakevids, data_root=root, source=src, short_side=32, workers=1, progress=False)
    assert PreparedDataset.open(root, fakevids).split("train").status_counts()["ok"] == 1


# --------------------------------------------------------- damaged annotation files
def _msvd_source(tmp_path: Path, list_bytes: bytes) -> Path:
    ann = Path(__file__).parent / "data" / "annotations" / "msvd"
    src = tmp_path / "msvd"
    src.mkdir()
    (src / "captions_msvd.json").write_bytes((ann / "captions_msvd.json").read_bytes())
    (src / "test_list.txt").write_bytes(list_bytes)
    return src


@pytest.mark.parametrize("encoding", ["utf-16", "utf-8-sig", "utf-32"])
def test_list_file_with_a_byte_order_mark_is_read(tmp_path, encoding):
    from diffret_plugins.datasets.msvd import MSVD

    text = (Path(__file__).parent / "data" / "annotations" / "msvd" / "test_list.txt").read_text()
    src = _msvd_source(tmp_path, text.replace("\n", "\r\n").encode(encoding))
    ann = MSVD().load_split(src, "test")
    assert len(ann.videos) == 670 and ann.problems == []
    assert ann.videos[0].video_id == "eyhzdC936uk_15_27"


def test_utf16_without_bom_names_the_file_and_encoding(tmp_path, capsys):
    text = (Path(__file__).parent / "data" / "annotations" / "msvd" / "test_list.txt").read_text()
    src = _msvd_source(tmp_path, text.encode("utf-16-le"))
    from diffret_plugins.datasets.msvd import MSVD

    with pytest.raises(AnnotationError) as err:
        MSVD().load_split(src, "test")
    assert err.value.message.startswith(f"{src / 'test_list.txt'}: looks like UTF-16-LE without a byte-order mark")
    assert "UTF-8" in err.value.hint
    with pytest.raises(SystemExit) as exit_:
        main(["data", "prepare", "msvd", "--source", str(src), "--data-root", str(tmp_path / "data"),
              "--split", "test", "--workers", "1", "--quiet"])
    assert exit_.value.code == 2
    assert "test_list.txt: looks like UTF-16-LE" in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "data" / "msvd").exists()  # parsed before anything is written


# ------------------------------------------------------------------ damaged videos
def test_truncated_avi_is_partial_with_declared_and_decoded_counts(tmp_path, fakevids):
    src = tmp_path / "src"
    (src / "videos").mkdir(parents=True)
    real = (Path(__file__).parent / "data" / "videos" / "mmaction2__test.avi").read_bytes()
    (src / "videos" / "cut.mp4").write_bytes(real[:40000])  # the header still declares 164 frames
    make_video(src / "videos" / "whole.mp4", seconds=2)
    (src / "annos.json").write_text(json.dumps({"train": {"cut": ["a cut clip"], "whole": ["a clip"]}, "test": {}}))
    report = prepare(fakevids, data_root=tmp_path / "root", source=src, short_side=32, workers=1, progress=False)
    rows = {r["video_id"]: r for r in PreparedDataset.open(tmp_path / "root", fakevids).split("train").rows()}
    assert rows["whole"]["status"] == "ok"
    assert rows["cut"]["status"] == "partial"
    assert "the header declares 164 frames" in rows["cut"]["reason"]
    assert "(10 frame(s) decoded)" in rows["cut"]["reason"]
    assert report.splits["train"].ready == 2 and report.splits["train"].partial == 1


def test_ffmpeg_log_lines_do_not_reach_the_output(tmp_path):
    src = make_source(tmp_path)  # holds a damaged H.264 file that makes FFmpeg complain
    for workers in ("1", "2"):
        res = subprocess.run([sys.executable, str(HELPERS), "data", "prepare", "fakevids", "--source", str(src),
                              "--data-root", str(tmp_path / f"root{workers}"), "--workers", workers,
                              "--short-side", "16"], capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        both = res.stdout + res.stderr
        assert "train/garbage: decode-error" in both  # damaged videos are reported, in our words
        assert "@ 0x" not in both and "NAL unit" not in both, both


# -------------------------------------------------------------------- messages
def test_prepare_ready_equals_data_info_ready(tmp_path, fakevids):
    src, root = _prepared(tmp_path, fakevids)
    report = prepare(fakevids, data_root=root, source=src, short_side=32, workers=1, progress=False)
    res = CliRunner().invoke(cli, ["data", "info", fakevids, "--data-root", str(root), "--json"])
    info = json.loads(res.output)
    for split, summary in report.splits.items():
        assert summary.ready == info["splits"][split]["ready"]
    assert report.splits["train"].ready == 2 and report.splits["train"].partial == 1  # ok 1 + partial 1


def test_progress_in_a_log_is_whole_lines():
    out = StringIO()
    from rich.console import Console

    console = Console(file=out, width=60, force_terminal=False)
    with PrepareProgress("prepare msrvtt", 25, console=console) as bar:
        for _ in range(25):
            bar.advance(frames=12)
    lines = out.getvalue().splitlines()
    assert 3 <= len(lines) <= 13  # a start line, about one per tenth, and the end
    assert all(line.startswith("prepare msrvtt: ") and "videos/s" in line and "eta" in line for line in lines)
    assert lines[-1].startswith("prepare msrvtt: 25/25 videos (100%)") and lines[-1].endswith("done")


@pytest.mark.parametrize("width", [40, 60, 120])
def test_progress_bar_fits_a_narrow_terminal(width):
    from rich.console import Console

    console = Console(file=StringIO(), width=width, force_terminal=True, color_system=None)
    with PrepareProgress("prepare msrvtt", 9000, console=console) as bar:
        for _ in range(1234):
            bar.advance(frames=12)
        shown = bar.snapshot().rstrip("\n").split("\n")
    assert len(shown) == 1, shown  # one line: nothing wrapped
    assert "1234/9000" in shown[0] and len(shown[0].rstrip()) <= width, shown
    assert "…" not in shown[0] and "eta" in shown[0]  # no column cut short
    assert ("vid/s" in shown[0]) == (width >= 100)  # the rate is dropped when narrow, not cut
