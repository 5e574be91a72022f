"""``diffret eval``: retrieval metrics of a run or checkpoint, in-domain and out-of-domain."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import yaml

from diffret_cli.errors import ConfigError

METRIC_COLUMNS = ("R@1", "R@5", "R@10", "R@50", "MdR", "MnR", "Rsum")


def _find_run_for(dataset: str, base: Path = Path("runs")) -> Path:
    """The most recent run under ``base`` trained on ``dataset`` that has a best checkpoint."""
    candidates = []
    for recipe_file in base.glob("*/recipe.yaml"):
        try:
            r = yaml.safe_load(recipe_file.read_text())
        except yaml.YAMLError:
            continue
        if r.get("dataset", {}).get("name") == dataset and (recipe_file.parent / "checkpoints" / "best").is_dir():
            candidates.append(recipe_file.parent)
    if not candidates:
        raise ConfigError(f"no finished run trained on {dataset!r} under {base}/",
                          hint=f"train one (`diffret train --recipe diffusionret-{dataset}`) or pass RUN_OR_CHECKPOINT")
    return max(candidates, key=lambda p: p.stat().st_mtime)


def _print_table(title: str, result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    missing = result.get("num_videos_unavailable", 0)
    if missing:
        Console(stderr=True).print(
            f"[yellow]warning[/yellow]: {missing} video(s) of this split were not prepared (see `diffret data "
            f"info {result.get('dataset', 'NAME')}`); they are left out, so these numbers are not "
            "comparable with the full benchmark")
    table = Table(title=title)
    table.add_column("scores", no_wrap=True)
    table.add_column("direction")
    for c in METRIC_COLUMNS:
        table.add_column(c, justify="right")
    for row, r in result["rows"].items():
        for direction in ("t2v", "v2t"):
            if direction not in r:
                continue
            m = r[direction]
            table.add_row(row, direction, *[f"{m[c]:.1f}" for c in METRIC_COLUMNS])
    Console().print(table)
    tied = {row: r["t2v"].get("tied", 0) for row, r in result["rows"].items()}
    if any(tied.values()):
        Console(stderr=True).print(
            "[yellow]note[/yellow]: text-to-video queries whose ground truth ties another video's exact "
            f"score (ranked best of the tie): {', '.join(f'{k} {v}' for k, v in tied.items() if v)}")


def evaluate_one(model, *, dataset: str, split: str, data_root, steps, topk, qb_norm: bool, seed: int,
                 device: str, no_rerank: bool, batch_size: int, qb_bank_size: int,
                 data_cfg: dict | None = None, options: dict | None = None,
                 num_workers: int = 0) -> dict[str, Any]:
    from diffret_cli.evaluate import caption_bank, evaluate_split
    from diffret_cli.features import resolve_device
    from diffret_cli.runs import ensure_prepared

    data = ensure_prepared(dataset, data_root, data_cfg=data_cfg, options=options)
    if split not in data.splits:
        raise ConfigError(f"{dataset} has no prepared split {split!r}", hint=f"available: {', '.join(data.splits)}")
    dev = resolve_device(device)
    model = model.to(dev)
    bank = None
    if qb_norm:
        bank_split = "train" if "train" in data.splits else None
        if bank_split is None:
            raise ConfigError(f"QB-Norm needs {dataset}'s training captions as its query bank",
                              hint=f"prepare the train split: `diffret data prepare {dataset}`")
        bank = caption_bank(data.split(bank_split), limit=qb_bank_size, seed=seed)
    res = evaluate_split(model, data.split(split), device=dev, batch_size=batch_size,
                         rerank_scores=not no_rerank, steps=steps, topk_t2v=topk, topk_v2t=topk,
                         seed=seed, qb_bank=bank, num_workers=num_workers)
    res.update({"dataset": dataset, "split": split, "protocol": data.protocol})
    return res


def run_evaluations(run_dir: Path, *, recipe: dict, data_root, as_json: bool) -> None:
    """End-of-training evaluation on the recipe's eval splits (and its out-of-domain targets)."""
    from diffret_cli.checkpoint import load_model
    from diffret_cli.runs import save_eval

    model = load_model(run_dir)
    ev = recipe["eval"]
    targets = [(recipe["dataset"]["name"], s, recipe["dataset"].get("options")) for s in ev["splits"]]
    for d in ev.get("out_domain") or []:
        d = {"name": d} if isinstance(d, str) else d
        targets.append((d["name"], d.get("split", "test"), d.get("options")))
    for dataset, split, options in targets:
        res = evaluate_one(model, dataset=dataset, split=split, data_root=data_root, steps=ev.get("steps"),
                           topk=ev.get("topk_t2v"), qb_norm=bool(ev.get("qb_norm")), seed=recipe["train"]["seed"],
                           device=recipe["train"]["device"], no_rerank=False, batch_size=ev["batch_size"],
                           qb_bank_size=5000, data_cfg=recipe.get("data"), options=options,
                           num_workers=recipe["train"]["num_workers"])
        save_eval(run_dir, f"{dataset}-{split}", res)
        if as_json:
            click.echo(json.dumps(res, indent=2))
        else:
            _print_table(f"{dataset} {split} ({res['num_captions']} captions, {res['num_videos']} videos)", res)


