"""`diffret eval` end to end on a tiny trained run, and the Python API on the same run."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from diffret_cli.cli.main import cli
from diffret_cli.training import train
from train_helpers import prepare_synthetic, tiny_recipe


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_cli")
    data_root = prepare_synthetic(root / "data", num_train=16, num_val=8, num_test=8)
    run_dir = root / "runs" / "tiny-1"
    train(tiny_recipe(), run_dir=run_dir, data_root=data_root, progress=False)
    return run_dir, data_root


def _eval(args, data_root):
    res = CliRunner().invoke(cli, ["eval", *args, "--data-root", str(data_root), "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_eval_json_rows_and_settings(trained):
    run_dir, data_root = trained
    out = _eval([str(run_dir), "--steps", "5", "--topk", "2"], data_root)
    assert set(out["rows"]) == {"stage1", "diffusion"}
    assert out["settings"]["steps"] == 5 and out["settings"]["topk_t2v"] == 2
    assert out["num_captions"] == 32 and out["num_videos"] == 8 and out["protocol"] == "multi"
    for row in out["rows"].values():
        assert row["t2v"]["queries"] == 32 and row["v2t"]["queries"] == 8
        assert 0 <= row["t2v"]["R@1"] <= row["t2v"]["R@5"] <= row["t2v"]["R@10"] <= 100
    # diffusion only adds a non-negative bonus to each query's top k (here 2): the top-k
    # set keeps its place above the rest, so R@k for k >= topk is unchanged in both
    # directions (caption groups included), while R@1 may move
    for d in ("t2v", "v2t"):
        for k in (5, 10, 50):
            assert out["rows"]["diffusion"][d][f"R@{k}"] == out["rows"]["stage1"][d][f"R@{k}"], (d, k)
    saved = json.loads((run_dir / "eval" / "synthetic-test.json").read_text())
    assert saved["rows"] == out["rows"]


def test_no_rerank_gives_stage1_only_and_the_same_stage1(trained):
    run_dir, data_root = trained
    full = _eval([str(run_dir)], data_root)
    s1 = _eval([str(run_dir), "--no-rerank"], data_root)
    assert set(s1["rows"]) == {"stage1"}
    assert s1["rows"]["stage1"] == full["rows"]["stage1"]


def test_qb_norm_rows_are_extra_and_leave_raw_rows_alone(trained):
    run_dir, data_root = trained
    raw = _eval([str(run_dir)], data_root)
    qb = _eval([str(run_dir), "--qb-norm"], data_root)
    assert set(qb["rows"]) == {"stage1", "diffusion", "stage1+qbnorm", "diffusion+qbnorm"}
    assert qb["rows"]["stage1"] == raw["rows"]["stage1"]
    assert qb["rows"]["diffusion"] == raw["rows"]["diffusion"]
    assert set(qb["rows"]["stage1+qbnorm"]) == {"t2v"}  # the bank holds captions: t2v only


def test_out_domain_with_and_without_a_run(trained, monkeypatch):
    run_dir, data_root = trained
    both = _eval([str(run_dir), "--out-domain", "synthetic:synthetic-shift", "--no-rerank"], data_root)
    assert set(both) == {"in-domain:synthetic", "out-of-domain:synthetic-shift"}
    assert both["out-of-domain:synthetic-shift"]["split"] == "test"
    # without RUN, the newest run under ./runs trained on SRC is used
    monkeypatch.chdir(run_dir.parent.parent)
    found = _eval(["--out-domain", "synthetic:synthetic-shift", "--no-rerank"], data_root)
    assert found["in-domain:synthetic"]["rows"] == both["in-domain:synthetic"]["rows"]
    assert found["in-domain:synthetic"]["checkpoint"].endswith("checkpoints/best")


def test_out_domain_without_any_run_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(cli, ["eval", "--out-domain", "msrvtt:didemo"])
    assert res.exit_code != 0
    assert "no finished run trained on 'msrvtt'" in str(res.exception) or "msrvtt" in res.output


def test_python_api_matches_the_evaluation(trained):
    from diffret_cli import api
    from diffret_cli.data.manifest import PreparedDataset
    from diffret_cli.evaluation import EvalSettings, evaluate_split

    run_dir, data_root = trained
    model = api.load(run_dir)
    split = PreparedDataset.open(data_root, "synthetic").split("test")
    captions = [c for v in split.videos for c in v.captions]
    texts = api.encode_texts(model, captions)
    videos = api.encode_videos(model, [split.frames(v.video_id)[0] for v in split.videos])
    scores = api.score(model, texts, videos)
    assert scores.shape == (32, 8) and torch.isfinite(scores).all()
    t2v, v2t = api.rerank(model, scores, texts, videos, steps=5, topk=2)
    assert t2v.shape == (32, 8) and v2t.shape == (8, 32)
    # the bonus is non-negative and lands only on each query's top 2
    bonus = t2v - scores
    assert (bonus >= 0).all() and ((bonus > 0).sum(dim=1) <= 2).all()
    # the API's stage-1 scores give the CLI's stage-1 metrics
    from diffret_cli.metrics import retrieval_metrics

    owner = np.repeat(np.arange(8), [len(v.captions) for v in split.videos])
    ev = evaluate_split(model, split, EvalSettings(device="cpu", rerank=False))
    assert retrieval_metrics(scores, scores.t(), owner) == ev["rows"]["stage1"]


def test_eval_of_a_missing_checkpoint_names_the_fix(tmp_path):
    res = CliRunner().invoke(cli, ["eval", str(tmp_path / "nope"), "--dataset", "synthetic"])
    assert res.exit_code == 2
    assert "no such run or checkpoint" in res.output and str(tmp_path / "nope") in res.output
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(cli, ["eval", str(tmp_path / "empty"), "--dataset", "synthetic"])
    assert res.exit_code != 0
    assert "no diffret checkpoint" in str(res.exception)
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_eval_reproduces_the_end_of_training_table(trained, capsys):
    """Same checkpoint, same noise seed (the run's train.seed): the same numbers."""
    from diffret_cli.evaluation import evaluate_run

    run_dir, data_root = trained
    recipe = tiny_recipe()
    recipe["train"]["seed"] = 7  # the end-of-training evaluation draws its noise from it
    (run_dir / "recipe.yaml").write_text(__import__("yaml").safe_dump(recipe))
    evaluate_run(run_dir, data_root=data_root)  # what `diffret train` calls at the end
    at_train_end = json.loads((run_dir / "eval" / "synthetic-test.json").read_text())
    again = _eval([str(run_dir)], data_root)
    assert again["settings"]["seed"] == 7
    assert again["rows"] == at_train_end["rows"]
    other = _eval([str(run_dir), "--seed", "8"], data_root)
    assert other["rows"]["stage1"] == at_train_end["rows"]["stage1"]  # the seed only moves the noise


def test_the_seed_moves_the_diffusion_noise_and_only_it(trained):
    """Same seed: the same generated samples; another seed: other samples (x_T differs)."""
    from diffret_cli.checkpoint import load_model
    from diffret_cli.data.manifest import PreparedDataset
    from diffret_cli.evaluation import EvalSettings, encode_split, evaluate_split

    run_dir, data_root = trained
    model = load_model(run_dir)
    split = PreparedDataset.open(data_root, "synthetic").split("test")
    encoded = encode_split(model, split, EvalSettings(device="cpu"))

    def samples(seed):
        rec: dict = {}
        evaluate_split(model, split, EvalSettings(device="cpu", seed=seed, steps=3), encoded=encoded, record=rec)
        return torch.cat([c["sample"] for c in rec["t2v"] + rec["v2t"]])

    a, again, b = samples(7), samples(7), samples(8)
    assert torch.equal(a, again)
    assert a.shape == b.shape and (a - b).abs().max() > 1e-3


def test_sweep_one_row_per_value_and_sampler_arguments(trained):
    run_dir, data_root = trained
    swept = _eval([str(run_dir), "--sweep", "steps=1,3", "--no-rerank"], data_root)
    assert [(s["key"], s["value"]) for s in swept] == [("steps", 1), ("steps", 3)]
    assert [s["results"][0]["settings"]["steps"] for s in swept] == [1, 3]
    # a sampler argument: DDIM's eta; stage 1 never moves, the diffusion rows may
    swept = _eval([str(run_dir), "--sweep", "eta=0,1.0", "--steps", "4"], data_root)
    a, b = (s["results"][0] for s in swept)
    assert (a["settings"]["sampler_args"], b["settings"]["sampler_args"]) == ({"eta": 0}, {"eta": 1.0})
    assert a["rows"]["stage1"] == b["rows"]["stage1"]
    # the model is left as it was
    from diffret_cli import api

    assert api.load(run_dir).config["sampler"]["args"] == {}
    res = CliRunner().invoke(cli, ["eval", str(run_dir), "--data-root", str(data_root), "--sweep", "nonsense=1"])
    assert res.exit_code != 0 and "rejects the arguments" in str(res.exception) + res.output


# ------------------------------------------------------------- bad input, through the one handler
def _main(argv, capsys) -> tuple[int, str, str]:
    from diffret_cli.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def test_one_sampler_step_is_valid(trained):
    run_dir, data_root = trained
    out = _eval([str(run_dir), "--steps", "1", "--topk", "2"], data_root)
    assert out["settings"]["steps"] == 1
    for d in ("t2v", "v2t"):
        assert out["rows"]["diffusion"][d]["R@5"] == out["rows"]["stage1"][d]["R@5"]


def test_steps_outside_the_schedule_fail_before_any_encoding(trained, capsys, monkeypatch):
    import diffret_cli.evaluation as ev

    run_dir, data_root = trained

    def no_encoding(*a, **k):
        raise AssertionError("encoded the split before checking --steps")

    monkeypatch.setattr(ev, "encode_split", no_encoding)
    code, _, err = _main(["eval", str(run_dir), "--data-root", str(data_root), "--steps", "1000"], capsys)
    assert code == 2, err
    assert "sample_steps=1000 is outside the allowed range 1..10" in err and "--steps between 1 and 10" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("args, expect", [(["--steps", "-3"], "'--steps': -3 is not in the range x>=0"),
                                          (["--topk", "0"], "'--topk': 0 is not in the range x>=1"),
                                          (["--batch-size", "0"], "'--batch-size': 0 is not in the range x>=1")])
def test_out_of_range_options_name_the_range(trained, capsys, args, expect):
    run_dir, data_root = trained
    code, _, err = _main(["eval", str(run_dir), "--data-root", str(data_root), *args], capsys)
    assert code == 2 and expect in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_a_device_this_machine_lacks_is_a_clear_error(trained, capsys):
    run_dir, data_root = trained
    code, _, err = _main(["eval", str(run_dir), "--data-root", str(data_root), "--device", "cuda"], capsys)
    assert code == 2 and "this machine has no usable CUDA GPU" in err and "--device cpu" in err
    code, _, err = _main(["eval", str(run_dir), "--data-root", str(data_root), "--device", "mps"], capsys)
    assert code == 2 and "float64" in err


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_a_damaged_checkpoint_names_the_file(trained, tmp_path, capsys, damage):
    run_dir, data_root = trained
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    f = copy / "checkpoints" / "best" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:1000] if damage == "truncated" else b"")
    code, _, err = _main(["eval", str(copy), "--data-root", str(data_root)], capsys)
    assert code == 2 and str(f) in err and ("empty" if damage == "empty" else "damaged") in err, err
    assert "Traceback" not in err


def test_a_mistyped_run_says_no_such_run(tmp_path, capsys):
    code, _, err = _main(["eval", str(tmp_path / "runs" / "quickstrat")], capsys)
    assert code == 2 and "no such run or checkpoint" in err and "quickstrat" in err


def test_eval_of_a_run_prints_every_target_with_its_role(trained, tmp_path):
    """`diffret eval RUN` evaluates what the end of training did: the recipe's splits and
    its out-of-domain datasets, each table labelled; --dataset of another dataset is
    labelled out-of-domain."""
    import yaml

    run_dir, data_root = trained
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    recipe = tiny_recipe()
    recipe["eval"]["out_domain"] = ["synthetic-shift"]
    (copy / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    res = CliRunner().invoke(cli, ["eval", str(copy), "--data-root", str(data_root), "--no-rerank"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "in-domain: synthetic test" in res.output and "out-of-domain: synthetic-shift test" in res.output
    res = CliRunner().invoke(cli, ["eval", str(copy), "--data-root", str(data_root), "--no-rerank",
                                   "--dataset", "synthetic-shift"], catch_exceptions=False)
    assert res.exit_code == 0 and "out-of-domain: synthetic-shift test" in res.output
    assert "in-domain" not in res.output
