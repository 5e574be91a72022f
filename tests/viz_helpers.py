"""Shared by tests/test_viz.py and tests/test_report.py: one tiny trained run (stage 1 and
stage 2 on a small synthetic benchmark, synthetic-shift as its out-of-domain target),
built once per test session, plus its saved evaluations."""

from __future__ import annotations

from pathlib import Path

import yaml

from train_helpers import tiny_recipe

_CACHE: dict[str, "TinyRun"] = {}


class TinyRun:
    def __init__(self, run_dir: Path, data_root: Path):
        self.run_dir, self.data_root = run_dir, data_root
        self.recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text())


def _prepare(root: Path, name: str, **sizes: int) -> None:
    """A small generated benchmark, prepared in this process (no subprocess start-up)."""
    from diffret_cli.data.prepare import prepare

    prepare(name, data_root=root, short_side=64, workers=1, plugin_options=sizes, progress=False)


def save_evaluations(run: TinyRun) -> list[Path]:
    """eval/<dataset>-test.json for the in-domain and out-of-domain test splits, with the
    metrics of the scores the figures use (the layout `diffret eval` saves)."""
    from diffret_cli.fileio import atomic_write_json
    from diffret_cli.metrics import retrieval_metrics
    from diffret_cli.viz.runview import open_run

    view = tiny_view(run)
    paths = []
    for name, split in [(view.dataset_name, "test")] + view.out_domain():
        s = view.scores(name, split)
        res = {"rows": {"stage1": retrieval_metrics(s.stage1, s.stage1.t(), s.caption_video),
                        "diffusion": retrieval_metrics(s.t2v, s.v2t, s.caption_video)},
               "num_captions": len(s.captions), "num_videos": len(s.video_ids), "dataset": name, "split": split}
        if name == view.dataset_name:  # a QB-Norm row, as `diffret eval --qb-norm` adds one
            res["rows"]["stage1+qbnorm"] = retrieval_metrics(s.stage1, None, s.caption_video)
        path = run.run_dir / "eval" / f"{name}-{split}.json"
        atomic_write_json(path, res)
        paths.append(path)
    return paths


def tiny_run(tmp_path_factory) -> TinyRun:
    """The session's tiny run (trained on first use: a few seconds on one CPU thread)."""
    if "run" not in _CACHE:
        from diffret_cli.training import train

        base = tmp_path_factory.mktemp("viz")
        data_root = base / "data"
        _prepare(data_root, "synthetic", num_train=16, num_val=8, num_test=8)
        _prepare(data_root, "synthetic-shift", num_train=4, num_val=4, num_test=6)
        recipe = tiny_recipe(epochs1=2, epochs2=1)
        recipe["eval"]["out_domain"] = ["synthetic-shift"]
        run_dir = train(recipe, run_dir=base / "run", data_root=data_root, progress=False)
        run = TinyRun(run_dir, data_root)
        save_evaluations(run)
        _CACHE["run"] = run
    return _CACHE["run"]


def tiny_view(run: TinyRun):
    """The run opened once per session (:func:`diffret_cli.viz.runview.open_run`): its
    scored splits are cached, so the figure tests share one scoring of each split."""
    if "view" not in _CACHE:
        from diffret_cli.viz.runview import open_run

        _CACHE["view"] = open_run(run.run_dir, data_root=run.data_root, device="cpu")
    return _CACHE["view"]
