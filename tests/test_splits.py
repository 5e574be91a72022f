"""Splits never share a video, and a source with only some splits' files still prepares.

Overlap is checked on the real annotation files in tests/data/annotations; files over
4 MiB upstream (MSRVTT_data.json, ActivityNet train.json, DiDeMo train_data.json) are
written in their real schema over the real id lists, one caption per listed video.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from diffret_cli.cli.main import cli, main
from diffret_cli.data.splits import check_splits, shared_videos
from diffret_cli.errors import AnnotationError
from diffret_plugins.datasets.activitynet import ActivityNet, is_held_out
from diffret_plugins.datasets.didemo import DiDeMo
from diffret_plugins.datasets.lsmdc import LSMDC
from diffret_plugins.datasets.msrvtt import MSRVTT
from diffret_plugins.datasets.msvd import MSVD

ANN = Path(__file__).parent / "data" / "annotations"


def _copy(dataset: str, dest: Path, *names: str) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(ANN / dataset / name, dest / name)


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    """One source folder per dataset: the real files plus the written stand-ins."""
    base = tmp_path_factory.mktemp("sources")
    out = {}
    # MSRVTT: msrvtt_data.zip contents; every video's official split in the json
    d = out["msrvtt"] = base / "msrvtt"
    _copy("msrvtt", d, "MSRVTT_train.9k.csv", "MSRVTT_train.7k.csv", "MSRVTT_JSFUSION_test.csv")
    videos = [{"id": i, "video_id": f"video{i}", "category": 0, "url": "", "start time": 0.0, "end time": 10.0,
               "split": "train" if i < 6513 else "validate" if i < 7010 else "test"} for i in range(10000)]
    sentences = [{"sen_id": i, "video_id": f"video{i}", "caption": f"video {i}"} for i in range(10000)]
    (d / "MSRVTT_data.json").write_text(json.dumps({"info": {}, "videos": videos, "sentences": sentences}))
    # MSVD, LSMDC: all real (LSMDC's training and val files are licence-gated: test only)
    _copy("msvd", out.setdefault("msvd", base / "msvd"), "captions_msvd.json", "train_list.txt", "val_list.txt",
          "test_list.txt")
    _copy("lsmdc", out.setdefault("lsmdc", base / "lsmdc"), "LSMDC16_challenge_1000_publictect.csv")
    # ActivityNet: real id lists and val_1.json; train.json written over the real train ids
    d = out["activitynet"] = base / "activitynet"
    _copy("activitynet", d, "train_ids.json", "val_ids.json", "val_1.json")
    train_ids = json.loads((d / "train_ids.json").read_text())
    (d / "train.json").write_text(json.dumps({k: {"duration": 10.0, "timestamps": [[0, 10]],
                                                 "sentences": [f"event of {k}"]} for k in train_ids}))
    # DiDeMo: real lists and val/test json; train_data.json written over the real train list
    d = out["didemo"] = base / "didemo"
    _copy("didemo", d, "train_list.txt", "val_list.txt", "test_list.txt", "val_data.json", "test_data.json")
    names = (d / "train_list.txt").read_text().split()
    (d / "train_data.json").write_text(json.dumps([
        {"annotation_id": i, "description": f"moment {i}", "video": n, "times": [[0, 0]], "dl_link": "",
         "num_segments": 6} for i, n in enumerate(names)]))
    return out


PLUGINS = {"msrvtt": MSRVTT, "msvd": MSVD, "lsmdc": LSMDC, "activitynet": ActivityNet, "didemo": DiDeMo}
# videos per split at the defaults (LSMDC: the public test only)
SIZES = {"msrvtt": {"train": 8503, "val": 497, "test": 1000},
         "msvd": {"train": 1200, "val": 100, "test": 670},
         "lsmdc": {"test": 1000},
         # the written train.json covers all 10,024 listed ids (the real one 10,009: 9,500 train)
         "activitynet": {"train": 9515, "val": 509, "test": 4917},
         "didemo": {"train": 8392, "val": 1065, "test": 1004}}


def _ids(plugin, source: Path) -> dict[str, list[str]]:
    ready, _ = check_splits(plugin, source, plugin.splits)
    return {s: [v.video_id for v in plugin.load_split(source, s).videos] for s in ready}


@pytest.mark.parametrize("name", sorted(PLUGINS))
def test_default_splits_share_no_video(name, sources):
    ids = _ids(PLUGINS[name](), sources[name])
    assert {s: len(v) for s, v in ids.items()} == SIZES[name]
    assert all(len(set(v)) == len(v) for v in ids.values())
    shared = shared_videos(ids)
    assert all(n == 0 for per in shared.values() for n in per.values()), shared


def test_paper_splits_overlap_as_documented(sources):
    """The paper's settings, kept as an option, share exactly what they say they give up."""
    msrvtt = shared_videos(_ids(MSRVTT(paper_splits=True), sources["msrvtt"]))
    assert msrvtt == {"train": {"val": 497, "test": 0}, "val": {"train": 497, "test": 0},
                      "test": {"train": 0, "val": 0}}
    anet = shared_videos(_ids(ActivityNet(paper_splits=True), sources["activitynet"]))
    assert anet["val"] == {"train": 0, "test": 4917}
    # the held-out ActivityNet val is a fixed subset, the same on every machine
    train_ids = json.loads((ANN / "activitynet" / "train_ids.json").read_text())
    held = [k for k in train_ids if is_held_out(k)]
    assert len(held) == 509 and held[:2] == [h for h in train_ids if is_held_out(h)][:2]


