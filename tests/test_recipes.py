"""Recipes: discovery over entry points, resolution, overrides, validation, CLI."""

from __future__ import annotations

import copy
import textwrap
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from diffret_cli import recipes as R
from diffret_cli.cli.cmd_recipes import recipes as recipes_cli
from diffret_cli.errors import ConfigError
from diffret_cli.registry import registry

BUILTIN = ["diffusionret-activitynet", "diffusionret-didemo", "diffusionret-lsmdc",
           "diffusionret-msrvtt", "diffusionret-msvd", "dits-didemo", "dits-lsmdc", "dits-msrvtt",
           "dits-quickstart", "quickstart"]


@pytest.fixture
def source(tmp_path):
    """Register a folder as an extra in-process recipe source; unregister afterwards."""
    added: list[str] = []

    def add(name: str, files: dict[str, str]) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        for fname, text in files.items():
            (folder / fname).write_text(textwrap.dedent(text))
        registry().register("recipes", name, folder)
        added.append(name)
        return folder

    yield add
    for name in added:
        registry().unregister("recipes", name)


MINI = """\
    name: {name}
    description: a small test recipe
    dataset: {{name: synthetic, options: {{num_train: 8}}}}
    stage1: {{batch_size: 8, lr: 1e-3}}
    stage2: {{batch_size: 8, num_candidates: 4}}
    """


# ------------------------------------------------------------------------- built-ins
def test_builtin_recipes_are_listed_and_valid():
    infos = R.list_recipes()
    assert [i.name for i in infos] == BUILTIN
    assert {i.source.split(" ")[0] for i in infos} == {"builtin"}
    assert all(i.description for i in infos)
    for name in BUILTIN:
        assert R.check_recipe(name) == [], name


def test_paper_settings_and_published_numbers():
    msrvtt = R.load_recipe("diffusionret-msrvtt")
    assert msrvtt["dataset"] == {"name": "msrvtt", "options": {"train_list": "9k"}, "train_split": "train",
                                 "val_split": "val", "test_split": "test"}
    assert (msrvtt["model"]["max_words"], msrvtt["model"]["max_frames"]) == (32, 12)
    assert msrvtt["model"]["encoder"]["args"] == {"model": "ViT-B-32-quickgelu", "pretrained": "openai"}
    assert msrvtt["model"]["rerank"]["topk_t2v"] == 32 and msrvtt["model"]["schedule"]["args"]["num_steps"] == 50
    s1, s2 = msrvtt["stage1"], msrvtt["stage2"]
    assert (s1["batch_size"], s1["lr"], s1["encoder_lr"], s1["epochs"], s1["weight_decay"]) == (128, 1e-4, 1e-7, 5, 0.2)
    assert (s2["num_candidates"], s2["loss"], s2["grad_clip"], s2["warmup"]) == (128, "kl", 1.0, 0.1)
    pub = msrvtt["reproduces"]["published"]
    assert pub["t2v"] == {"R@1": 49.0, "R@5": 75.2, "R@10": 82.7, "MdR": 2, "MnR": 12.1}
    assert pub["v2t"]["R@1"] == 47.7 and pub["out_domain_t2v"]["didemo"]["R@1"] == 33.2
    expected_r1 = {"msvd": 46.6, "lsmdc": 24.4, "activitynet": 45.8, "didemo": 46.7}
    for ds, r1 in expected_r1.items():
        r = R.load_recipe(f"diffusionret-{ds}")
        assert r["dataset"]["name"] == ds
        assert r["reproduces"]["published"]["t2v"]["R@1"] == r1
        long_video = ds in ("activitynet", "didemo")
        assert (r["model"]["max_words"], r["model"]["max_frames"]) == ((64, 64) if long_video else (32, 12))
    # val_1 is the test set; model selection uses training videos held out of training
    assert R.load_recipe("diffusionret-activitynet")["dataset"]["val_split"] == "val"


def test_quickstart_is_the_tiny_from_scratch_model():
    from diffret_plugins.encoders.open_clip_encoder import tiny_config

    q = R.load_recipe("quickstart")
    enc = q["model"]["encoder"]["args"]
    assert enc["model"] == "custom" and enc["pretrained"] is None and enc["tokenizer"] == "words"
    assert enc["model_config"] == tiny_config()
    assert q["model"]["temporal"]["layers"] == 2 and q["model"]["max_frames"] == 8
    assert (q["stage1"]["lr"], q["stage1"]["encoder_lr"], q["stage1"]["batch_size"]) == (1e-3, 1e-3, 64)
    assert q["stage2"]["num_candidates"] == 16 and q["model"]["rerank"]["topk_t2v"] == 8
    assert q["data"]["short_side"] == 64
    assert q["eval"]["out_domain"] == [{"name": "synthetic-shift", "options": {}, "split": "test"}]


