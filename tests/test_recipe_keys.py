"""Every ``eval.*`` and ``train.*`` recipe key changes behaviour: no validated key is
silently ignored. Each key has a test below that fails when the key is not read; a key
added to the schema without one fails :func:`test_every_key_has_a_behaviour_test`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from diffret_cli import evaluation, qbnorm
from diffret_cli.data.manifest import PreparedDataset
from diffret_cli.errors import ConfigError
from diffret_cli.evaluation import EvalSettings, evaluate_dataset, evaluate_split, run_targets
from diffret_cli.families import build_model
from diffret_cli.recipe_schema import DEFAULTS
from diffret_cli.training import train
from train_helpers import prepare_synthetic, tiny_model_config, tiny_recipe

#: key -> the test that shows it changes behaviour
COVERED = {
    "eval.splits": "test_eval_splits_and_out_domain_are_the_targets",
    "eval.out_domain": "test_eval_splits_and_out_domain_are_the_targets",
    "eval.steps": "test_eval_steps_is_the_number_of_denoiser_calls",
    "eval.topk_t2v": "test_eval_topk_per_direction",
    "eval.topk_v2t": "test_eval_topk_per_direction",
    "eval.batch_size": "test_eval_batch_size_and_workers_reach_the_encoders",
    "eval.qb_norm": "test_eval_qb_norm_keys",
    "eval.qb_norm_beta": "test_eval_qb_norm_keys",
    "eval.qb_norm_k": "test_eval_qb_norm_keys",
    "eval.qb_norm_bank_size": "test_eval_qb_norm_keys",
    "train.seed": "test_train_seed_log_every_and_validation_cadence",
    "train.log_every": "test_train_seed_log_every_and_validation_cadence",
    "train.val_every_epochs": "test_train_seed_log_every_and_validation_cadence",
    "train.device": "test_train_device_and_precision",
    "train.precision": "test_train_device_and_precision",
    "train.num_workers": "test_eval_batch_size_and_workers_reach_the_encoders",
    "train.checkpoint_every": "tests/test_train.py::test_resume_equals_uninterrupted_run",
    "train.ema": "tests/test_train.py::test_ema_weights_are_what_is_validated_and_saved",
    "train.stages": "tests/test_train.py::test_stage2_alone_on_a_finished_stage1_run",
    "train.max_steps": "tests/test_train.py::test_max_steps_caps_each_stage_and_still_validates",
}


def test_every_key_has_a_behaviour_test():
    keys = {f"{section}.{k}" for section in ("eval", "train") for k in DEFAULTS[section]}
    assert keys == set(COVERED), f"keys without a behaviour test: {sorted(keys - set(COVERED))}"
    here = Path(__file__).read_text()
    for key, test in COVERED.items():
        if "::" in test:
            path, name = test.split("::")
            assert f"def {name}(" in (Path(__file__).parent.parent / path).read_text(), key
        else:
            assert f"def {test}(" in here, key


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return prepare_synthetic(tmp_path_factory.mktemp("keys-data"), num_train=16, num_val=8, num_test=8)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(tiny_model_config(), load_pretrained=False).eval()


@pytest.fixture(scope="module")
def test_split(data_root):
    return PreparedDataset.open(data_root, "synthetic").split("test")


def _recipe(**eval_keys) -> dict:
    r = tiny_recipe()
    r["eval"].update(eval_keys)
    return r


def test_eval_splits_and_out_domain_are_the_targets():
    r = _recipe(splits=["val", "test"], out_domain=[{"name": "synthetic-shift", "split": "test", "options": {}}])
    targets = run_targets(r, EvalSettings.from_recipe(r))
    assert [(t.dataset, t.split, t.role) for t in targets] == [
        ("synthetic", "val", "in-domain"), ("synthetic", "test", "in-domain"),
        ("synthetic-shift", "test", "out-of-domain")]


def test_eval_steps_is_the_number_of_denoiser_calls(model, test_split, monkeypatch):
    calls = {"t2v": 0, "v2t": 0}
    for d in ("t2v", "v2t"):
        den = getattr(model, f"denoiser_{d}")
        orig = den.step

        def counted(*a, _orig=orig, _d=d, **k):
            calls[_d] += 1
            return _orig(*a, **k)
        monkeypatch.setattr(den, "step", counted)
    for steps in (3, 7):
        calls.update(t2v=0, v2t=0)
        res = evaluate_split(model, test_split, EvalSettings.from_recipe(_recipe(steps=steps)).with_overrides(device="cpu"))
        chunks = 1  # 32 captions and 8 videos fit one chunk of 64 queries
        assert calls == {"t2v": steps * chunks, "v2t": steps * chunks}
        assert res["settings"]["steps"] == steps


def test_eval_topk_per_direction(model, test_split):
    record: dict = {}
    s = EvalSettings.from_recipe(_recipe(topk_t2v=3, topk_v2t=5)).with_overrides(device="cpu", steps=2)
    res = evaluate_split(model, test_split, s, record=record)
    assert record["t2v"][0]["candidates"].shape == (32, 3)
    assert record["v2t"][0]["candidates"].shape == (8, 5)
    assert (res["settings"]["topk_t2v"], res["settings"]["topk_v2t"]) == (3, 5)


def test_eval_batch_size_and_workers_reach_the_encoders(model, test_split, monkeypatch):
    seen = {}
    orig_t, orig_v = evaluation.encode_texts, evaluation.encode_videos

    def enc_t(m, caps, *, batch_size, **k):
        seen["text_batch"] = batch_size
        return orig_t(m, caps, batch_size=batch_size, **k)

    def enc_v(m, split, *, batch_size, num_workers=0, **k):
        seen["video_batch"], seen["workers"] = batch_size, num_workers
        return orig_v(m, split, batch_size=batch_size, num_workers=0, **k)
    monkeypatch.setattr(evaluation, "encode_texts", enc_t)
    monkeypatch.setattr(evaluation, "encode_videos", enc_v)
    r = _recipe(batch_size=12)
    r["train"]["num_workers"] = 3
    evaluation.encode_split(model, test_split, EvalSettings.from_recipe(r).with_overrides(device="cpu"))
    assert seen == {"text_batch": 12, "video_batch": 3, "workers": 3}


def test_eval_qb_norm_keys(model, data_root, monkeypatch):
    seen = []
    orig = qbnorm.qb_norm

    def spy(sim, bank, *, beta, k):
        seen.append((bank.shape[0], beta, k))
        return orig(sim, bank, beta=beta, k=k)
    monkeypatch.setattr(qbnorm, "qb_norm", spy)
    target = evaluation.EvalTarget("synthetic", "test")
    off = evaluate_dataset(model, target, EvalSettings.from_recipe(_recipe()).with_overrides(device="cpu", steps=2),
                           data_root=data_root)
    assert "stage1+qbnorm" not in off["rows"] and not seen
    s = EvalSettings.from_recipe(_recipe(qb_norm=True, qb_norm_beta=7.5, qb_norm_k=2, qb_norm_bank_size=10))
    on = evaluate_dataset(model, target, s.with_overrides(device="cpu", steps=2), data_root=data_root)
    assert {"stage1+qbnorm", "diffusion+qbnorm"} <= set(on["rows"])
    assert seen == [(10, 7.5, 2), (10, 7.5, 2)]  # both rows, a 10-caption bank of 64 training captions


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_train_seed_log_every_and_validation_cadence(tmp_path, data_root):
    from safetensors.torch import load_file

    runs = {}
    for name, changes in {"a": {}, "b": {"seed": 1, "log_every": 2, "val_every_epochs": 0}}.items():
        r = tiny_recipe(epochs1=2, stages=(1,))
        r["train"].update(changes)
        runs[name] = train(r, run_dir=tmp_path / name, data_root=data_root, progress=False)
    a, b = (_records(runs[k]) for k in "ab")
    # log_every: 4 steps an epoch; every step logged (1), or the first and every 2nd (2)
    assert [r["step"] for r in a if "loss" in r] == [1, 2, 3, 4] * 2
    assert [r["step"] for r in b if "loss" in r] == [1, 2, 4] * 2
    # val_every_epochs: after each of the 2 epochs (1), or only after the last (0: never
    # before the end, where the best checkpoint still needs one)
    assert [r["epoch"] for r in a if "val" in r] == [0, 1]
    assert [r["epoch"] for r in b if "val" in r] == [1]
    # seed: other initial weights and data order, other weights at the end
    wa = load_file(str(runs["a"] / "checkpoints" / "last" / "model.safetensors"))
    wb = load_file(str(runs["b"] / "checkpoints" / "last" / "model.safetensors"))
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)


def test_train_device_and_precision(tmp_path, data_root):
    r = tiny_recipe(stages=(1,))
    r["train"].update(max_steps=1, precision="fp32")
    run = train(r, run_dir=tmp_path / "p", data_root=data_root, progress=False)
    start = next(x for x in _records(run) if x.get("event") == "start")
    assert (start["device"], start["precision"]) == ("cpu", "fp32")
    assert EvalSettings.from_recipe(r).precision == "fp32"
    bad = tiny_recipe(stages=(1,))
    bad["train"]["device"] = "cuda:7"
    if torch.cuda.device_count() <= 7:
        with pytest.raises(ConfigError, match="cuda:7"):
            train(bad, run_dir=tmp_path / "d", data_root=data_root, progress=False)
        assert not (tmp_path / "d").exists()  # refused before anything was written
