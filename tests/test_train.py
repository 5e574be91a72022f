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


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


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
    # B's metrics.jsonl reads like A's: every optimiser step once, in order, with the same
    # global step (the steps a kill made after the resume point are cut, then replayed)
    la = [(r["stage"], r["epoch"], r["step"], r["global_step"], r["loss"]) for r in _records(a) if "loss" in r]
    lb = [(r["stage"], r["epoch"], r["step"], r["global_step"], r["loss"]) for r in _records(b) if "loss" in r]
    assert [x[3] for x in la] == list(range(1, 17))
    assert [x[:4] for x in lb] == [x[:4] for x in la]
    for x, y in zip(la, lb):
        assert abs(x[4] - y[4]) <= 1e-6, x
    starts = [r["global_step"] for r in _records(b) if r.get("event") == "start"]
    assert starts == [0, 2, 10]  # each resume continues the run's step count
    assert [r["epoch"] for r in _records(b) if "val" in r] == [r["epoch"] for r in _records(a) if "val" in r]
    # TensorBoard drops the events logged after the resume point too: one value per step
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for run in (a, b):
        ea = EventAccumulator(str(run / "tensorboard"))  # every event file, in order
        ea.Reload()
        steps = [e.step for e in ea.Scalars("stage1/loss")] + [e.step for e in ea.Scalars("stage2/loss")]
        assert steps == list(range(1, 17)), (run.name, steps)


# REGRESSION CHECK ONLY (not a correctness claim): numbers recorded from one run of the
# tiny recipe on one machine type (deterministic across runs on CPU, 8 test videos x 4
# captions, torch.set_num_threads(1)). A change here means the training or evaluation
# numerics changed; the properties asserted before it are what must hold.
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
    # properties every result has: bounds, monotone recall, Rsum, and re-ranking (top 4)
    # leaves R@k for k >= 4 alone
    for row in ("stage1", "diffusion"):
        for d, queries, gallery in (("t2v", 32, 8), ("v2t", 8, 32)):
            m = result["rows"][row][d]
            assert m["queries"] == queries
            assert 0 <= m["R@1"] <= m["R@5"] <= m["R@10"] <= m["R@50"] <= 100
            assert m["Rsum"] == pytest.approx(m["R@1"] + m["R@5"] + m["R@10"])
            assert 1 <= m["MdR"] <= 8 and 1 <= m["MnR"] <= 8  # 8 videos (v2t ranks 8 caption groups)
            assert m["R@10"] == 100.0  # fewer than 10 videos / caption groups: every query hits
    for d in ("t2v", "v2t"):
        for k in (5, 10, 50):
            assert result["rows"]["diffusion"][d][f"R@{k}"] == result["rows"]["stage1"][d][f"R@{k}"]
    got = {row: {d: {m: result["rows"][row][d][m] for m in ("R@1", "R@5", "MnR")} for d in ("t2v", "v2t")}
           for row in ("stage1", "diffusion")}
    for row, dirs in EXPECTED_TEST.items():  # the labelled regression check
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
# through the CLI. REGRESSION CHECK ONLY: metrics recorded from a run on the 2-core CI
# machine type (a change means the numerics changed, not that they are wrong).
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


# ------------------------------------------------------- a failed command never damages a run
@pytest.fixture(scope="module")
def finished(tmp_path_factory, data_root) -> Path:
    run = tmp_path_factory.mktemp("finished") / "run"
    train(tiny_recipe(), run_dir=run, data_root=data_root, progress=False)
    return run


def _snapshot(run: Path) -> dict[str, tuple[int, bytes]]:
    """Every file of a run folder: (mtime_ns, content)."""
    return {str(p.relative_to(run)): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(run.rglob("*"))
            if p.is_file()}


def _broken(kind: str, tmp_path: Path) -> tuple[dict, dict]:
    """(recipe, train() arguments) of a stage-2 retrain that must be refused."""
    recipe = tiny_recipe()
    kw: dict = {"stages": [2]}
    if kind == "dataset not prepared":  # the verified case: msrvtt was never prepared
        recipe["dataset"]["name"] = "msrvtt"
        kw["data_root"] = tmp_path / "empty-root"
    elif kind == "batch larger than the data":
        recipe["stage2"]["batch_size"] = 128  # 16 videos x 4 captions = 64 pairs
    elif kind == "sampler steps out of range":
        recipe["model"]["sampler"]["args"]["sample_steps"] = 1000
    elif kind == "eval steps out of range":
        recipe["eval"]["steps"] = 11
    elif kind == "zero epochs":
        recipe["stage2"]["epochs"] = 0
    elif kind == "missing val split":
        recipe["dataset"]["val_split"] = "val2"
    return recipe, kw


@pytest.mark.parametrize("kind", ["dataset not prepared", "batch larger than the data", "sampler steps out of range",
                                  "eval steps out of range", "zero epochs", "missing val split"])
def test_a_refused_stage2_retrain_leaves_the_finished_run_as_it_was(finished, data_root, tmp_path, kind):
    from diffret_cli.errors import DiffretError
    from diffret_cli.evaluation import EvalSettings, evaluate_run
    from diffret_cli.training.run import check_start

    before = _snapshot(finished)
    recipe, kw = _broken(kind, tmp_path)
    with pytest.raises(DiffretError):
        train(recipe, **{"run_dir": finished, "data_root": data_root, "progress": False, **kw})
    assert _snapshot(finished) == before, "a refused command wrote into the run"
    assert not (finished / "recipe-history").exists()
    # the run still evaluates and still resumes with its own recipe
    res = evaluate_run(finished, settings=EvalSettings(device="cpu", rerank=False), data_root=data_root,
                       save=False)
    assert res[0]["rows"]["stage1"]["t2v"]["queries"] == 32
    assert check_start(finished, tiny_recipe(), resume=True, stages=[1, 2])["stage"] == 2


