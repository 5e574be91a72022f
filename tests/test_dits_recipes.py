"""The DITS recipes carry the paper's settings and published numbers, and resolve to
models the DITS family builds."""

from __future__ import annotations

import pytest

from diffret_cli import recipes as R
from diffret_cli.families import get_family

PUBLISHED_T2V = {  # Wang et al., NeurIPS 2024, ViT-B/32: R@1, R@5, R@10, MdR, MnR
    "msrvtt": (51.9, 75.7, 84.6, 1, 11.6),
    "lsmdc": (28.2, 47.3, 56.6, 6, 43.7),
    "didemo": (51.1, 77.9, 85.8, 1, 12.1),
}


@pytest.mark.parametrize("dataset", sorted(PUBLISHED_T2V))
def test_paper_settings_and_published_numbers(dataset):
    r = R.load_recipe(f"dits-{dataset}")
    assert R.check_recipe(f"dits-{dataset}") == []
    m, s1 = r["model"], r["stage1"]
    assert m["family"] == "dits" and r["dataset"]["name"] == dataset
    assert m["encoder"]["args"] == {"model": "ViT-B-32-quickgelu", "pretrained": "openai"}
    assert m["max_frames"] == 12 and r["data"]["short_side"] == 224
    assert m["pooling"] == {"name": "xpool", "args": {"heads": 1, "dropout": 0.3, "chunk_size": 128}}
    den = m["denoiser"]["args"]
    assert (den["hidden"], den["depth"], den["heads"], den["mlp_ratio"], den["condition"]) == (512, 4, 16, 4.0, "none")
    sampler = m["sampler"]["args"]
    assert (sampler["num_steps"], sampler["beta_start"], sampler["beta_end"], sampler["noise"]) == (10, 0.1, 0.99, False)
    assert sampler["sample_steps"] == (5 if dataset == "didemo" else 10)
    assert (s1["epochs"], s1["batch_size"], s1["weight_decay"], s1["warmup"], s1["encoder_lr"]) == (5, 32, 0.2, 0.1, 1e-5)
    assert s1["lr"] == (3e-5 if dataset == "msrvtt" else 1e-5) and not s1["freeze_encoder"]
    assert r["train"]["seed"] == 24 and r["train"]["stages"] == [1]
    pub = r["reproduces"]["published"]["t2v"]
    assert tuple(pub[k] for k in ("R@1", "R@5", "R@10", "MdR", "MnR")) == PUBLISHED_T2V[dataset]
    assert "NeurIPS 2024" in r["reproduces"]["paper"]
    # the header states the published R@1 and the command
    text = R.find_recipe(f"dits-{dataset}").path.read_text()
    assert f"R@1 {PUBLISHED_T2V[dataset][0]}" in text and f"diffret train --recipe dits-{dataset}" in text


def test_the_model_section_is_the_dits_familys():
    r = R.load_recipe("dits-msrvtt")
    assert set(r["model"]) == set(get_family("dits").default_config())
    assert "stage1" in r and 1 in get_family("dits").stages()
    # a DiffusionRet key in a DITS model section is an unknown key, listed with the valid ones
    problems = R.check_recipe("dits-msrvtt", ["model.rerank={topk_t2v: 8}"])
    assert any("model.rerank" in p and "pooling" in p for p in problems), problems
    assert R.check_recipe("dits-msrvtt", ["model.pooling.args.identity_init=false"]) == []


def test_dits_quickstart_mirrors_the_quickstart():
    """Same tiny encoder, temporal transformer, data and stage-1 budget as `quickstart`, so
    the README compares the two at the same cost."""
    q, d = R.load_recipe("quickstart"), R.load_recipe("dits-quickstart")
    assert R.check_recipe("dits-quickstart") == []
    assert d["model"]["family"] == "dits" and d["model"]["encoder"] == q["model"]["encoder"]
    assert d["model"]["temporal"] == q["model"]["temporal"]
    assert (d["model"]["max_words"], d["model"]["max_frames"]) == (q["model"]["max_words"], q["model"]["max_frames"])
    for key in ("epochs", "batch_size", "lr", "encoder_lr", "weight_decay", "warmup", "grad_clip"):
        assert d["stage1"][key] == q["stage1"][key], key
    for section in ("dataset", "eval", "data"):
        assert d[section] == q[section], section
    assert d["train"]["stages"] == [1] and d["train"]["seed"] == q["train"]["seed"]
    assert d["model"]["sampler"]["args"]["sample_steps"] == 10 and d["model"]["pooling"]["name"] == "xpool"
