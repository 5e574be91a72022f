"""``diffret bench``: each subcommand runs at tiny sizes and reports sane figures."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from diffret_cli.bench import PhaseTimer, bench_eval, official_shape_features
from diffret_cli.bench.encoder import SMALL_VIT
from diffret_cli.cli.main import cli


def run_json(*args: str) -> dict:
    res = CliRunner().invoke(cli, ["bench", *args, "--json", "--threads", "1"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def check_phases(res: dict, names: list[str]) -> None:
    assert list(res["phases"]) == names
    assert all(v > 0 for v in res["phases"].values()), res["phases"]
    assert all(v >= 0 for v in res["cpu_phases"].values())
    assert res["total"] == pytest.approx(sum(res["phases"].values()), rel=1e-3, abs=1e-3)
    assert res["peak_memory_mb"] > 10  # a running torch process holds far more than 10 MB
    assert res["environment"]["threads"] == 1


def test_bench_eval_json():
    res = run_json("eval", "--gallery", "12", "--topk", "4", "--steps", "3", "--chunk-size", "5")
    check_phases(res, ["similarity_weights", "similarity", "rerank_t2v", "rerank_v2t"])
    assert (res["gallery"], res["topk"], res["steps"], res["diffusion"]) == (12, 4, 3, True)
    # the CPU step says whether the C kernel ran (and, if not, why)
    assert res["rerank_step"].startswith(("native C kernel", "torch ops:")), res["rerank_step"]


def test_bench_eval_without_diffusion_stops_after_similarity():
    res = run_json("eval", "--gallery", "9", "--no-diffusion")
    check_phases(res, ["similarity_weights", "similarity"])
    assert (res["steps"], res["diffusion"]) == (0, False) and res["rerank_step"].startswith("none")


def test_bench_eval_returns_the_work_it_timed():
    """The timed work is real: the re-ranked matrices differ from S exactly in each row's top K."""
    from diffret_cli.bench import EvalParts, run_eval

    feats = official_shape_features(10, width=32, seed=0)
    parts = EvalParts.random(width=32)
    out = run_eval(feats, parts, topk=3, steps=2, diffusion=True, chunk_size=4, timer=PhaseTimer(torch.device("cpu")))
    sim, t2v = out["sim"], out["t2v"]
    moved = t2v != sim
    assert moved.sum(dim=1).tolist() == [3] * 10  # softmax bonus > 0 on exactly the top 3
    assert torch.equal(moved, torch.zeros_like(moved).scatter_(1, sim.topk(3, dim=1).indices, True))
    assert out["v2t"].shape == (10, 10)


def test_official_shape_features():
    f = official_shape_features(50, 20, seed=3)
    assert f.tokens.shape == (50, 32, 512) and f.frames.shape == (20, 12, 512)
    valid = f.text_mask.sum(1)
    assert int(valid.min()) >= 8 and int(valid.max()) <= 20
    assert torch.equal(f.text_mask, (torch.arange(32) < valid[:, None]).long())  # leading tokens
    assert bool((f.frame_mask == 1).all())
    assert torch.equal(f.cls, f.tokens[torch.arange(50), valid - 1])  # the EOT feature


def test_bench_train_stage2_json():
    res = run_json("train-stage2", "--batch", "6", "--steps", "1")
    check_phases(res, ["similarity", "candidates", "forward_loss", "backward", "optimizer"])
    assert (res["batch"], res["candidates"], res["indexed"]) == (6, 6, True)
    assert res["samples_per_s"] == pytest.approx(6 / res["total"], rel=2e-2)
    assert res["last_loss"] > 0


def test_bench_train_stage2_gathered_path_has_the_same_loss():
    """Same seed, same batch: the indexed and the gathered step compute the same loss."""
    a = run_json("train-stage2", "--batch", "5", "--steps", "1")
    b = run_json("train-stage2", "--batch", "5", "--steps", "1", "--gathered")
    assert b["indexed"] is False
    assert a["last_loss"] == pytest.approx(b["last_loss"], rel=1e-3)


def test_bench_encode_json_counts_the_small_vit():
    res = run_json("encode", "--batch", "2", "--steps", "1")
    assert res["model"] == "small" and res["image_size"] == SMALL_VIT["vision_cfg"]["image_size"]
    # the small ViT by hand: 49 patches + CLS, width w = 256, 4 layers, MLP 4w, patch 32;
    # FLOPs = 2 x MACs; the attention scores (QK^T, AV) are not counted (see bench.encoder)
    n, w, layers = 50, 256, 4
    macs = 49 * 3 * 32 * 32 * w + layers * n * (4 * w * w + 8 * w * w) + w * SMALL_VIT["embed_dim"]
    assert res["gflops_per_frame"] == pytest.approx(2 * macs / 1e9, rel=1e-3)
    assert res["frames_per_s"] > 0
    assert res["tflops"] == pytest.approx(res["gflops_per_frame"] * res["frames_per_s"] / 1e3, rel=2e-2)


def test_bench_rejects_a_missing_gpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    res = CliRunner().invoke(cli, ["bench", "eval", "--gallery", "4", "--device", "cuda"])
    assert res.exit_code != 0
    assert "no CUDA device" in str(res.exception)


def test_bench_eval_library_rejects_bad_sizes():
    with pytest.raises(ValueError, match="gallery and topk"):
        bench_eval(gallery=0)