def test_refusals_before_any_write_in_a_new_run_dir(tmp_path, data_root):
    from diffret_cli.errors import DiffretError

    cases = {"train.device=cuda": ("device", "cuda"), "train.device=mps": ("device", "mps")}
    for label, (key, value) in cases.items():
        if value == "cuda" and torch.cuda.is_available():
            continue
        recipe = tiny_recipe()
        recipe["train"][key] = value
        with pytest.raises(DiffretError, match="cuda|mps"):
            train(recipe, run_dir=tmp_path / "new", data_root=data_root, progress=False)
        assert not (tmp_path / "new").exists(), label


@pytest.mark.parametrize("where", ["sampler", "schedule"])
def test_one_step_sampler_or_schedule_trains_and_validates(tmp_path, data_root, where):
    """model.sampler.args.sample_steps=1 (one DDIM call at validation) and a one-step
    noise schedule both train through both stages (they crashed with an IndexError)."""
    recipe = tiny_recipe()
    recipe["train"]["max_steps"] = 1
    if where == "sampler":
        recipe["model"]["sampler"]["args"]["sample_steps"] = 1
    else:
        recipe["model"]["schedule"]["args"]["num_steps"] = 1
    run = train(recipe, run_dir=tmp_path / where, data_root=data_root, progress=False)
    vals = [r for r in _records(run) if r.get("stage") == 2 and "val" in r]
    assert vals and "diffusion" in vals[-1]["val"]
    assert (run / "checkpoints" / "best" / "model.safetensors").is_file()


# ------------------------------------------------------------------------- checkpoints/last
def _tiny_model(seed: int):
    from diffret_cli.families import build_model
    from train_helpers import tiny_model_config

    torch.manual_seed(seed)
    return build_model(tiny_model_config(), load_pretrained=False)


def _state(step: int) -> dict:
    return {"stage": 1, "epoch": 0, "batch": step, "best": 0.0, "global_step": step, "optimizer": {},
            "scheduler": {}, "rng": {"torch": torch.get_rng_state()}}


@pytest.mark.parametrize("fail_at", ["model", "state file", "swap"])
def test_last_is_replaced_as_one_unit(tmp_path, monkeypatch, fail_at):
    """A save that dies anywhere leaves the previous resume point whole: its weights with
    its own state, never new weights with an old state; a finished save swaps both."""
    import diffret_cli.training.state as st

    run = tmp_path / "run"
    old, new = _tiny_model(0), _tiny_model(1)
    st.save_training_state(run, old, _state(2))
    old_w = load_file(str(st.last_dir(run) / "model.safetensors"))

    class Killed(BaseException):
        pass

    def die(*a, **k):
        raise Killed

    target = {"model": "save_model", "state file": "atomic_write_bytes", "swap": "replace_dir"}[fail_at]
    monkeypatch.setattr(st, target, die)
    with pytest.raises(Killed):
        st.save_training_state(run, new, _state(5))
    monkeypatch.undo()
    w = load_file(str(st.last_dir(run) / "model.safetensors"))
    assert all(torch.equal(w[k], old_w[k]) for k in old_w)
    assert load_training_state(run)["global_step"] == 2
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["last"]  # the temp folder is gone

    st.save_training_state(run, new, _state(5))
    w = load_file(str(st.last_dir(run) / "model.safetensors"))
    assert any(not torch.equal(w[k], old_w[k]) for k in old_w)
    assert load_training_state(run)["global_step"] == 5


def test_last_never_disappears_during_a_save(tmp_path, monkeypatch):
    """On Linux the new folder is exchanged with the old in one renameat2 call: `last` is
    never renamed away (which would leave an instant with no resume point)."""
    import os

    import diffret_cli.training.state as st

    run = tmp_path / "run"
    st.save_training_state(run, _tiny_model(0), _state(2))
    moved = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b, *r, **k: (moved.append(str(a)), real_replace(a, b, *r, **k)))
    st.save_training_state(run, _tiny_model(1), _state(3))
    assert str(st.last_dir(run)) not in moved
    assert load_training_state(run)["global_step"] == 3


def test_a_resume_sweeps_what_a_killed_save_left(tmp_path, data_root):
    recipe = tiny_recipe(epochs1=1, epochs2=1, checkpoint_every=2)
    run = tmp_path / "r"
    with pytest.raises(Interrupted):
        train(recipe, run_dir=run, data_root=data_root, progress=False, stop_after_steps=3, stages=[1])
    leftover = run / "checkpoints" / ".tmp-123-abcd-last"  # as a kill -9 in the middle of a save leaves it
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"half")
    train(recipe, run_dir=run, data_root=data_root, progress=False, resume=True, stages=[1])
    assert not leftover.exists()
    assert load_training_state(run)["global_step"] == 4


@pytest.mark.parametrize("cores, world, workers, expected", [
    (16, 1, 0, None),  # alone on the machine: torch's default, every core
    (16, 1, 4, 12),  # the loader workers keep their cores
    (16, 4, 0, 4),  # four CPU ranks share the cores (gloo DDP), with or without workers
    (16, 4, 2, 2),
    (2, 2, 4, 1),  # never below one
])
def test_intra_op_threads_share_the_cores(cores, world, workers, expected):
    from diffret_cli.training.run import intra_op_threads

    assert intra_op_threads(cores, world, workers) == expected