def test_model_defaults_match_the_model():
    from diffret_cli.model.diffusionret import DEFAULT_CONFIG

    assert R.DEFAULTS["model"] == DEFAULT_CONFIG
    # every leaf of DEFAULTS has a type, and every typed path exists in DEFAULTS
    def leaves(d, prefix=""):
        for k, v in d.items():
            p = f"{prefix}{k}"
            if isinstance(v, dict) and p not in R.FIELD_TYPES:
                yield from leaves(v, p + ".")
            else:
                yield p
    assert sorted(leaves(R.DEFAULTS)) == sorted(R.FIELD_TYPES)


# -------------------------------------------------------------------------- overrides
def test_overrides_parse_types():
    base = R.load_recipe("diffusionret-msrvtt")
    r = R.apply_overrides(base, ["stage1.lr=3e-5", "train.seed=1", "model.rerank.topk_t2v=16",
                                 "dataset.options.train_list=7k", "train.stages=[2]", "train.ema=0.999",
                                 "stage1.freeze_encoder=true", "eval.steps=null",
                                 "model.encoder.args.model_config.vision_cfg.layers=1"])
    assert r["stage1"]["lr"] == 3e-5 and isinstance(r["stage1"]["lr"], float)
    assert r["train"]["seed"] == 1 and isinstance(r["train"]["seed"], int)
    assert r["model"]["rerank"]["topk_t2v"] == 16
    assert r["dataset"]["options"]["train_list"] == "7k"
    assert r["train"]["stages"] == [2] and r["train"]["ema"] == 0.999
    assert r["stage1"]["freeze_encoder"] is True and r["eval"]["steps"] is None
    assert r["model"]["encoder"]["args"]["model_config"] == {"vision_cfg": {"layers": 1}}  # free-form
    assert base["stage1"]["lr"] == 1e-4  # the input is not modified

    loaded = R.load_recipe("diffusionret-msrvtt", ["stage1.lr=3e-5", "dataset.options.train_list=7k",
                                                   "stage2.loss_temp=50"])
    assert loaded["stage1"]["lr"] == 3e-5 and loaded["dataset"]["options"] == {"train_list": "7k"}
    assert loaded["stage2"]["loss_temp"] == 50.0 and isinstance(loaded["stage2"]["loss_temp"], float)


def test_unknown_override_key_lists_valid_keys():
    base = R.load_recipe("quickstart")
    with pytest.raises(ConfigError) as exc:
        R.apply_overrides(base, ["stage1.lrr=1e-3"])
    assert "'stage1.lrr'" in exc.value.message
    assert "did you mean 'lr'" in exc.value.hint
    assert "lr, encoder_lr, weight_decay, warmup, grad_clip, betas, eps, freeze_encoder" in exc.value.hint
    with pytest.raises(ConfigError) as exc:
        R.apply_overrides(base, ["stag1.lr=1"])
    assert "at the top level" in exc.value.hint and "stage1" in exc.value.hint
    with pytest.raises(ConfigError, match="'stage1.lr' is float"):
        R.apply_overrides(base, ["stage1.lr.x=1"])
    with pytest.raises(ConfigError, match="not key=value"):
        R.apply_overrides(base, ["stage1.lr"])
    with pytest.raises(ConfigError, match="unknown recipe key 'model.denoisers.t3v'"):
        R.apply_overrides(base, ["model.denoisers.t3v.args.temp=2"])
    # a denoiser's args are free-form
    assert R.apply_overrides(base, ["model.denoisers.t2v.args.temp=2"])["model"]["denoisers"]["t2v"]["args"] == {
        "temp": 2}


