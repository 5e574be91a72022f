"""DITS training through the family-agnostic trainer: one stage, InfoNCE on v_0, every
part trained (encoders, pooling, step network), checkpoints that rebuild the model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from diffret_cli.checkpoint import load_model
from diffret_cli.model.dits import DITS
from diffret_cli.training import train
from dits_helpers import tiny_dits_config
from train_helpers import prepare_synthetic, tiny_recipe


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return prepare_synthetic(tmp_path_factory.mktemp("data"))


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def dits_recipe(**model) -> dict:
    r = tiny_recipe(stages=(1,))
    del r["stage2"]
    # the paper's initialisation: the step network starts at eps = 0 (v_0 = t)
    r["model"] = tiny_dits_config(denoiser={"name": "dits_step", "args": {"hidden": 32, "depth": 2, "heads": 4}},
                                  **model)
    r["train"]["max_steps"] = 3
    r["eval"]["out_domain"] = []
    return r


@pytest.mark.slow
def test_one_stage_trains_every_part_and_reloads(tmp_path, data_root):
    recipe = dits_recipe()
    torch.manual_seed(recipe["train"]["seed"])
    init = DITS(recipe["model"], load_pretrained=False).state_dict()
    run = train(recipe, run_dir=tmp_path / "run", data_root=data_root, progress=False)
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    # zero init: the first step's v_0 is the text embedding; training then moves it
    assert steps[0]["v0_shift"] == 0.0 and steps[-1]["v0_shift"] > 0.0
    val = [r for r in recs if "val" in r][-1]
    assert set(val["val"]) == {"stage1", "diffusion"}  # model selection sees the v_0 scores

    model = load_model(run / "checkpoints" / "best")
    assert isinstance(model, DITS) and model.config["family"] == "dits"
    trained = model.state_dict()
    assert trained.keys() == init.keys()
    moved = {k for k in init if not torch.equal(init[k], trained[k])}
    for prefix in ("encoder.clip.transformer.", "encoder.clip.visual.", "pooling.", "denoiser.final.linear.",
                   "denoiser.blocks.0.adaLN_modulation."):
        assert any(k.startswith(prefix) for k in moved), f"nothing under {prefix} was trained"
    assert not torch.equal(trained["denoiser.final.linear.weight"], torch.zeros_like(init["denoiser.final.linear.weight"]))


@pytest.mark.slow
def test_frozen_encoder_option(tmp_path, data_root):
    """stage1.freeze_encoder (the paper's ablation) trains pooling and step network only."""
    recipe = dits_recipe()
    recipe["stage1"]["freeze_encoder"] = True
    recipe["train"]["max_steps"] = 2
    torch.manual_seed(recipe["train"]["seed"])
    init = DITS(recipe["model"], load_pretrained=False).state_dict()
    run = train(recipe, run_dir=tmp_path / "frozen", data_root=data_root, progress=False)
    trained = load_model(run / "checkpoints" / "best").state_dict()
    assert all(torch.equal(init[k], trained[k]) for k in init if k.startswith("encoder."))
    assert not torch.equal(init["pooling.q_proj.weight"], trained["pooling.q_proj.weight"])
