"""``diffret eval``: retrieval metrics of a run or checkpoint, in-domain and out-of-domain."""

from __future__ import annotations

import json
from pathlib import Path

import click

EXAMPLES = """\b
Examples:
  diffret eval runs/quickstart-20261123-101500
  diffret eval runs/msrvtt --steps 10 --topk 16
  diffret eval runs/msrvtt --qb-norm --json
  diffret eval --out-domain msrvtt:didemo
  diffret eval runs/dits-msrvtt --sweep steps=0,1,5,10,20
  diffret eval checkpoints/converted --dataset msrvtt --split test"""


@click.command("eval", epilog=EXAMPLES)
@click.argument("run_or_checkpoint", required=False, type=click.Path(path_type=Path))
@click.option("--dataset", default=None, help="Prepared dataset to evaluate on (default: the run's recipe targets).")
@click.option("--split", default=None, help="Split of --dataset (default: test).")
@click.option("--out-domain", default=None, metavar="SRC:TGT",
              help="Model trained on SRC, evaluated on TGT's test split beside SRC's own.")
@click.option("--data-root", type=click.Path(path_type=Path), default=None)
@click.option("--steps", type=click.IntRange(min=0), default=None,
              help="Sampler steps at inference (default: the recipe's eval.steps, else the model's; "
              "0 is valid only for a truncated sampler such as DITS).")
@click.option("--topk", type=click.IntRange(min=1), default=None,
              help="Candidates re-ranked per query, both directions (default: the recipe's / model's).")
@click.option("--no-rerank", is_flag=True, help="Stage-1 scores only.")
@click.option("--qb-norm", is_flag=True, help="Add QB-Norm rows (query bank: training captions).")
@click.option("--qb-bank-size", type=click.IntRange(min=1), default=None)
@click.option("--seed", type=int, default=None,
              help="Seed of the diffusion noise (default: the run's train.seed, else 0).")
@click.option("--device", default=None, help="auto, cpu or cuda[:N] (default: the recipe's train.device).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None)
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Frame-loading processes for video encoding (0: in this process).")
@click.option("--sweep", default=None, metavar="KEY=V1,V2,...",
              help="One evaluation per value of a setting (steps, topk, topk_t2v, topk_v2t, seed) or of any "
              "sampler argument; one table, a row per value.")
@click.option("--json", "as_json", is_flag=True, help="Print the result JSON to stdout instead of tables.")
def eval_cmd(run_or_checkpoint: Path | None, dataset: str | None, split: str | None, out_domain: str | None,
             data_root: Path | None, steps: int | None, topk: int | None, no_rerank: bool, qb_norm: bool,
             qb_bank_size: int | None, seed: int | None, device: str | None, batch_size: int | None,
             workers: int | None, sweep: str | None, as_json: bool) -> None:
    """Evaluate a run directory or checkpoint: R@1/5/10/50, MdR, MnR, Rsum, both directions,
    for the stage-1 scores and the diffusion re-ranked scores.

    A run is evaluated on every target of its recipe (its test split and its
    out-of-domain datasets), as at the end of training.
    """
    from diffret_cli import evaluation as ev
    from diffret_cli.cli.tables import print_result, print_summary

    targets = None
    if out_domain:
        if ":" not in out_domain:
            raise click.BadParameter("expected SRC:TGT, e.g. msrvtt:didemo", param_hint="--out-domain")
        src, tgt = out_domain.split(":", 1)
        run_or_checkpoint = run_or_checkpoint or ev.find_run_for(src)
        targets = [ev.EvalTarget(src, split or "test"), ev.EvalTarget(tgt, "test", role="out-of-domain")]
    elif run_or_checkpoint is None:
        raise click.UsageError("give RUN_OR_CHECKPOINT (or --out-domain SRC:TGT)")
    elif dataset is not None:
        targets = [ev.EvalTarget(dataset, split or "test", role=_role(run_or_checkpoint, dataset))]
    elif split is not None:
        recipe = ev.load_run_recipe(run_or_checkpoint) or {}
        if not recipe:
            raise click.UsageError("--split needs --dataset for a checkpoint outside a run directory")
        targets = [ev.EvalTarget(recipe["dataset"]["name"], split)]
    if not run_or_checkpoint.exists():
        raise click.BadParameter(f"no such run or checkpoint: {run_or_checkpoint}",
                                 param_hint="RUN_OR_CHECKPOINT")
    recipe = ev.load_run_recipe(run_or_checkpoint) or {}
    settings = ev.EvalSettings.from_recipe(recipe).with_overrides(
        steps=steps, topk_t2v=topk, topk_v2t=topk, qb_norm=qb_norm or None, qb_bank_size=qb_bank_size,
        seed=seed, device=device, batch_size=batch_size, num_workers=workers,
        rerank=False if no_rerank else None)
    if sweep:
        from diffret_cli.cli.tables import print_sweep

        key, values = ev.parse_sweep(sweep)
        swept = ev.evaluate_sweep(run_or_checkpoint, key, values, settings=settings, targets=targets,
                                  data_root=data_root)
        if as_json:
            click.echo(json.dumps([{"key": key, "value": v, "results": r} for v, r in swept], indent=2))
        else:
            print_sweep(key, swept)
        return
    results = ev.evaluate_run(run_or_checkpoint, settings=settings, targets=targets, data_root=data_root)
    if as_json:
        keyed = {f"{r['role']}:{r['dataset']}": r for r in results}
        click.echo(json.dumps(results[0] if len(results) == 1 else keyed, indent=2))
        return
    for res in results:
        print_result(res)
    print_summary(results)


def _role(run: Path, dataset: str) -> str:
    from diffret_cli.evaluation import load_run_recipe

    recipe = load_run_recipe(run) or {}
    trained_on = recipe.get("dataset", {}).get("name")
    return "out-of-domain" if trained_on and trained_on != dataset else "in-domain"