# ------------------------------------------------------------------------- validation
def test_validate_reports_every_problem_at_once():
    r = copy.deepcopy(R.load_recipe("diffusionret-msrvtt"))
    r["stage2"]["num_candidates"] = 256
    r["model"]["rerank"]["topk_t2v"] = 0
    r["stage1"]["epochs"] = -1
    r["stage2"]["loss"] = "l2"
    r["stage1"]["foo"] = 1
    r["train"]["seed"] = "abc"
    r["model"]["sampler"]["name"] = "dddim"
    r["model"]["encoder"]["args"]["pretrainde"] = "openai"
    r["dataset"]["test_split"] = "tst"
    r["eval"]["out_domain"] = ["didemo", {"name": "nope"}]
    problems = R.validate_recipe(r)
    text = "\n".join(problems)
    expected = [
        "stage2.num_candidates: 256 is larger than stage2.batch_size 128",
        "model.rerank.topk_t2v: 0 is not allowed",
        "stage1.epochs: -1 is not allowed",
        "stage2.loss: 'l2' is not allowed; expected one of kl, mse",
        "stage1.foo: unknown key",
        "train.seed: expected int, got str 'abc'",
        "model.sampler.name: no sampler plugin named 'dddim' (did you mean 'ddim'?)",
        "model.encoder.args.pretrainde: encoder 'open_clip' takes no argument 'pretrainde' "
        "(did you mean 'pretrained'?)",
        "dataset.test_split: dataset 'msrvtt' has no split 'tst'",
        "eval.out_domain[1].name: no dataset plugin named 'nope'",
    ]
    for e in expected:
        assert e in text, e
    assert len(problems) == len(expected)


def test_validate_types_and_missing_sections():
    r = copy.deepcopy(R.DEFAULTS)
    r["name"] = "x"
    problems = R.validate_recipe(r)
    assert problems == ["dataset.name: required, expected str (a dataset plugin: "
                        "`diffret plugins list --kind datasets`)"]
    del r["data"]
    r["stage1"] = 5
    r["train"]["stages"] = [2, 1]
    r["stage1"] = 5
    problems = R.validate_recipe(r)
    assert "stage1: expected a mapping, got int 5" in problems
    assert "data: missing" in problems
    assert "train.stages: [2, 1] is not allowed; expected [1], [2] or [1, 2]" in problems


