"""The ``diffret`` command: a thin Click layer over the Python API.

Each subcommand lives in its own module (``cmd_<name>.py``) and is imported only when
it runs, so ``diffret --help`` stays fast and a broken optional dependency of one
command never breaks the others.
"""

from __future__ import annotations

import importlib
import sys

import click

from diffret_cli import __version__
from diffret_cli.errors import DiffretError

# name -> (module, attribute, one-line help shown by `diffret --help`)
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "plugins": ("diffret_cli.cli.cmd_plugins", "plugins", "List and inspect installed plugins."),
    "data": ("diffret_cli.cli.cmd_data", "data", "Prepare, inspect and verify datasets."),
    "train": ("diffret_cli.cli.cmd_train", "train", "Train a recipe (stage 1, stage 2, or both)."),
    "eval": ("diffret_cli.cli.cmd_eval", "eval_cmd", "Evaluate a run or checkpoint."),
    "recipes": ("diffret_cli.cli.cmd_recipes", "recipes", "List, show and validate recipes."),
    "convert": ("diffret_cli.cli.cmd_convert", "convert", "Convert an official DiffusionRet best.pth."),
    "viz": ("diffret_cli.cli.cmd_viz", "viz", "Draw the paper's figures for a run (PNG files)."),
    "report": ("diffret_cli.cli.cmd_report", "report", "Write a self-contained HTML report of a run."),
    "bench": ("diffret_cli.cli.cmd_bench", "bench", "Measure evaluation, stage-2 training and encoding speed."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in SUBCOMMANDS:
            return None
        module, attr, _ = SUBCOMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, SUBCOMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="diffret")
def cli() -> None:
    """diffret: generative text-video retrieval (DiffusionRet, DITS).

    \b
    Examples:
      diffret plugins list
      diffret data prepare synthetic
      diffret train --recipe quickstart
      diffret eval runs/quickstart --dataset synthetic
      diffret eval runs/msrvtt --out-domain msrvtt:didemo
    """


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="diffret", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except DiffretError as exc:
        click.secho(f"error: {exc.message}", fg="red", err=True)
        if exc.hint:
            click.echo(f"  fix: {exc.hint}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
