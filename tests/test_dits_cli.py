"""The built-in ``dits-quickstart`` recipe, shrunk by overrides, end to end through the CLI:
train, evaluate far above chance, and sweep T' (``diffret eval RUN --sweep steps=...``).

Shrunk to stay fast on a CPU: 16 one-event videos (4 captions each), 48 optimiser
steps. That is far too little to generalise, so the test evaluates on the *training*
videos: it checks that the whole pipeline learns (data, the unrolled sampler, InfoNCE on
v_0, checkpoints, evaluation), not held-out accuracy, which the README's three-seed
numbers report.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from diffret_cli.cli.main import cli

SHRINK = ["dataset.options.num_train=16", "dataset.options.num_val=4", "dataset.options.num_test=4",
          "dataset.options.min_events=1", "dataset.options.max_events=1", "dataset.options.group_size=1",
          "dataset.val_split=null", "stage1.batch_size=32", "stage1.epochs=24", "stage1.lr=2e-3",
          "stage1.encoder_lr=2e-3", "train.num_workers=0", "train.log_every=1", "eval.out_domain=[]",
          "eval.splits=[train]"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("dits-cli")
    run_dir, data_root = tmp / "run", tmp / "data"
    res = CliRunner().invoke(cli, ["train", "--recipe", "dits-quickstart", "--run-dir", str(run_dir),
                                   "--data-root", str(data_root), "--quiet", *SHRINK], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return run_dir, data_root


@pytest.mark.slow
def test_dits_quickstart_trains_and_evaluates_far_above_chance(run):
    run_dir, _ = run
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in recs if "loss" in r]
    assert len(losses) == 24 * 2 and losses[-1] < losses[0] - 1.0
    result = json.loads((run_dir / "eval" / "synthetic-train.json").read_text())
    assert result["num_videos"] == 16 and result["num_captions"] == 64
    t2v = result["rows"]["diffusion"]["t2v"]
    # chance over 16 videos: R@1 6.25, R@5 31.25, mean rank 8.5
    assert t2v["R@1"] >= 3 * 6.25 and t2v["R@5"] >= 2 * 31.25 and t2v["MnR"] <= 8.5 / 2, t2v
    assert result["settings"]["steps"] == 10


@pytest.mark.slow
def test_t_prime_sweep_through_the_cli(run):
    run_dir, data_root = run
    res = CliRunner().invoke(cli, ["eval", str(run_dir), "--data-root", str(data_root), "--sweep", "steps=0,10",
                                   "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    swept = json.loads(res.stdout)
    assert [(s["key"], s["value"]) for s in swept] == [("steps", 0), ("steps", 10)]
    zero, ten = (s["results"][0] for s in swept)
    assert zero["settings"]["steps"] == 0 and ten["settings"]["steps"] == 10
    # T' = 0 is the dual encoder exactly; T' = 10 is what training evaluated
    assert zero["rows"]["diffusion"] == zero["rows"]["stage1"]
    trained = json.loads((run_dir / "eval" / "synthetic-train.json").read_text())
    assert ten["rows"]["diffusion"] == trained["rows"]["diffusion"]
