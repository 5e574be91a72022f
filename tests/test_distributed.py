"""Data-parallel training on CPU (gloo): two processes give the single-process loss and
gradients of the same global batch, and only rank 0 writes a run directory."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from train_helpers import REPO, prepare_synthetic, tiny_recipe

TESTS = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args: list[str], *, cwd: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_two_ranks_match_single_process(tmp_path):
    from ddp_worker import run_step

    from diffret_cli.distributed import DistInfo

    _torchrun([str(TESTS / "ddp_worker.py"), str(tmp_path)], cwd=tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = run_step(DistInfo())
    finally:
        torch.set_num_threads(old)
    assert single["loss"] > 0.1
    assert len(single["grads"]) >= 10
    for r in ranks:
        # every rank computes the loss of the whole global batch (gathered features)
        assert abs(r["loss"] - single["loss"]) <= 1e-5
        assert r["grads"].keys() == single["grads"].keys()
        for name, g in single["grads"].items():
            assert g.abs().sum() > 0, name
            err = (r["grads"][name] - g).norm() / g.norm()
            assert err <= 1e-5, (name, float(err))
    # DDP all-reduces: both ranks hold identical gradients
    for name in single["grads"]:
        assert torch.equal(ranks[0]["grads"][name], ranks[1]["grads"][name]), name


def test_torchrun_train_only_rank0_writes(tmp_path):
    data_root = prepare_synthetic(tmp_path / "data")
    recipe_file = tmp_path / "tiny.yaml"
    recipe_file.write_text(yaml.safe_dump(tiny_recipe(stages=(1,))))
    run_dir = tmp_path / "run"
    out = _torchrun(["-m", "diffret_cli.cli.main", "train", "--recipe", str(recipe_file), "--run-dir", str(run_dir),
                     "--data-root", str(data_root), "--stage", "1", "--no-eval", "--quiet"], cwd=tmp_path)
    assert out.stdout.count("run directory:") == 1  # rank 1 reports nothing
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    starts = [r for r in recs if r.get("event") == "start"]
    assert len(starts) == 1 and starts[0]["world_size"] == 2 and starts[0]["stages"] == [1]
    assert sum(1 for r in recs if r.get("event") == "done") == 1
    steps = [(r["epoch"], r["step"]) for r in recs if "loss" in r]
    assert steps == [(0, 1), (0, 2), (0, 3), (0, 4)]  # 64 pairs / global batch 16, logged once
    assert sum(1 for r in recs if "val" in r) == 1
    for sub in ("last", "stage1/best", "best"):
        assert (run_dir / "checkpoints" / sub / "model.safetensors").is_file(), sub
    assert not (run_dir / "checkpoints" / "stage2").exists()
    assert not (run_dir / "features").exists()
    assert sorted(p.name for p in run_dir.iterdir() if p.name != "tensorboard") == \
        ["checkpoints", "metrics.jsonl", "recipe.yaml"]
    assert not list(tmp_path.glob("runs"))  # no stray timestamped run dir from rank 1


def test_torchrun_stage2_on_the_stage1_run(tmp_path):
    """Stage 2 under DDP: rank 0 extracts the feature cache, both ranks train on local queries
    against candidates from the global batch, only rank 0 writes."""
    data_root = prepare_synthetic(tmp_path / "data")
    recipe_file = tmp_path / "tiny.yaml"
    recipe_file.write_text(yaml.safe_dump(tiny_recipe()))
    run_dir = tmp_path / "run"
    args = ["-m", "diffret_cli.cli.main", "train", "--recipe", str(recipe_file), "--run-dir", str(run_dir),
            "--data-root", str(data_root), "--no-eval", "--quiet"]
    _torchrun(args, cwd=tmp_path)
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["step"]) for r in recs if "loss" in r] == [(s, i) for s in (1, 2) for i in (1, 2, 3, 4)]
    assert all(r["loss_t2v"] > 0 and r["loss_v2t"] > 0 for r in recs if r.get("stage") == 2 and "loss" in r)
    val2 = [r for r in recs if r.get("stage") == 2 and "val" in r]
    assert len(val2) == 1 and set(val2[0]["val"]) == {"stage1", "diffusion"}
    assert (run_dir / "features" / "train.safetensors").is_file()
    assert (run_dir / "checkpoints" / "stage2" / "best" / "model.safetensors").is_file()
