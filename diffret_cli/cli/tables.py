"""Printing evaluation results as tables (shared by ``diffret eval`` and ``diffret train``)."""

from __future__ import annotations

METRIC_COLUMNS = ("R@1", "R@5", "R@10", "R@50", "MdR", "MnR", "Rsum")


def result_title(res: dict) -> str:
    return (f"{res.get('role', 'in-domain')}: {res['dataset']} {res['split']} "
            f"({res['num_captions']} captions, {res['num_videos']} videos)")


def print_result(res: dict) -> None:
    """One result as a rich table, with its warnings (left-out videos, ties) on stderr."""
    from rich.console import Console
    from rich.table import Table

    err = Console(stderr=True)
    missing = res.get("num_videos_unavailable", 0)
    if missing:
        err.print(f"[yellow]warning[/yellow]: {missing} video(s) of this split were not prepared (see `diffret data "
                  f"info {res.get('dataset', 'NAME')}`); they are left out, so these numbers are not comparable "
                  "with the full benchmark")
    table = Table(title=result_title(res))
    table.add_column("scores", no_wrap=True)
    table.add_column("direction")
    for c in METRIC_COLUMNS:
        table.add_column(c, justify="right")
    for row, r in res["rows"].items():
        for direction in ("t2v", "v2t"):
            if direction in r:
                m = r[direction]
                table.add_row(row, direction, *[f"{m[c]:.1f}" for c in METRIC_COLUMNS])
    Console().print(table)
    tied = {row: r["t2v"].get("tied", 0) for row, r in res["rows"].items()}
    if any(tied.values()):
        err.print("[yellow]note[/yellow]: text-to-video queries whose ground truth ties another video's exact "
                  f"score: {', '.join(f'{k} {v}' for k, v in tied.items() if v)}")


def print_summary(results: list[dict]) -> None:
    """In-domain against out-of-domain text-to-video R@1, when both were evaluated."""
    import click

    own = [r for r in results if r.get("role") == "in-domain"]
    other = [r for r in results if r.get("role") == "out-of-domain"]
    if not (own and other):
        return
    row = "diffusion" if "diffusion" in own[0]["rows"] else "stage1"
    parts = [f"in-domain {own[0]['rows'][row]['t2v']['R@1']:.1f}"]
    parts += [f"out-of-domain {r['dataset']} {r['rows'][row]['t2v']['R@1']:.1f}" for r in other if row in r["rows"]]
    click.echo(f"text-to-video R@1 ({row}): " + ", ".join(parts))


def print_sweep(key: str, sweep: list[tuple[object, list[dict]]]) -> None:
    """One table per evaluation target, one row per swept value (the generative rows,
    both directions; stage 1 alone where a value turned the generative stage off)."""
    from rich.console import Console
    from rich.table import Table

    cols = ("R@1", "R@5", "R@10", "MdR", "MnR")
    for i, first in enumerate(sweep[0][1]):
        table = Table(title=f"{result_title(first)}: sweep of {key}")
        table.add_column(key, justify="right")
        table.add_column("scores")
        for d in ("t2v", "v2t"):
            for c in cols:
                table.add_column(f"{d} {c}", justify="right")
        for value, results in sweep:
            rows = results[i]["rows"]
            name = "diffusion" if "diffusion" in rows else "stage1"
            r = rows[name]
            table.add_row(str(value), name, *[f"{r[d][c]:.1f}" for d in ("t2v", "v2t") for c in cols])
        Console().print(table)
