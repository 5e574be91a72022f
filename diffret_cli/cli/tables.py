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
    if res.get("diagnostics"):
        print_diagnostics(res["diagnostics"])
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


def print_diagnostics(diag: dict) -> None:
    """Does re-ranking earn its cost: queries moved up / down / left alone, how often the
    ground truth was among the K at all, and the top-1 of the generated sample alone over
    the K against stage 1's order and chance (``diffret_cli.diagnostics``)."""
    from rich.console import Console
    from rich.table import Table

    ks = {d["ceiling"]["k"] for d in diag.values() if isinstance(d, dict) and d.get("ceiling")}
    title = "re-ranking diagnostics" + (f" (K = {'/'.join(map(str, sorted(ks)))})" if ks else "")
    table = Table(title=title, caption="GT in K: ground truth among the K candidates; top-1 over the K "
                  "by the sample x0 alone, by stage 1, by chance")
    for c in ("direction", "up", "down", "same", "GT in K", "x0 top-1", "S top-1", "chance"):
        table.add_column(c, justify="right" if c != "direction" else "left")

    def pct(x) -> str:
        return "-" if x is None else f"{x:.1f}%"
    for direction, d in diag.items():
        if not isinstance(d, dict) or "moves" not in d:
            continue
        m, ceil, smp = d["moves"], d.get("ceiling") or {}, d.get("sample") or {}
        table.add_row(direction, str(m["up"]), str(m["down"]), str(m["same"]),
                      pct(ceil.get("percent")), pct(smp.get("sample_top1")),
                      pct(smp.get("stage1_top1")), pct(smp.get("chance_top1")))
    Console().print(table)