def test_load_recipe_raises_with_all_problems(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("dataset: {name: synthetic}\nstage2: {batch_size: 8, num_candidates: 9}\n"
                    "eval: {qb_norm_k: 0}\n")
    with pytest.raises(ConfigError) as exc:
        R.load_recipe(path)
    msg = exc.value.message
    assert str(path) in msg and "2 problem(s)" in msg
    assert "stage2.num_candidates: 9 is larger than stage2.batch_size 8" in msg and "eval.qb_norm_k" in msg
    # an override can fix it
    ok = R.load_recipe(path, ["stage2.num_candidates=8", "eval.qb_norm_k=1"])
    assert ok["name"] == "bad" and ok["stage2"]["num_candidates"] == 8


def test_yaml_errors_name_the_line(tmp_path):
    dup = tmp_path / "dup.yaml"
    dup.write_text("dataset: {name: synthetic}\nstage1:\n  lr: 1e-3\n  lr: 2e-3\n")
    with pytest.raises(ConfigError, match=r"dup.yaml, line 4.*duplicate key 'lr'"):
        R.load_recipe(dup)
    broken = tmp_path / "broken.yaml"
    broken.write_text("dataset:\n  name: [synthetic\nstage1: {}\n")
    with pytest.raises(ConfigError, match=r"broken.yaml, line \d+.*invalid YAML"):
        R.load_recipe(broken)
    assert R.check_recipe(broken)[0].startswith(str(broken))
    with pytest.raises(ConfigError, match="recipe file not found"):
        R.load_recipe(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="no recipe named 'quickstrat'") as exc:
        R.load_recipe("quickstrat")
    assert "did you mean 'quickstart'" in exc.value.hint


# ----------------------------------------------------------------- sources and files
def test_recipe_file_path_and_dump_round_trip(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(textwrap.dedent(MINI.format(name="my-run")))
    r = R.load_recipe(str(path))
    assert r["name"] == "my-run" and r["stage1"]["lr"] == 1e-3 and r["stage1"]["encoder_lr"] == 1e-7
    assert r["dataset"]["options"] == {"num_train": 8}
    again = tmp_path / "again.yaml"
    again.write_text(R.dump_recipe(r))
    assert R.load_recipe(again) == r
    assert "betas: [0.9, 0.98]" in R.dump_recipe(r)
    for name in BUILTIN:  # every built-in survives dump -> load unchanged
        resolved = R.load_recipe(name)
        copy_path = tmp_path / f"copy-{name}.yaml"
        copy_path.write_text(R.dump_recipe(resolved))
        assert R.load_recipe(copy_path) == resolved, name


def test_third_source_in_process(source, tmp_path, monkeypatch):
    folder = source("extra-src", {"tiny-extra.yaml": MINI.format(name="tiny-extra"), "notes.txt": "ignored"})
    infos = {i.name: i for i in R.list_recipes()}
    assert set(infos) == set(BUILTIN) | {"tiny-extra"}
    assert infos["tiny-extra"].source == "extra-src (in-process)"
    assert infos["tiny-extra"].description == "a small test recipe"
    assert Path(str(infos["tiny-extra"].path)) == folder / "tiny-extra.yaml"
    assert R.load_recipe("tiny-extra")["stage2"]["num_candidates"] == 4

    # a Python package as the source, as an entry point would name it
    pkg = tmp_path / "site" / "my_recipes_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "pkg-recipe.yaml").write_text(textwrap.dedent(MINI.format(name="pkg-recipe")))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    import importlib

    module = importlib.import_module("my_recipes_pkg")
    registry().register("recipes", "pkg-src", module)
    try:
        assert R.load_recipe("pkg-recipe")["name"] == "pkg-recipe"
        assert {i.name: i.source for i in R.list_recipes()}["pkg-recipe"] == "pkg-src (in-process)"
    finally:
        registry().unregister("recipes", "pkg-src")


def test_name_inside_a_source_must_match_the_file(source):
    source("mismatch-src", {"alpha.yaml": MINI.format(name="beta")})
    assert R.check_recipe("alpha") == ["name: 'beta' differs from the file name 'alpha'; they must match"]


def test_duplicate_name_names_both_sources(source):
    source("dup-src", {"quickstart.yaml": MINI.format(name="quickstart")})
    with pytest.raises(ConfigError) as exc:
        R.list_recipes()
    msg = exc.value.message
    assert "recipe 'quickstart' is defined twice" in msg
    assert "builtin (diffret" in msg and "dup-src (in-process)" in msg
    assert "DIFFRET_BLOCK_PLUGINS=recipes:" in exc.value.hint
    with pytest.raises(ConfigError, match="defined twice"):
        R.load_recipe("quickstart")
    assert R.load_recipe("diffusionret-msvd")["dataset"]["name"] == "msvd"  # other names still load

    result = CliRunner().invoke(recipes_cli, ["validate"])
    assert result.exit_code == 1
    assert "FAIL  recipe 'quickstart' is defined twice" in result.output
    assert "ok    diffusionret-msrvtt" in result.output


# ---------------------------------------------------------------------------------- CLI
def test_cli_list_show_validate(tmp_path):
    runner = CliRunner()
    result = runner.invoke(recipes_cli, ["list"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for name in BUILTIN:
        assert name in result.output
    assert "builtin (diffret" in result.output

    result = runner.invoke(recipes_cli, ["show", "quickstart", "stage1.epochs=2", "train.seed=7"])
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.output)
    assert shown["stage1"]["epochs"] == 2 and shown["train"]["seed"] == 7 and shown["name"] == "quickstart"
    assert shown == R.load_recipe("quickstart", ["stage1.epochs=2", "train.seed=7"])

    result = runner.invoke(recipes_cli, ["validate"])
    assert result.exit_code == 0, result.output
    assert result.output.count("ok    ") == len(BUILTIN) and f"{len(BUILTIN)} recipe(s) valid" in result.output

    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: {name: nosuch}\nstage2: {loss: huber}\n")
    result = runner.invoke(recipes_cli, ["validate", "quickstart", str(bad)])
    assert result.exit_code == 1
    assert "ok    quickstart" in result.output and f"FAIL  {bad}: 2 problem(s)" in result.output
    assert "dataset.name: no dataset plugin named 'nosuch'" in result.output
    assert "stage2.loss: 'huber' is not allowed" in result.output

    assert "Examples:" in runner.invoke(recipes_cli, ["show", "--help"]).output


def test_cli_errors_through_main(capsys):
    from diffret_cli.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["recipes", "show", "quickstart", "stage1.lrr=1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unknown recipe key 'stage1.lrr'" in err and "did you mean 'lr'" in err
