"""A benchmark in its official layout, end to end: the real MSRVTT 1k-A annotation file,
real videos of several containers under their MSRVTT names, a broken one and many
missing ones -> `diffret data prepare` -> `diffret eval` of a checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from diffret_cli import api
from diffret_cli.cli.main import cli
from train_helpers import tiny_model_config

DATA = Path(__file__).parent / "data"
# (MSRVTT id of the 1k-A test csv, real video it gets; None = a zero-byte file)
VIDEOS = [("video9770", "mmaction2__demo.mp4"), ("video9771", "ffmpegwasm__Big_Buck_Bunny_180_10s.webm"),
          ("video7020", "mmaction2__test.avi"), ("video9773", None)]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("msrvtt")
    src = root / "src"
    (src / "videos").mkdir(parents=True)
    shutil.copy(DATA / "annotations" / "msrvtt" / "MSRVTT_JSFUSION_test.csv", src)
    for vid, real in VIDEOS:
        if real is None:
            (src / "videos" / f"{vid}.mp4").write_bytes(b"")
        else:
            shutil.copy(DATA / "videos" / real, src / "videos" / (vid + Path(real).suffix))
    res = CliRunner().invoke(cli, ["data", "prepare", "msrvtt", "--source", str(src), "--data-root",
                                   str(root / "data"), "--split", "test", "--workers", "1", "--short-side", "32"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return root


def test_prepare_keeps_good_videos_and_records_the_rest(prepared):
    res = CliRunner().invoke(cli, ["data", "info", "msrvtt", "--data-root", str(prepared / "data"), "--json"])
    info = json.loads(res.stdout)
    test = info["splits"]["test"]
    assert test["ready"] == 3
    report = json.loads((prepared / "data" / "msrvtt" / "prepare_report.json").read_text())
    reasons = {}
    for item in report["skipped"]:
        reasons[item["reason"]] = reasons.get(item["reason"], 0) + 1
    assert reasons == {"missing-video": 996, "empty-file": 1}


def test_eval_of_a_checkpoint_on_the_partial_benchmark_says_what_is_missing(prepared, tmp_path):
    model = api.build(tiny_model_config(), load_pretrained=False)
    ckpt = api.save(model, tmp_path / "ckpt")
    res = CliRunner().invoke(cli, ["eval", str(ckpt), "--dataset", "msrvtt", "--data-root", str(prepared / "data"),
                                   "--json", "--steps", "3", "--topk", "2"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["protocol"] == "single" and out["num_videos"] == 3 and out["num_captions"] == 3
    assert out["num_videos_unavailable"] == 997
    for row in out["rows"].values():
        assert row["t2v"]["queries"] == 3 and row["v2t"]["queries"] == 3
    # the table view warns that the numbers are not the full benchmark's
    res = CliRunner().invoke(cli, ["eval", str(ckpt), "--dataset", "msrvtt", "--data-root", str(prepared / "data"),
                                   "--no-rerank"], catch_exceptions=False)
    assert "997 video(s) of this split were not prepared" in res.output
