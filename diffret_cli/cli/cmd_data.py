"""``diffret data``: prepare, inspect and verify datasets (thin layer over diffret_cli.data)."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

_DATA_ROOT_HELP = ("Where prepared datasets live (default: $DIFFRET_DATA_ROOT, else the per-user "
                   "cache dir, e.g. ~/.cache/diffret).")


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr)


def parse_option(text: str) -> tuple[str, Any]:
    """``key=value`` -> (key, value); the value is read as a recipe override value is
    (numbers, true/false, lists; anything else stays a string, e.g. ``train_list=9k``)."""
    from diffret_cli.recipes import parse_value

    if "=" not in text:
        raise click.BadParameter(f"{text!r} is not key=value (e.g. --option num_train=20)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key.isidentifier():
        raise click.BadParameter(f"{key!r} is not a valid option name")
    return key, parse_value(raw)


_EXAMPLES_DATA = """\b
Examples:
  diffret data prepare synthetic
  diffret data prepare msrvtt --source ~/datasets/MSRVTT
  diffret data info msrvtt
  diffret data verify msrvtt
"""


@click.group(epilog=_EXAMPLES_DATA)
def data() -> None:
    """Prepare, inspect and verify datasets.

    `prepare` decodes each video once into a compact frame cache (JPEG frames at 1 fps,
    short side 224) and writes a manifest per split; training and evaluation read only
    that. `info` summarises what is there; `verify` re-checks every cache file.
    """


# ---------------------------------------------------------------------------- prepare
_EXAMPLES_PREPARE_CMD = """\b
Examples:
  diffret data prepare synthetic --option num_train=200
  diffret data prepare msrvtt --source ~/datasets/MSRVTT --workers 8
  diffret data prepare msrvtt --source ~/datasets/MSRVTT --option paper_splits=true
  diffret data prepare msvd --source ./msvd --split test --fps 1 --short-side 224
  diffret data prepare lsmdc --source /data/LSMDC      # LSMDC has no public download
  DIFFRET_DATA_ROOT=/scratch/diffret diffret data prepare didemo --source ./didemo
  diffret data prepare didemo --source ./didemo_test_only --split test
