"""Data-parallel training on CPU (gloo): two processes give the single-process loss and
gradients of the same global batch, only rank 0 writes a run directory, and the stage-2
feature cache built by two ranks is the one a single process builds, with a memory peak
that does not grow with the dataset."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from launch_helpers import TESTS, torchrun as _torchrun
from train_helpers import prepare_synthetic, tiny_recipe


@pytest.mark.parametrize("family", ["diffusionret", "dits"])
def test_two_ranks_match_single_process(tmp_path, family):
    from ddp_worker import run_step

    from diffret_cli.distributed import DistInfo

    mode = ["dits"] if family == "dits" else []
    _torchrun([str(TESTS / "ddp_worker.py"), *mode, str(tmp_path)], cwd=tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = run_step(DistInfo(), family)
    finally:
        torch.set_num_threads(old)
    assert single["loss"] > 0.1
    assert len(single["grads"]) >= 10
    if family == "dits":  # the flow's step network and the pooling get gradients too
        assert any(n.startswith("denoiser") for n in single["grads"])
        assert any(n.startswith("pooling") for n in single["grads"])
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
    """Without --run-dir the ranks share the folder rank 0 names (each naming its own
    timestamped folder could split one run across two)."""
    data_root = prepare_synthetic(tmp_path / "data")
    recipe_file = tmp_path / "tiny.yaml"
    recipe_file.write_text(yaml.safe_dump(tiny_recipe(stages=(1,))))
    out = _torchrun(["-m", "diffret_cli.cli.main", "train", "--recipe", str(recipe_file),
                     "--data-root", str(data_root), "--stage", "1", "--no-eval", "--quiet"], cwd=tmp_path)
    assert out.stdout.count("run directory:") == 1  # rank 1 reports nothing
    (run_dir,) = (tmp_path / "runs").iterdir()  # one folder, used by both ranks
    assert run_dir.name.startswith("tiny-")
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


def test_a_global_batch_that_does_not_split_over_the_ranks_is_refused_before_any_work(tmp_path):
    """3 ranks and stage1.batch_size=16: refused at start, before the data is prepared or
    a run folder exists (before, each rank silently took 16 // 3 = 5 of 16, and stage 2
    failed hours later)."""
    recipe_file = tmp_path / "tiny.yaml"
    recipe_file.write_text(yaml.safe_dump(tiny_recipe(stages=(1,))))
    out = _torchrun(["-m", "diffret_cli.cli.main", "train", "--recipe", str(recipe_file), "--data-root",
                     str(tmp_path / "data"), "--stage", "1", "--no-eval", "--quiet"], cwd=tmp_path, nproc=3,
                    check=False)
    assert out.returncode != 0
    assert "stage1.batch_size=16 does not split evenly over 3 processes" in out.stdout + out.stderr
    assert "stage1.batch_size=15 or 18" in out.stdout + out.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()


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


def test_two_ranks_build_the_single_process_feature_cache(tmp_path):
    """Stage-2 extraction split across 2 ranks (each encodes half the captions and half
    the videos, writing its rows in place) gives the file one process writes, tensor for
    tensor and header for header; the file is an ordinary safetensors file."""
    from safetensors import safe_open

    from ddp_worker import build_cache
    from diffret_cli.distributed import DistInfo

    data_root = prepare_synthetic(tmp_path / "data")  # 16 training videos x 4 captions
    _torchrun([str(TESTS / "ddp_worker.py"), "cache", str(data_root), str(tmp_path / "ddp")], cwd=tmp_path)
    single = build_cache(data_root, tmp_path / "single", DistInfo())
    ddp_file = tmp_path / "ddp" / "features" / "train.safetensors"
    with safe_open(str(ddp_file), "pt") as a, safe_open(str(single.path), "pt") as b:
        assert a.metadata() == b.metadata() and a.metadata()["captions"] == "64"
        assert sorted(a.keys()) == sorted(b.keys()) == ["caption_video", "text_cls", "text_mask", "text_tokens",
                                                         "video_frames", "video_mask"]
        for k in a.keys():
            x, y = a.get_tensor(k), b.get_tensor(k)
            assert x.dtype == y.dtype and torch.equal(x, y), k
        assert a.get_tensor("text_tokens").dtype == torch.float16  # stored in the cache dtype
        assert a.get_tensor("text_tokens").abs().sum() > 0 and bool(a.get_tensor("text_mask").any())
    # the memory-mapped view reads what safetensors reads
    assert torch.equal(single.text.tokens, load_file(str(single.path))["text_tokens"])
    event = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()][-1]
    assert event["event"] == "feature_cache" and event["built"] and event["world_size"] == 2
    assert (event["rank0"]["captions"], event["rank0"]["videos"]) == (32, 8)  # rank 0 encoded its half
    assert not list((tmp_path / "ddp" / "features").glob(".tmp-*"))


def test_feature_cache_is_reused_only_for_the_same_weights_and_data(tmp_path):
    from ddp_worker import build_cache, cache_context
    from diffret_cli.distributed import DistInfo
    from diffret_cli.model.diffusionret import DiffusionRet
    from diffret_cli.training.feature_cache import train_features
    from train_helpers import tiny_recipe

    data_root = prepare_synthetic(tmp_path / "data")
    run = tmp_path / "run"
    first = build_cache(data_root, run, DistInfo())
    stamp = first.path.stat().st_mtime_ns
    again = build_cache(data_root, run, DistInfo())  # same seed, same weights: reused
    assert again.path.stat().st_mtime_ns == stamp
    torch.manual_seed(0)
    recipe = tiny_recipe()
    model = DiffusionRet(recipe["model"], load_pretrained=False)
    with torch.no_grad():
        model.denoiser_t2v.decoder[0].weight.add_(1.0)  # stage 2 trains these: no effect on features
    ctx = cache_context(data_root, run, DistInfo(), recipe)
    assert train_features(ctx, model).path.stat().st_mtime_ns == stamp
    with torch.no_grad():
        model.temporal.parameters().__next__().add_(0.01)  # a different stage 1: rebuilt
    rebuilt = train_features(ctx, model)
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e["built"] for e in events] == [True, False, False, True]
    assert events[-1]["reason"] == "changed: stage-1 weights"
    assert not torch.equal(rebuilt.video.frames, first.video.frames)
    assert torch.equal(rebuilt.text.tokens, first.text.tokens)  # the text tower did not change


@pytest.mark.slow
def test_extraction_peak_does_not_grow_with_the_number_of_captions(tmp_path):
    """Extraction writes each batch to disk in the cache dtype, so its peak memory is one
    batch, not the dataset: 5x the captions (4,000 -> 20,000, 128-dim token features:
    +131 MB of float16 cache, +262 MB of float32 features) raise the peak of a fresh
    process by less than a tenth of the cache's growth (the captions' text itself is all
    that grows). Holding the features, as extraction did before, raises it by more than
    the whole float32 growth."""
    from launch_helpers import run_python
    from rehearsal_data import write_dataset

    peaks = {}
    for per_video in (40, 200):
        root = write_dataset(tmp_path / f"data{per_video}", "peak", {"train": (100, per_video)}, num_frames=4,
                             workers=1)
        out = tmp_path / f"peak{per_video}.json"
        run_python([str(TESTS / "ddp_worker.py"), "peak", str(root), str(tmp_path / f"run{per_video}"), str(out)],
                   cwd=tmp_path, timeout=600)
        peaks[per_video] = json.loads(out.read_text())["peak_over_start_mb"]
    cache_growth_mb = (200 - 40) * 100 * (32 * 128 * 2 + 128 * 2 + 32 + 8) / 2**20
    growth = peaks[200] - peaks[40]
    print(f"\nextraction peak over start: {peaks[40]:.1f} MB (4,000 captions), {peaks[200]:.1f} MB (20,000); "
          f"float16 cache growth {cache_growth_mb:.1f} MB")
    assert growth < cache_growth_mb / 10, (peaks, cache_growth_mb)
