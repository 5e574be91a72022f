"""Training runs end to end on CPU: resume equals an uninterrupted run, the CLI writes the
documented run directory, and bad run directories are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from diffret_cli.errors import ConfigError
from diffret_cli.training import Interrupted, load_training_state, train
from train_helpers import prepare_synthetic, tiny_recipe


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return prepare_synthetic(tmp_path_factory.mktemp("data"))


@pytest.fixture(autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _final_val(run_dir: Path) -> dict:
    return [r for r in _records(run_dir) if "val" in r][-1]


def test_resume_equals_uninterrupted_run(tmp_path, data_root):
    recipe = tiny_recipe(epochs1=2, epochs2=2, checkpoint_every=2)  # 4 steps an epoch
    a = train(recipe, run_dir=tmp_path / "a", data_root=data_root, progress=False)

    b = tmp_path / "b"
    with pytest.raises(Interrupted):  # killed in stage 1, epoch 0, after batch 3
        train(recipe, run_dir=b, data_root=data_root, progress=False, stop_after_steps=3)
    state = load_training_state(b)
    assert (state["stage"], state["epoch"], state["batch"]) == (1, 0, 2)
    with pytest.raises(Interrupted):  # resumed: 6 stage-1 steps left, killed in stage 2
        train(recipe, run_dir=b, data_root=data_root, progress=False, resume=True, stop_after_steps=9)
    state = load_training_state(b)
    assert (state["stage"], state["epoch"], state["batch"]) == (2, 0, 2)
    train(recipe, run_dir=b, data_root=data_root, progress=False, resume=True)

    wa = load_file(str(a / "checkpoints" / "last" / "model.safetensors"))
    wb = load_file(str(b / "checkpoints" / "last" / "model.safetensors"))
    assert wa.keys() == wb.keys() and len(wa) > 10
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-6, rtol=0), k
    va, vb = _final_val(a), _final_val(b)
    assert (va["stage"], va["epoch"]) == (vb["stage"], vb["epoch"]) == (2, 1)
    assert va["val"] == vb["val"] and va["val_score"] == vb["val_score"]
    # every optimiser step of A is logged by B once with the same loss (the replayed steps again)
    la = {(r["stage"], r["epoch"], r["step"]): r["loss"] for r in _records(a) if "loss" in r}
    lb = {(r["stage"], r["epoch"], r["step"]): r["loss"] for r in _records(b) if "loss" in r}
    assert len(la) == 16 and la.keys() == lb.keys()
    for k in la:
        assert abs(la[k] - lb[k]) <= 1e-6, k


# Recorded from one run of the tiny recipe (checked deterministic across runs on CPU).
# 8 test videos x 4 captions; torch.set_num_threads(1).
EXPECTED_TEST = {
    "stage1": {"t2v": {"R@1": 15.625, "R@5": 62.5, "MnR": 4.375}, "v2t": {"R@1": 12.5, "R@5": 62.5, "MnR": 4.5}},
    "diffusion": {"t2v": {"R@1": 3.125, "R@5": 62.5, "MnR": 4.65625}, "v2t": {"R@1": 12.5, "R@5": 62.5, "MnR": 4.5}},
}


def test_cli_train_writes_run_dir(tmp_path, data_root):
    from click.testing import CliRunner

    from diffret_cli.cli.main import cli

    recipe_file = tmp_path / "tiny.yaml"
    recipe_file.write_text(yaml.safe_dump(tiny_recipe()))
    run_dir = tmp_path / "run"
    res = CliRunner().invoke(cli, ["train", "--recipe", str(recipe_file), "--run-dir", str(run_dir),
                                   "--data-root", str(data_root), "--quiet"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    saved = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    assert saved["name"] == "tiny" and saved["stage1"]["batch_size"] == 16
    recs = _records(run_dir)
    assert recs[0]["event"] == "start" and recs[-1]["event"] == "done"
    assert sum(1 for r in recs if r.get("stage") == 1 and "loss" in r) == 4
    assert sum(1 for r in recs if r.get("stage") == 2 and "loss" in r) == 4
    for name in ("model.safetensors", "config.json"):
        assert (run_dir / "checkpoints" / "best" / name).is_file()
    result = json.loads((run_dir / "eval" / "synthetic-test.json").read_text())
    assert set(result["rows"]) == {"stage1", "diffusion"}
    assert result["num_videos"] == 8 and result["num_captions"] == 32
    got = {row: {d: {m: result["rows"][row][d][m] for m in ("R@1", "R@5", "MnR")} for d in ("t2v", "v2t")}
           for row in ("stage1", "diffusion")}
    for row, dirs in EXPECTED_TEST.items():
        for d, ms in dirs.items():
            for m, v in ms.items():
                assert abs(got[row][d][m] - v) <= 1e-4, (row, d, m, got[row][d][m], v)


def test_run_dir_equal_to_cwd_is_refused(tmp_path, data_root, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for run_dir in (Path("."), tmp_path):
        with pytest.raises(ConfigError, match="working directory"):
            train(tiny_recipe(), run_dir=run_dir, data_root=data_root, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_resume_of_empty_dir_errors(tmp_path, data_root):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="nothing to resume"):
        train(tiny_recipe(), run_dir=tmp_path / "empty", data_root=data_root, progress=False, resume=True)
    assert list((tmp_path / "empty").iterdir()) == []


def test_max_steps_caps_each_stage_and_still_validates(tmp_path, data_root):
    recipe = tiny_recipe(epochs1=3, epochs2=3)  # 4 steps an epoch, 12 a stage
    recipe["train"]["max_steps"] = 5
    run = train(recipe, run_dir=tmp_path / "r", data_root=data_root, progress=False)
    recs = _records(run)
    for stage in (1, 2):
        steps = [r for r in recs if r.get("stage") == stage and "loss" in r]
        assert len(steps) == 5, stage
        vals = [r for r in recs if r.get("stage") == stage and "val" in r]
        assert [v["epoch"] for v in vals] == [0, 1]  # epoch 0 ends normally, epoch 1 at the cap
    assert (run / "checkpoints" / "stage2" / "best" / "model.safetensors").is_file()
    assert load_training_state(run)["epoch"] == 3  # the stage counts as finished


def test_ema_weights_are_what_is_validated_and_saved(tmp_path, data_root):
    recipe = tiny_recipe(epochs1=1, epochs2=0, stages=(1,))
    recipe["train"]["ema"] = 0.5
    run = train(recipe, run_dir=tmp_path / "ema", data_root=data_root, progress=False)
    state = load_training_state(run)
    best = load_file(str(run / "checkpoints" / "stage1" / "best" / "model.safetensors"))
    last = load_file(str(run / "checkpoints" / "last" / "model.safetensors"))
    shadow = state["ema"]
    assert shadow and all(k.startswith(("encoder.", "temporal.", "similarity.")) for k in shadow)
    # the best checkpoint holds the EMA average, the last one the raw weights
    name = "similarity.text_weight_fc.0.weight"
    assert torch.equal(best[name], shadow[name])
    assert not torch.equal(best[name], last[name])


def test_stage2_alone_on_a_finished_stage1_run(tmp_path, data_root):
    run = tmp_path / "two-step"
    train(tiny_recipe(stages=(1,)), run_dir=run, data_root=data_root, progress=False, stages=[1])
    assert not (run / "checkpoints" / "stage2").exists()
    with pytest.raises(ConfigError, match="already holds a run"):
        train(tiny_recipe(), run_dir=run, data_root=data_root, progress=False, stages=[1, 2])
    stage1 = load_file(str(run / "checkpoints" / "stage1" / "best" / "model.safetensors"))
    train(tiny_recipe(), run_dir=run, data_root=data_root, progress=False, stages=[2])
    best = load_file(str(run / "checkpoints" / "best" / "model.safetensors"))
    # stage 2 kept the stage-1 weights frozen and trained only the denoisers
    for k, v in stage1.items():
        if k.startswith("denoiser_"):
            assert not torch.equal(best[k], v), k
        else:
            assert torch.equal(best[k], v), k
    assert (run / "features" / "train.safetensors").is_file()


def test_tensorboard_scalars_are_written_when_it_is_installed(tmp_path, data_root):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = train(tiny_recipe(), run_dir=tmp_path / "tb", data_root=data_root, progress=False)
    (events,) = (run / "tensorboard").iterdir()
    ea = EventAccumulator(str(events))
    ea.Reload()
    assert {"stage1/loss", "stage1/lr", "stage2/loss", "stage2/lr"} <= set(ea.Tags()["scalars"])
    logged = [r["loss"] for r in _records(run) if r.get("stage") == 1 and "loss" in r]
    assert [round(e.value, 5) for e in ea.Scalars("stage1/loss")] == [round(v, 5) for v in logged]


# The built-in quickstart recipe itself, shrunk by overrides only (data, steps, batch),
# through the CLI; metrics recorded from a run on the 2-core CI machine type.
QUICKSTART_SMOKE = {"stage1": {"R@1": 15.625, "R@5": 65.625}, "diffusion": {"R@1": 9.375, "R@5": 65.625}}


def test_builtin_quickstart_recipe_end_to_end_through_the_cli(tmp_path):
    from click.testing import CliRunner

    from diffret_cli.cli.main import cli

    run_dir = tmp_path / "qs"
    args = ["train", "--recipe", "quickstart", "--run-dir", str(run_dir), "--data-root", str(tmp_path / "data"),
            "--quiet", "dataset.options.num_train=32", "dataset.options.num_val=8", "dataset.options.num_test=8",
            "stage1.batch_size=16", "stage2.batch_size=16", "train.max_steps=4", "train.num_workers=0", "train.log_every=1",
            "eval.out_domain=[]"]
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    recs = _records(run_dir)
    assert [(r["stage"], r["step"]) for r in recs if "loss" in r] == [(s, i) for s in (1, 2) for i in (1, 2, 3, 4)]
    saved = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    assert saved["name"] == "quickstart" and saved["model"]["encoder"]["args"]["tokenizer"] == "words"
    result = json.loads((run_dir / "eval" / "synthetic-test.json").read_text())
    assert result["num_videos"] == 8 and result["num_captions"] == 32
    got = {row: {m: result["rows"][row]["t2v"][m] for m in ("R@1", "R@5")} for row in ("stage1", "diffusion")}
    for row, ms in QUICKSTART_SMOKE.items():
        for m, v in ms.items():
            assert abs(got[row][m] - v) <= 1e-4, (row, m, got)