def test_shared_videos_counts_each_pair():
    assert shared_videos({"a": ["x", "y", "z"], "b": ["y", "z", "w"], "c": []}) == {
        "a": {"b": 2, "c": 0}, "b": {"a": 2, "c": 0}, "c": {"a": 0, "b": 0}}


# ------------------------------------------------------------------ partial sources
def _prepare(args: list[str]):
    return CliRunner().invoke(cli, ["data", "prepare", *args, "--workers", "1", "--quiet"], catch_exceptions=False)


def test_only_the_public_test_files_prepare_test_and_list_the_rest(tmp_path):
    src = tmp_path / "lsmdc"
    _copy("lsmdc", src, "LSMDC16_challenge_1000_publictect.csv")
    res = _prepare(["lsmdc", "--source", str(src), "--data-root", str(tmp_path / "data")])
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "data" / "lsmdc" / "prepared.json").read_text())
    assert list(info["splits"]) == ["test"] and info["splits"]["test"]["videos"] == 1000
    out = " ".join(res.output.split())
    for split, missing in (("train", "LSMDC16_annos_training.csv"), ("val", "LSMDC16_annos_val.csv")):
        assert f"not prepared: split '{split}', missing {missing}" in out
        assert f"diffret data prepare lsmdc --source {src} --split {split}" in out
    assert "MPII" in out  # where to get them
    report = json.loads((tmp_path / "data" / "lsmdc" / "prepare_report.json").read_text())
    assert [a["split"] for a in report["absent"]] == ["train", "val"]


def test_didemo_test_only_for_out_of_domain_eval(tmp_path):
    src = tmp_path / "didemo"
    _copy("didemo", src, "test_data.json", "test_list.txt")
    res = _prepare(["didemo", "--source", str(src), "--data-root", str(tmp_path / "data")])
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "data" / "didemo" / "prepared.json").read_text())
    assert list(info["splits"]) == ["test"] and info["splits"]["test"]["videos"] == 1004
    assert "https://raw.githubusercontent.com/LisaAnne/LocalizingMoments" in res.output


def test_no_split_present_is_an_error_naming_each_split(tmp_path, capsys):
    src = tmp_path / "empty"
    src.mkdir()
    with pytest.raises(SystemExit) as exit_:
        main(["data", "prepare", "didemo", "--source", str(src), "--data-root", str(tmp_path / "data"),
              "--workers", "1", "--quiet"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "no requested split (train, val, test) can be prepared" in err
    assert "train_data.json not found" in err and "test_data.json not found" in err
    assert "--split" in err and "LocalizingMoments" in err
    assert not (tmp_path / "data" / "didemo").exists()  # nothing written
    with pytest.raises(AnnotationError, match="no requested split"):
        from diffret_cli.data.prepare import prepare
        prepare("didemo", data_root=tmp_path / "data", source=src, splits=["val"], progress=False)


def _msrvtt_small(src: Path) -> None:
    """msrvtt_data.zip layout; captions only for video0-9 (train) and video6513-6517 (val)."""
    _copy("msrvtt", src, "MSRVTT_train.9k.csv", "MSRVTT_JSFUSION_test.csv")
    keep = [*range(10), *range(6513, 6518)]
    videos = [{"id": i, "video_id": f"video{i}", "split": "validate" if i >= 6513 else "train"} for i in keep]
    sentences = [{"sen_id": i, "video_id": f"video{i}", "caption": f"clip {i}"} for i in keep]
    (src / "MSRVTT_data.json").write_text(json.dumps({"videos": videos, "sentences": sentences}))


def test_msrvtt_prepares_from_msrvtt_data_zip_and_info_reports_overlap(tmp_path):
    src = tmp_path / "msrvtt_data"
    _msrvtt_small(src)
    root = tmp_path / "data"
    res = _prepare(["msrvtt", "--source", str(src), "--data-root", str(root), "--split", "train",
                    "--split", "val"])
    assert res.exit_code == 0, res.output
    info = json.loads(CliRunner().invoke(cli, ["data", "info", "msrvtt", "--data-root", str(root), "--json"]).output)
    assert {s: v["videos"] for s, v in info["splits"].items()} == {"train": 10, "val": 5}
    assert info["splits"]["train"]["shared_videos"] == {"val": 0}
    assert info["splits"]["val"]["shared_videos"] == {"train": 0}
    # the paper's setting: the same files, val inside train, and info says so
    res = _prepare(["msrvtt", "--source", str(src), "--data-root", str(tmp_path / "paper"), "--split", "train",
                    "--split", "val", "--option", "paper_splits=true"])
    assert res.exit_code == 0, res.output
    assert "train shares videos with val (5)" in " ".join(res.output.split())
    res = CliRunner().invoke(cli, ["data", "info", "msrvtt", "--data-root", str(tmp_path / "paper"), "--json"])
    info = json.loads(res.output)
    assert info["splits"]["train"]["videos"] == 15 and info["splits"]["train"]["shared_videos"] == {"val": 5}
