"""``diffret train``: run a recipe (both stages, or one with --stage)."""

from __future__ import annotations

import os
from pathlib import Path

import click


@click.command(context_settings={"ignore_unknown_options": False}, epilog="\b\nExamples:\n  diffret train --recipe quickstart\n  diffret train --recipe diffusionret-msrvtt --run-dir runs/msrvtt\n  diffret train --recipe diffusionret-msrvtt stage1.batch_size=64 train.seed=1\n  diffret train --recipe diffusionret-msrvtt --stage 2 --run-dir runs/msrvtt\n  diffret train --recipe diffusionret-msrvtt --run-dir runs/msrvtt --resume\n  torchrun --nproc_per_node 8 -m diffret_cli.cli.main train --recipe diffusionret-msrvtt")
@click.option("--recipe", "recipe_name", required=True, help="Recipe name (`diffret recipes list`) or a .yaml path.")
@click.argument("overrides", nargs=-1)
@click.option("--run-dir", type=click.Path(path_type=Path), default=None,
              help="Where the run lives (default: a fresh runs/<recipe>-<timestamp>).")
@click.option("--data-root", type=click.Path(path_type=Path), default=None,
              help="Prepared datasets root (default: $DIFFRET_DATA_ROOT, else the user cache).")
@click.option("--stage", type=click.Choice(["1", "2", "both"]), default="both", show_default=True,
              help="Train stage 1 (discrimination), stage 2 (generation) or both.")
@click.option("--resume", is_flag=True, help="Continue the run in --run-dir from its last checkpoint.")
@click.option("--eval/--no-eval", "run_eval", default=True, show_default=True,
              help="Evaluate the best checkpoint on the recipe's eval splits at the end.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def train(recipe_name: str, overrides: tuple[str, ...], run_dir: Path | None, data_root: Path | None,
          stage: str, resume: bool, run_eval: bool, quiet: bool) -> None:
    """Train a recipe. OVERRIDES are key=value pairs (dotted keys into the recipe).
    """
    from diffret_cli.recipes import load_recipe
    from diffret_cli.runs import new_run_dir, train as run_train

    recipe = load_recipe(recipe_name, list(overrides))
    if run_dir is None:
        if resume:
            raise click.UsageError("--resume needs --run-dir (the run to continue)")
        run_dir = new_run_dir(recipe["name"])
    stages = [1, 2] if stage == "both" else [int(stage)]
    stages = [s for s in stages if s in recipe["train"]["stages"]] or stages
    run_train(recipe, run_dir=run_dir, data_root=data_root, resume=resume, stages=stages, progress=not quiet)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 reports and evaluates
        return
    click.echo(f"run directory: {run_dir}")
    if run_eval:
        from diffret_cli.cli.cmd_eval import run_evaluations

        run_evaluations(run_dir, recipe=recipe, data_root=data_root, as_json=False)
