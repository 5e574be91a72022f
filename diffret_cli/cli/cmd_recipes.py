"""``diffret recipes``: list, show and validate recipes (thin layer over diffret_cli.recipes)."""

from __future__ import annotations

import sys

import click

_EXAMPLES = """\b
Examples:
  diffret recipes list
  diffret recipes show quickstart
  diffret recipes show diffusionret-msrvtt stage1.lr=3e-5 dataset.options.train_list=7k
  diffret recipes validate
  diffret recipes validate quickstart ./my-recipe.yaml
"""


@click.group(epilog=_EXAMPLES)
def recipes() -> None:
    """List, show and validate recipes.

    A recipe is a YAML file holding a whole setup (dataset, model, both training stages,
    evaluation). Recipes come from the `diffret.recipes` entry-point group (built-in:
    diffret_recipes); wherever a NAME is asked for, a path to a .yaml file works too.
    """


@recipes.command("list", epilog="""\b
Examples:
  diffret recipes list
  DIFFRET_BLOCK_PLUGINS=recipes:mine diffret recipes list   # hide a third-party source
""")
def list_cmd() -> None:
    """Print a table of every recipe: name, source, description."""
    from rich.console import Console
    from rich.table import Table

    from diffret_cli.recipes import discover_recipes, list_recipes

    infos = list_recipes()
    table = Table(title="diffret recipes")
    for col in ("name", "source", "description"):
        table.add_column(col)
    for info in infos:
        table.add_row(info.name, info.source, info.description)
    console = Console()
    console.print(table)
    for err in discover_recipes().errors:
        console.print(f"[yellow]warning[/yellow]: {err}", markup=True, highlight=False)


@recipes.command("show", epilog="""\b
Examples:
  diffret recipes show quickstart
  diffret recipes show diffusionret-msrvtt train.seed=1 model.rerank.topk_t2v=16
  diffret recipes show quickstart stage1.epochs=2 > my-recipe.yaml
  diffret recipes show ./my-recipe.yaml
""")
@click.argument("name")
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
def show_cmd(name: str, overrides: tuple[str, ...]) -> None:
    """Print the resolved recipe NAME (defaults merged, overrides applied, validated) as YAML."""
    from diffret_cli.recipes import dump_recipe, load_recipe

    click.echo(dump_recipe(load_recipe(name, list(overrides))), nl=False)


@recipes.command("validate", epilog="""\b
Examples:
  diffret recipes validate                      # every recipe of every source
  diffret recipes validate quickstart
  diffret recipes validate ./my-recipe.yaml
""")
@click.argument("names", nargs=-1, metavar="[NAME]...")
def validate_cmd(names: tuple[str, ...]) -> None:
    """Check recipes (all when no NAME is given) and print every problem; exit 1 if any."""
    from diffret_cli.recipes import check_recipe, discover_recipes

    failed = 0
    if not names:
        catalog = discover_recipes()
        for err in catalog.errors:
            click.secho(f"FAIL  {err}", fg="red")
            failed += 1
        for name in sorted(catalog.clashes):
            click.secho(f"FAIL  {catalog.clash_message(name)}", fg="red")
            failed += 1
        names = tuple(n for n in sorted(catalog.recipes) if n not in catalog.clashes)
    for name in names:
        problems = check_recipe(name)
        if problems:
            failed += 1
            click.secho(f"FAIL  {name}: {len(problems)} problem(s)", fg="red")
            for p in problems:
                click.echo("  - " + p.replace("\n", "\n    "))
        else:
            click.secho(f"ok    {name}", fg="green")
    if failed:
        click.echo(f"{failed} failed", err=True)
        sys.exit(1)
    click.echo(f"{len(names)} recipe(s) valid")
