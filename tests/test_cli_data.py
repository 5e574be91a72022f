"""``diffret data prepare|info|verify`` through Click, and where the data root is."""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner
from prepare_helpers import FakeVids, make_source

from diffret_cli.cli.cmd_data import parse_option
from diffret_cli.cli.main import cli, main
from diffret_cli.data.framecache import FrameCache
from diffret_cli.data.manifest import PreparedDataset
from diffret_cli.data.paths import DATA_ROOT_ENV, resolve_data_root
from diffret_cli.registry import registry

SMALL = ["--option", "num_train=2", "--option", "num_val=1", "--option", "num_test=1", "--workers", "1", "--quiet"]


def _run(args: list[str], **kw):
    result = CliRunner().invoke(cli, args, catch_exceptions=False, **kw)
    return result


def test_synthetic_prepare_info_verify_end_to_end(tmp_path):
    root = str(tmp_path / "data")
    res = _run(["data", "prepare", "synthetic", "--data-root", root, "--option", "num_train=20",
                "--option", "num_val=5", "--option", "num_test=10", "--workers", "2", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "synthetic: prepared" in res.output and "prepare_report.json" in res.output

    res = _run(["data", "info", "synthetic", "--data-root", root, "--json"])
    assert res.exit_code == 0
    info = json.loads(res.output)
    assert info["dataset"] == "synthetic" and info["fps"] == 1.0 and info["protocol"] == "multi"
    assert info["plugin_config"]["num_train"] == 20
    splits = info["splits"]
    assert list(splits) == ["train", "val", "test"]
    for name, n in (("train", 20), ("val", 5), ("test", 10)):
        s = splits[name]
        assert (s["videos"], s["ready"], s["ok"], s["partial"], s["skipped"]) == (n, n, n, 0, 0)
        assert s["captions"] == 4 * n and s["skipped_items"] == []
        # 2-3 events of 3 s each at 1 fps: 6 to 9 frames, one per second
        assert 6 <= s["duration_s"]["min"] <= s["duration_s"]["max"] <= 9
        assert s["frames"]["total"] == s["duration_s"]["total"]
        assert 3 <= s["caption_words"]["min"] <= s["caption_words"]["mean"] <= s["caption_words"]["max"] <= 32

    # frames are stored losslessly for generated data: exactly what the plugin draws
    ds = PreparedDataset.open(root, "synthetic")
    plugin = registry().create("datasets", "synthetic", num_train=20, num_val=5, num_test=10)
    entry = ds.split("test").videos[3]
    frames, ts = ds.frames(entry.video_id)
    np.testing.assert_array_equal(frames, plugin.generate(entry))
    np.testing.assert_array_equal(ts, np.arange(len(frames), dtype=float))

    res = _run(["data", "info", "synthetic", "--data-root", root])
    assert res.exit_code == 0 and "train" in res.output and "80" in res.output

    res = _run(["data", "verify", "synthetic", "--data-root", root, "--decode"])
    assert res.exit_code == 0 and "35 cache file(s)" in res.output

    # damage two files: one deleted, one with a flipped byte
    cache = FrameCache(Path(root) / "synthetic" / "frames")
    cache.remove("syn-train-00003")
    p = cache.path("syn-test-00001")
    raw = bytearray(p.read_bytes())
    raw[-40] ^= 0x55
    p.write_bytes(bytes(raw))
    res = CliRunner().invoke(cli, ["data", "verify", "synthetic", "--data-root", root])
    assert res.exit_code == 1
    assert "2 of 35" in res.output
    assert "syn-train-00003" in res.output and "syn-test-00001" in res.output
    assert "missing" in res.output and "checksum" in res.output


def test_prepare_cli_reports_skipped_videos(tmp_path):
    src = make_source(tmp_path)
    registry().register("datasets", "fakevids", FakeVids)
    try:
        res = _run(["data", "prepare", "fakevids", "--source", str(src), "--data-root", str(tmp_path / "d"),
                    "--short-side", "32", "--workers", "1", "--quiet"])
    finally:
        registry().unregister("datasets", "fakevids")
    assert res.exit_code == 0, res.output
    assert "4 video(s) skipped" in res.output
    for line in ("train/missing: missing-video", "train/empty: empty-file", "test/audio: no-video-stream"):
        assert line in res.output
    assert "1 annotation problem(s)" in res.output
    res = _run(["data", "info", "fakevids", "--data-root", str(tmp_path / "d"), "--json"])
    info = json.loads(res.output)
    assert info["splits"]["train"]["skipped_by_reason"] == {"decode-error": 1, "empty-file": 1,
                                                            "missing-video": 1}
    assert info["splits"]["train"]["partial"] == 1 and info["splits"]["test"]["ready"] == 2
    assert [i["video_id"] for i in info["splits"]["test"]["skipped_items"]] == ["audio"]


def test_data_root_precedence_flag_env_default(tmp_path, monkeypatch):
    flag, env, xdg = tmp_path / "flag", tmp_path / "env", tmp_path / "xdg"
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    assert resolve_data_root(None) == xdg / "diffret"
    monkeypatch.setenv(DATA_ROOT_ENV, str(env))
    assert resolve_data_root(None) == env
    assert resolve_data_root(flag) == flag
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    monkeypatch.delenv(DATA_ROOT_ENV)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_data_root(None) == tmp_path / "home" / ".cache" / "diffret"

    # the same rule through the CLI: flag beats env, env beats the cache dir
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))
    monkeypatch.setenv(DATA_ROOT_ENV, str(env))
    assert _run(["data", "prepare", "synthetic", "--data-root", str(flag), *SMALL]).exit_code == 0
    assert (flag / "synthetic" / "prepared.json").is_file() and not env.exists()
    assert _run(["data", "prepare", "synthetic", *SMALL]).exit_code == 0
    assert (env / "synthetic" / "prepared.json").is_file() and not xdg.exists()
    monkeypatch.delenv(DATA_ROOT_ENV)
    assert _run(["data", "prepare", "synthetic", *SMALL]).exit_code == 0
    assert (xdg / "diffret" / "synthetic" / "prepared.json").is_file()
    info = json.loads(_run(["data", "info", "synthetic", "--json"]).output)
    assert info["root"] == str(xdg / "diffret" / "synthetic")


def test_missing_dataset_names_path_and_command(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "info", "msvd", "--data-root", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "msvd" / "prepared.json") in err
    assert "run `diffret data prepare msvd`" in err


def test_option_parsing():
    assert parse_option("train_list=9k") == ("train_list", "9k")
    assert parse_option("num_train=20") == ("num_train", 20)
    assert parse_option("flag=true") == ("flag", True)
    assert parse_option("ratio=0.5") == ("ratio", 0.5)
    assert parse_option("name=a=b") == ("name", "a=b")
    with pytest.raises(click.BadParameter):
        parse_option("no_equals_sign")
    res = CliRunner().invoke(cli, ["data", "prepare", "synthetic", "--option", "oops"])
    assert res.exit_code == 2 and "key=value" in res.output


@pytest.mark.parametrize("args", [["data"], ["data", "prepare"], ["data", "info"], ["data", "verify"]])
def test_help_ends_with_runnable_examples(args):
    res = _run([*args, "--help"])
    assert res.exit_code == 0
    tail = res.output.rstrip().split("Examples:")[-1].strip().splitlines()
    assert len(tail) >= 3
    for line in tail:
        cmd = line.strip().split("#")[0].strip()
        assert cmd.startswith("diffret data ") or cmd.startswith(f"{DATA_ROOT_ENV}="), line
    assert res.output.rstrip().splitlines()[-1].strip() == tail[-1].strip()
