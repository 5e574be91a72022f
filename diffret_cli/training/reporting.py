"""What a run reports: ``metrics.jsonl`` (and TensorBoard), and the progress bar."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from diffret_cli.distributed import DistInfo


def jsonl_logger(path: Path, dist: DistInfo, writer=None) -> Callable[[dict], None]:
    """Rank 0 appends each record as one JSON line (and loss / lr scalars to TensorBoard
    at the run's global step)."""
    def log(record: dict) -> None:
        if not dist.is_main:
            return
        record = {"time": round(time.time(), 3), **record}
        with open(path, "a") as f:
            f.write(json.dumps(record, default=float) + "\n")
        if writer is not None and "loss" in record:
            step = record.get("global_step", record.get("step", 0))
            writer.add_scalar(f"stage{record['stage']}/loss", record["loss"], step)
            writer.add_scalar(f"stage{record['stage']}/lr", record["lr"], step)
    return log


def tensorboard_writer(run_dir: Path, dist: DistInfo, *, purge_step: int | None = None):
    """A SummaryWriter on rank 0 when tensorboard is installed, else None. ``purge_step``
    (a resumed run): events from that global step on, written by the killed run after its
    resume point, are dropped, so the curves do not overlap."""
    if not dist.is_main:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    log_dir = run_dir / "tensorboard"
    wait_for_a_later_second(log_dir)
    return SummaryWriter(str(log_dir), purge_step=purge_step)


def wait_for_a_later_second(log_dir: Path) -> None:
    """TensorBoard reads a folder's event files in name order, and a name starts with the
    creation second, then a per-process writer counter compared as text ("10" < "9").
    Two writers in one second of one long-lived process (a resume right after a kill,
    in a notebook or a test session) could then be read out of order, and a resumed
    run's purge would drop the wrong steps. Starting each file in a later second than
    the folder's newest keeps the order; it waits at most a second, only then."""
    import re
    import time

    newest = 0
    for f in log_dir.glob("events.out.tfevents.*"):
        m = re.match(r"events\.out\.tfevents\.(\d+)\.", f.name)
        if m:
            newest = max(newest, int(m.group(1)))
    while int(time.time()) <= newest:
        time.sleep(0.05)


def progress_bar(enabled: bool):
    """A rich progress bar on stderr with loss, learning rate and throughput columns."""
    if not enabled:
        return None
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("lr {task.fields[lr]:.2e}"),
                    TextColumn("{task.fields[rate]:.1f} pairs/s"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True))