"""


@data.command("prepare", epilog=_EXAMPLES_PREPARE_CMD,
              short_help="Decode and cache a dataset's videos; write its manifests.")
@click.argument("name")
@click.option("--source", type=click.Path(file_okay=False, path_type=str), default=None,
              help="Folder with the dataset's annotation files and videos in their official layout "
                   "(default: <data-root>/NAME/source, downloading into it when possible).")
@click.option("--data-root", type=click.Path(file_okay=False, path_type=str), default=None, help=_DATA_ROOT_HELP)
@click.option("--fps", type=float, default=1.0, show_default=True, help="Frames sampled per second of video.")
@click.option("--short-side", type=int, default=224, show_default=True,
              help="Frames are resized so their short side is this many pixels (aspect kept).")
@click.option("--workers", type=int, default=None,
              help="Decoding processes (default: min(8, CPU count); 1 runs in this process).")
@click.option("--split", "splits", multiple=True, help="Only this split (repeatable; default: all).")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="Dataset plugin option (repeatable), e.g. --option train_list=7k.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def prepare_cmd(name: str, source: str | None, data_root: str | None, fps: float, short_side: int,
                workers: int | None, splits: tuple[str, ...], options: tuple[str, ...], quiet: bool) -> None:
    """Decode, sample and cache the videos of dataset NAME; write its manifests.

    Every requested split whose annotation files are in the source is prepared; the
    others are listed with where to get their files (it fails only when none can be).
    Bad videos (missing, empty, corrupt) are skipped and listed with their reason in
    <data-root>/NAME/prepare_report.json; they never stop the run. Re-running resumes:
    videos already cached with the same settings (and an intact checksum) are not
    decoded again. Ctrl-C, SIGTERM and kill -9 leave no worker process behind.
    """
    from diffret_cli.data.prepare import prepare, summary_table

    plugin_options = dict(parse_option(o) for o in options)
    report = prepare(name, data_root=data_root, source=source, fps=fps, short_side=short_side, workers=workers,
                     splits=list(splits) or None, plugin_options=plugin_options, progress=not quiet)
    console = _console()
    console.print(summary_table(report))
    if report.skipped:
        shown = report.skipped[:10]
        console.print(f"[yellow]{len(report.skipped)} video(s) skipped[/yellow]:")
        for s in shown:
            detail = f" ({s['detail']})" if s["detail"] else ""
            console.print(f"  {s['split']}/{s['video_id']}: {s['reason']}{detail}", markup=False,
                          highlight=False, soft_wrap=True)
        if len(report.skipped) > len(shown):
            console.print(f"  ... and {len(report.skipped) - len(shown)} more")
    if report.problems:
        console.print(f"[yellow]{len(report.problems)} annotation problem(s)[/yellow] "
                      "(ids without captions, empty captions, ...)")
    for note in report.notes:
        console.print(f"[yellow]note[/yellow]: {note}", highlight=False, soft_wrap=True)
    if report.repaired:
        console.print(f"{len(report.repaired)} damaged cache file(s) decoded again", highlight=False)
    for split, summary in report.splits.items():
        overlap = {k: v for k, v in summary.shared.items() if v}
        if overlap:
            console.print(f"[yellow]warning[/yellow]: {split} shares videos with "
                          + ", ".join(f"{k} ({v})" for k, v in overlap.items())
                          + ": scores on one of them are not held-out", highlight=False, soft_wrap=True)
    for a in report.absent:
        console.print(f"[yellow]not prepared[/yellow]: split {a.split!r}, missing {', '.join(a.files)}",
                      highlight=False, soft_wrap=True)
        if a.hint:
            console.print(f"  get it: {a.hint}", markup=False, highlight=False, soft_wrap=True)
        console.print(f"  then:   {a.command}", markup=False, highlight=False, soft_wrap=True)
    console.print(f"report: {report.report_path}", markup=False, highlight=False, soft_wrap=True)


# ------------------------------------------------------------------------------- info
_EXAMPLES_INFO_CMD = """\b
Examples:
  diffret data info msrvtt
  diffret data info synthetic --data-root ./data
  diffret data info msvd --json | python -c "import json,sys; print(json.load(sys.stdin)['splits']['test']['ready'])"
