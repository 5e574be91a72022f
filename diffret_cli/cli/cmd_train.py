"""``diffret train``: run a recipe (every stage of its family, or one with --stage)."""

from __future__ import annotations

from pathlib import Path

import click

EXAMPLES = """\b
Examples:
  diffret train --recipe quickstart
  diffret train --recipe diffusionret-msrvtt --run-dir runs/msrvtt
  diffret train --recipe diffusionret-msrvtt stage1.batch_size=64 train.seed=1
  diffret train --recipe diffusionret-msrvtt --stage 2 --run-dir runs/msrvtt
  diffret train --recipe diffusionret-msrvtt --run-dir runs/msrvtt --resume
  torchrun --nproc_per_node 8 -m diffret_cli.cli.main train --recipe diffusionret-msrvtt"""


@click.command(context_settings={"ignore_unknown_options": False}, epilog=EXAMPLES)
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
              help="Evaluate the best checkpoint on the recipe's eval targets at the end.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def train(recipe_name: str, overrides: tuple[str, ...], run_dir: Path | None, data_root: Path | None,
          stage: str, resume: bool, run_eval: bool, quiet: bool) -> None:
    """Train a recipe. OVERRIDES are key=value pairs (dotted keys into the recipe).
    """
    from diffret_cli import evaluation, training
    from diffret_cli.cli.tables import print_result, print_summary
    from diffret_cli.distributed import is_main_process
    from diffret_cli.recipes import load_recipe

    recipe = load_recipe(recipe_name, list(overrides))
    if resume and run_dir is None:
        raise click.UsageError("--resume needs --run-dir (the run to continue)")
    stages = None if stage == "both" else [int(stage)]
    if stages is None:
        stages = list(recipe["train"]["stages"])
    run_dir = training.train(recipe, run_dir=run_dir, data_root=data_root, resume=resume, stages=stages,
                             progress=not quiet)
    if not is_main_process():  # under torchrun only rank 0 reports and evaluates
        return
    click.echo(f"run directory: {run_dir}")
    if run_eval:
        results = evaluation.evaluate_run(run_dir, data_root=data_root)
        for res in results:
            print_result(res)
        print_summary(results)