@click.command("eval", epilog="\b\nExamples:\n  diffret eval runs/quickstart-20261123-101500\n  diffret eval runs/msrvtt --dataset msrvtt --steps 10 --topk 16\n  diffret eval runs/msrvtt --dataset msrvtt --qb-norm --json\n  diffret eval --out-domain msrvtt:didemo\n  diffret eval checkpoints/converted --dataset msrvtt --split test")
@click.argument("run_or_checkpoint", required=False, type=click.Path(path_type=Path))
@click.option("--dataset", default=None, help="Prepared dataset to evaluate on (default: the run's).")
@click.option("--split", default="test", show_default=True)
@click.option("--out-domain", default=None, metavar="SRC:TGT",
              help="Model trained on SRC, evaluated on TGT's test split beside SRC's own.")
@click.option("--data-root", type=click.Path(path_type=Path), default=None)
@click.option("--steps", type=int, default=None, help="DDIM steps at inference (default: the training steps).")
@click.option("--topk", type=int, default=None, help="Candidates re-ranked per query (default: the model's).")
@click.option("--no-rerank", is_flag=True, help="Stage-1 scores only.")
@click.option("--qb-norm", is_flag=True, help="Add QB-Norm rows (query bank: training captions).")
@click.option("--qb-bank-size", type=int, default=5000, show_default=True)
@click.option("--seed", type=int, default=None,
              help="Seed of the diffusion noise (default: the run's train.seed, else 0).")
@click.option("--device", default="auto", show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--workers", type=int, default=0, show_default=True,
              help="Frame-loading processes for video encoding (0: in this process).")
@click.option("--json", "as_json", is_flag=True, help="Print the result JSON to stdout instead of tables.")
def eval_cmd(run_or_checkpoint: Path | None, dataset: str | None, split: str, out_domain: str | None,
             data_root: Path | None, steps: int | None, topk: int | None, no_rerank: bool, qb_norm: bool,
             qb_bank_size: int, seed: int | None, device: str, batch_size: int, workers: int, as_json: bool) -> None:
    """Evaluate a run directory or checkpoint: R@1/5/10/50, MdR, MnR, Rsum, both directions,
    for the stage-1 scores and the diffusion re-ranked scores.
    """
    from diffret_cli.checkpoint import load_model, resolve_checkpoint_dir
    from diffret_cli.runs import save_eval

    pairs: list[tuple[str, str, str]] = []  # (label, dataset, split)
    if out_domain:
        if ":" not in out_domain:
            raise click.BadParameter("expected SRC:TGT, e.g. msrvtt:didemo", param_hint="--out-domain")
        src, tgt = out_domain.split(":", 1)
        run = run_or_checkpoint or _find_run_for(src)
        pairs = [("in-domain", src, split), ("out-of-domain", tgt, "test")]
    else:
        if run_or_checkpoint is None:
            raise click.UsageError("give RUN_OR_CHECKPOINT (or --out-domain SRC:TGT)")
        run = run_or_checkpoint
        if dataset is None:
            recipe_file = Path(run) / "recipe.yaml"
            if not recipe_file.is_file():
                raise click.UsageError("--dataset is required for a checkpoint outside a run directory")
            dataset = yaml.safe_load(recipe_file.read_text())["dataset"]["name"]
        pairs = [("in-domain", dataset, split)]
    ckpt = resolve_checkpoint_dir(run)
    model = load_model(ckpt)
    out_dir = Path(run) if (Path(run) / "recipe.yaml").is_file() else ckpt
    run_recipe = (yaml.safe_load((Path(run) / "recipe.yaml").read_text())
                  if (Path(run) / "recipe.yaml").is_file() else {})
    data_cfg = run_recipe.get("data")
    if seed is None:  # the same noise as the evaluation at the end of training
        seed = run_recipe.get("train", {}).get("seed", 0)
    results = {}
    for label, ds, sp in pairs:
        res = evaluate_one(model, dataset=ds, split=sp, data_root=data_root, steps=steps, topk=topk,
                           qb_norm=qb_norm, seed=seed, device=device, no_rerank=no_rerank,
                           batch_size=batch_size, qb_bank_size=qb_bank_size, data_cfg=data_cfg,
                           num_workers=workers)
        res["checkpoint"] = str(ckpt)
        res["role"] = label
        save_eval(out_dir, f"{ds}-{sp}", res)
        results[f"{label}:{ds}"] = res
    if as_json:
        click.echo(json.dumps(results if len(results) > 1 else next(iter(results.values())), indent=2))
        return
    for key, res in results.items():
        _print_table(f"{key} {res['split']} ({res['num_captions']} captions, {res['num_videos']} videos)", res)
    if out_domain:
        src_r, tgt_r = (results[k]["rows"] for k in results)
        best = "diffusion" if "diffusion" in src_r else "stage1"
        click.echo(f"text-to-video R@1 ({best}): in-domain {src_r[best]['t2v']['R@1']:.1f}, "
                   f"out-of-domain {tgt_r[best]['t2v']['R@1']:.1f}")
