"""``diffret report``: one self-contained HTML page about a run (opens offline)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("report", epilog="\b\nExamples:\n  diffret report runs/quickstart-20261123-101500\n"
                                "  diffret report runs/msrvtt --data-root /data/diffret\n"
                                "  diffret report runs/msrvtt --no-figures --out /tmp/msrvtt.html")
@click.argument("run", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--data-root", type=click.Path(path_type=Path), default=None,
              help="Prepared datasets root (default: $DIFFRET_DATA_ROOT, else the user cache).")
@click.option("--device", default=None, help="cpu, cuda[:N] or auto (default: the recipe's train.device).")
@click.option("--figures/--no-figures", default=True, show_default=True,
              help="Score the test splits and draw the figures and diagnostics (needs the prepared data).")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Where to write the page (default: RUN/report.html).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def report(run: Path, data_root: Path | None, device: str | None, figures: bool, out: Path | None, quiet: bool) -> None:
    """Write RUN/report.html: the recipe, the metric tables (in-domain, out-of-domain,
    QB-Norm), the re-ranking diagnostics, the training curves and the paper's figures,
    images embedded, so the one file opens offline."""
    from diffret_cli.report import write_report

    path = write_report(run, data_root=data_root, device=device, progress=not quiet, figures=figures, out=out)
    click.echo(str(path))
