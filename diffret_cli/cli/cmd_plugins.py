"""``diffret plugins``: what is installed, from where, and whether it loads."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from diffret_cli.registry import KINDS, registry


@click.group(epilog="\b\nExamples:\n  diffret plugins list\n  diffret plugins list --kind samplers --load\n  DIFFRET_DISABLE_PLUGIN_AUTOLOAD=1 diffret plugins list   # built-ins only")
def plugins() -> None:
    """List and inspect installed plugins.
    """


@plugins.command("list", epilog="\b\nExamples:\n  diffret plugins list\n  diffret plugins list --kind denoisers --load")
@click.option("--kind", type=click.Choice(KINDS), default=None, help="Only this kind.")
@click.option("--load/--no-load", default=False,
              help="Import every plugin to report import errors (default: names only).")
def list_cmd(kind: str | None, load: bool) -> None:
    """Print a table: kind, name, distribution, version, status.

    Kinds (entry-point groups diffret.<kind>): datasets, encoders, denoisers, samplers,
    schedules, recipes, families."""
    reg = registry()
    entries = reg.entries(kind)
    if load:
        for e in entries:
            try:
                reg.get(e.kind, e.name)
            except Exception:  # noqa: BLE001 - reported in the table
                pass
    table = Table(title="diffret plugins")
    for col in ("kind", "name", "distribution", "version", "status"):
        table.add_column(col)
    for e in entries:
        status = e.status if not e.error else f"[red]error[/red]: {e.error}"
        table.add_row(e.kind, e.name, e.distribution, e.version, status)
    console = Console()
    console.print(table)
    # every group is shown, even one nothing registers under yet (a kind is not a typo)
    empty = [k for k in ([kind] if kind else KINDS) if not any(e.kind == k for e in entries)]
    if empty:
        console.print("no plugins registered under: " + ", ".join(f"diffret.{k}" for k in empty))
    for c in reg.conflicts:
        console.print(f"[red]conflict[/red]: {c}")
