"""``diffret convert`` and diffret checkpoints: strict, complete, exact.

The official state dict of the end-to-end parity fixture (``full_eval_small``, weights
from the formula) stands in for a real ``best.pth``: converted with the CLI, it must
reproduce the official similarity matrix. Mismatched checkpoints fail with their keys.
"""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

import conftest_parity as fx
from conftest_parity import assert_close
from diffret_cli.checkpoint import CONFIG_FILE, MODEL_FILE, load_model, save_model
from diffret_cli.cli.main import cli, main
from diffret_cli.errors import CheckpointError
from diffret_plugins.denoisers.query_candidate import sinusoidal_table

FIXTURE = "full_eval_small"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with fx.torch_threads(1):
        yield


def official_best_pth() -> dict[str, torch.Tensor]:
    """The fixture's official state dict as best.pth holds it, sinusoidal buffers included."""
    sd = fx.weights(FIXTURE)
    shapes = fx.weight_spec(FIXTURE)["shapes"]
    pe_names = [n for n in shapes if n.endswith("sequence_pos_encoder.pe")]
    assert pe_names, "the fixture README lists the official pe buffers"
    rows, _, width = shapes[pe_names[0]]
    pe = sinusoidal_table(rows, width)[:, None, :]  # one storage, shared by all four keys
    return {**sd, **{n: pe for n in pe_names}}


def fixture_lengths() -> tuple[int, int]:
    mc = fx.readme(FIXTURE)["model_config"]
    return int(mc["L"]), int(mc["T"])


def similarity(model) -> torch.Tensor:
    ref, mc = fx.io(FIXTURE), fx.readme(FIXTURE)["model_config"]
    video = fx.expand_frames(FIXTURE, ref["video_lowres_int8"], int(mc["frame_upsample"]))
    with torch.no_grad():
        text = model.encode_text(ref["text_ids"], ref["text_mask"])
        vid = model.encode_video(video, ref["video_mask"])
        return model.similarity_matrix(text, vid)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """best.pth -> `diffret convert` -> checkpoint dir (once for the module)."""
    tmp = tmp_path_factory.mktemp("convert")
    best = tmp / "best.pth"
    torch.save(official_best_pth(), best)
    words, frames = fixture_lengths()
    out = tmp / "ckpt"
    res = CliRunner().invoke(cli, ["convert", str(best), str(out), "--max-words", str(words),
                                   "--max-frames", str(frames)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return {"dir": out, "best": best, "output": res.output, "tmp": tmp}


def run_main(argv: list[str], capsys) -> tuple[int, str]:
    """The real entry point (DiffretError -> message on stderr, exit code 2)."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code, capsys.readouterr().err


def test_convert_reproduces_the_official_similarity(converted):
    model = load_model(converted["dir"]).eval()
    assert_close(similarity(model), fx.io(FIXTURE)["sim_matrix"], "similarity after convert + load")
    words, frames = fixture_lengths()
    assert (model.config["max_words"], model.config["max_frames"]) == (words, frames)
    cfg = json.loads((converted["dir"] / CONFIG_FILE).read_text())
    assert cfg["extra"]["converted_from"] == str(converted["best"])


def test_convert_prints_a_summary(converted):
    out = converted["output"]
    n_loaded = len(fx.weights(FIXTURE))
    n_values = sum(t.numel() for t in fx.weights(FIXTURE).values())
    assert f"loaded {n_loaded} tensors ({n_values:,} values) strictly" in out
    assert "skipped 4" in out and "diffusion_model.sequence_pos_encoder.pe" in out
    clip = fx.readme(FIXTURE)["clip_config_inferred"]
    assert f"vision {clip['vision_layers']} layers x {clip['vision_width']} wide" in out
    assert f"temporal transformer: {fx.readme(FIXTURE)['model_config']['num_hidden_layers']} layers" in out
    assert str(converted["dir"] / MODEL_FILE) in out


def test_help_ends_with_examples():
    res = CliRunner().invoke(cli, ["convert", "--help"])
    assert res.exit_code == 0
    text = res.output.rstrip()
    assert "Examples:" in text and text.splitlines()[-1].strip().startswith("diffret convert")
    assert "--max-words" in text and "--max-frames" in text


@pytest.mark.parametrize("change", ["missing", "extra", "unknown"])
def test_mismatched_best_pth_fails_with_the_keys(change, tmp_path, capsys):
    sd = fx.weights(FIXTURE)
    if change == "missing":
        del sd["diffusion_model_v.proj.bias"]
        expect = "diffusion_model_v.proj.bias"  # named as in the user's file
    elif change == "extra":  # a known prefix, but no such parameter
        sd["diffusion_model.extra_head.weight"] = torch.zeros(2, 2)
        expect = "diffusion_model.extra_head.weight"
    else:  # a prefix no diffret module has
        sd["cross_transformer.layer0.weight"] = torch.zeros(2, 2)
        expect = "cross_transformer.layer0.weight"
    best = tmp_path / "best.pth"
    torch.save(sd, best)
    words, frames = fixture_lengths()
    code, err = run_main(["convert", str(best), str(tmp_path / "out"), "--max-words", str(words),
                          "--max-frames", str(frames)], capsys)
    assert code == 2 and expect in err, err
    assert "fix:" in err
    assert not (tmp_path / "out" / MODEL_FILE).exists(), "nothing is written on failure"


def test_convert_refuses_to_overwrite(converted, capsys):
    before = (converted["dir"] / MODEL_FILE).stat().st_mtime_ns
    code, err = run_main(["convert", str(converted["best"]), str(converted["dir"])], capsys)
    assert code == 2 and "already holds a checkpoint" in err and "--overwrite" in err
    assert (converted["dir"] / MODEL_FILE).stat().st_mtime_ns == before


def test_missing_best_pth(tmp_path, capsys):
    code, err = run_main(["convert", str(tmp_path / "nope.pth"), str(tmp_path / "out")], capsys)
    assert code == 2 and "nope.pth" in err


def test_save_load_round_trip_is_exact(converted, tmp_path):
    model = load_model(converted["dir"])
    save_model(model, tmp_path / "again")
    again = load_model(tmp_path / "again")
    a, b = model.state_dict(), again.state_dict()
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    cfg_a = json.loads((converted["dir"] / CONFIG_FILE).read_text())
    cfg_b = json.loads((tmp_path / "again" / CONFIG_FILE).read_text())
    cfg_a.pop("extra")
    assert cfg_a == cfg_b


@pytest.mark.parametrize("tamper", ["drop", "add", "reshape"])
def test_tampered_checkpoint_fails_naming_the_tensor(converted, tmp_path, tamper):
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / CONFIG_FILE).write_text((converted["dir"] / CONFIG_FILE).read_text())
    tensors = load_file(str(converted["dir"] / MODEL_FILE))
    name = "temporal.resblocks.1.mlp.c_fc.bias"
    if tamper == "drop":
        del tensors[name]
    elif tamper == "add":
        name = "denoiser_t2v.leftover.weight"
        tensors[name] = torch.zeros(3)
    else:
        tensors[name] = tensors[name][:-1].clone()
    save_file(tensors, str(target / MODEL_FILE))
    with pytest.raises(CheckpointError) as err:
        load_model(target)
    assert name in str(err.value) and MODEL_FILE in str(err.value)