"""


@data.command("info", epilog=_EXAMPLES_INFO_CMD, short_help="Summarise a prepared dataset.")
@click.argument("name")
@click.option("--data-root", type=click.Path(file_okay=False, path_type=str), default=None, help=_DATA_ROOT_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the same information as JSON to stdout.")
def info_cmd(name: str, data_root: str | None, as_json: bool) -> None:
    """Summarise prepared dataset NAME: per split videos ready, captions, skipped items
    with reasons, caption length (words) and duration statistics.
    """
    from diffret_cli.data.status import dataset_info

    info = dataset_info(name, data_root)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    from rich.table import Table

    console = _console()
    console.print(f"[bold]{info['dataset']}[/bold] at {info['root']}  (prepared {info['created']}, "
                  f"{info['fps']:g} fps, short side {info['short_side']}, protocol {info['protocol']})",
                  highlight=False)
    table = Table()
    for col in ("split", "ready", "partial", "skipped", "captions", "words", "seconds", "frames", "shared"):
        table.add_column(col, justify="left" if col == "split" else "right", no_wrap=True)
    reasons = []
    for split, s in info["splits"].items():
        w, d, f = s["caption_words"], s["duration_s"], s["frames"]
        shared = sum(s["shared_videos"].values())
        table.add_row(split if s["protocol"] == info["protocol"] else f"{split} ({s['protocol']})",
                      str(s["ready"]), str(s["partial"]), str(s["skipped"]), str(s["captions"]),
                      f"{w['mean']:.1f}" if w else "-", f"{d['mean']:.1f}" if d else "-",
                      f"{int(f['total'])}" if f else "0", f"[red]{shared}[/red]" if shared else "0")
        if s["skipped_by_reason"]:
            reasons.append(f"{split}: " + ", ".join(f"{k} {v}" for k, v in s["skipped_by_reason"].items()))
    hours = sum(s["duration_s"]["total"] for s in info["splits"].values() if s["duration_s"]) / 3600
    table.caption = (f"words: mean per caption; seconds: mean per video ({hours:.2f} h in all); "
                     "shared: videos also listed by another split; --json adds min/max/median")
    if reasons:
        table.caption += "\nskipped by reason - " + "; ".join(reasons)
    console.print(table)
    for split, s in info["splits"].items():
        overlap = {k: v for k, v in s["shared_videos"].items() if v}
        if overlap:
            console.print(f"[yellow]warning[/yellow]: {split} shares videos with "
                          + ", ".join(f"{k} ({v})" for k, v in overlap.items())
                          + ": scores on one of them are not held-out", highlight=False)
    for split, s in info["splits"].items():
        items = s["skipped_items"]
        if items:
            console.print(f"skipped in {split}:")
            for it in items[:20]:
                console.print(f"  {it['video_id']}: {it['reason']}", markup=False, highlight=False,
                              soft_wrap=True)
            if len(items) > 20:
                console.print(f"  ... and {len(items) - 20} more (--json lists all)")


# ----------------------------------------------------------------------------- verify
_EXAMPLES_VERIFY_CMD = """\b
Examples:
  diffret data verify msrvtt
  diffret data verify synthetic --data-root ./data --decode
  diffret data verify msvd --repair      # decode damaged files again
"""


@data.command("verify", epilog=_EXAMPLES_VERIFY_CMD,
              short_help="Re-check every cache file against the manifests.")
@click.argument("name")
@click.option("--data-root", type=click.Path(file_okay=False, path_type=str), default=None, help=_DATA_ROOT_HELP)
@click.option("--decode", is_flag=True, help="Also decode every frame (slower; the default checks "
                                              "structure, frame counts and a checksum of every file).")
@click.option("--repair", is_flag=True, help="Decode the damaged videos again from the source recorded "
                                              "at prepare time (intact files are kept), then check again.")
@click.option("--workers", type=int, default=None, help="Decoding processes for --repair.")
def verify_cmd(name: str, data_root: str | None, decode: bool, repair: bool, workers: int | None) -> None:
    """Re-check every cache file of NAME against its manifest: it exists, it is readable,
    its checksum holds and its frame count matches. Exit code 1 with a list when not
    (after --repair: when the repair did not fix everything).
    """
    from diffret_cli.data.status import repair_dataset, verify_dataset

    checked, problems = verify_dataset(name, data_root, decode=decode)
    console = _console()
    if problems and repair:
        console.print(f"repairing {len(problems)} damaged cache file(s) of {name!r}", highlight=False)
        repair_dataset(name, data_root, problems, workers=workers)
        checked, problems = verify_dataset(name, data_root, decode=decode)
    if not problems:
        console.print(f"[green]ok[/green]: {checked} cache file(s) of {name!r} match their manifests")
        return
    from rich.table import Table

    table = Table(title=f"{len(problems)} of {checked} cache file(s) of {name!r} have problems")
    table.add_column("split")
    table.add_column("video")
    table.add_column("problem", overflow="fold")
    for p in problems:
        table.add_row(p["split"], p["video_id"], p["problem"])
    console.print(table)
    console.print(f"fix: `diffret data verify {name} --repair` decodes them again from the recorded source "
                  f"(or re-run `diffret data prepare {name}` with the same --source)",
                  markup=False, soft_wrap=True)
    sys.exit(1)
