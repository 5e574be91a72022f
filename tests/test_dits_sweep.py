"""DITS under the evaluation library's sweep settings: T' (``steps``) and any argument of
its sampler (``sampler_args``), as ``diffret eval RUN --sweep`` runs them."""

from __future__ import annotations

import pytest
import torch

from diffret_cli.errors import ConfigError
from diffret_cli.evaluation import EvalSettings, evaluate_split, sweep_settings
from diffret_cli.model.dits import DITS
from dits_helpers import fake_split, tiny_dits_config

CAPTIONS = {i: (f"video {i} caption", f"another {i}") for i in range(6)}
SETTINGS = EvalSettings(device="cpu", precision="fp32", batch_size=4)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return DITS(tiny_dits_config(), load_pretrained=False).eval()


def test_steps_sweep(model):
    split = fake_split(list(range(6)), CAPTIONS)
    rows = {s: evaluate_split(model, split, sweep_settings(SETTINGS, "steps", s)) for s in (0, 2, 3)}
    # T' = 0 is the dual encoder, exactly; the result records the T' it used
    assert rows[0]["rows"]["diffusion"] == rows[0]["rows"]["stage1"]
    assert [rows[s]["settings"]["steps"] for s in (0, 2, 3)] == [0, 2, 3]
    assert rows[3]["rows"]["diffusion"] != rows[0]["rows"]["diffusion"], "T' = 3 must change the scores"
    assert evaluate_split(model, split, SETTINGS)["rows"] == rows[3]["rows"]  # the model's own T' is 3


def test_sampler_argument_sweep_leaves_the_model_as_it_was(model):
    split = fake_split(list(range(6)), CAPTIONS)
    before = dict(model.config["sampler"]["args"])
    prefix = evaluate_split(model, split, sweep_settings(SETTINGS, "truncation", "prefix"))
    assert model.config["sampler"]["args"] == before
    assert prefix["settings"]["sampler_args"] == {"truncation": "prefix"}
    # prefix with T' = 3 takes betas 0.1, 0.199, 0.298: other steps than linspace's 0.1, 0.545, 0.99
    assert prefix["rows"]["diffusion"] != evaluate_split(model, split, SETTINGS)["rows"]["diffusion"]
    with pytest.raises(ConfigError, match="rejects the arguments"):
        evaluate_split(model, split, sweep_settings(SETTINGS, "temperature", 2))
    assert model.config["sampler"]["args"] == before
