"""Progress of ``diffret data prepare``, readable in a terminal of any width and in a log.

In a terminal: a live bar whose columns are chosen to fit the width (a narrow terminal
drops the bar and the rate, never cuts a number in half). Elsewhere (a file, a pipe, a
CI log) a live bar would be one cut-off frame, so plain lines are printed instead: one
at the start, one every tenth of the work (or every 30 s), one at the end.
"""

from __future__ import annotations

import os
import time
from typing import Any


def _clock(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "-:--:--"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class PrepareProgress:
    """Context manager: ``advance(frames=n)`` once per finished video. ``enabled=False``
    prints nothing."""

    #: plain-line mode prints at most this often, unless a tenth of the work is done
    LOG_EVERY_S = 30.0

    def __init__(self, description: str, total: int, *, enabled: bool = True, console: Any = None):
        from rich.console import Console

        self.description, self.total, self.enabled = description, int(total), enabled
        self.console = console or Console(stderr=True)
        self.done = 0
        self.frames = 0
        self._t0 = time.perf_counter()
        self._last_log = 0.0
        self._last_tenth = -1
        self._live = None
        self._task = None

    # ------------------------------------------------------------------------ public
    def __enter__(self) -> "PrepareProgress":
        self._t0 = time.perf_counter()
        if not self.enabled:
            return self
        if self.console.is_terminal:
            self._live = self._bar()
            self._live.__enter__()
            self._task = self._live.add_task(self.description, total=self.total, frames=0)
        else:
            self._line()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)
        elif self.enabled and exc[0] is None:
            self._line(final=True)

    def advance(self, *, frames: int = 0) -> None:
        self.done += 1
        self.frames += int(frames)
        if self._live is not None:
            self._live.update(self._task, advance=1, frames=self.frames)
        elif self.enabled:
            tenth = self.done * 10 // max(1, self.total)
            now = time.perf_counter()
            if self.done < self.total and (tenth > self._last_tenth or now - self._last_log >= self.LOG_EVERY_S):
                self._line()

    def snapshot(self) -> str:
        """What the progress display shows now, as plain text at the console's width."""
        if self._live is None:
            return self.status()
        from rich.console import Console

        out = Console(width=self.console.width, color_system=None, force_terminal=False, record=True,
                      file=open(os.devnull, "w"))
        out.print(self._live.get_renderable())
        out.file.close()
        return out.export_text()

    # ---------------------------------------------------------------------- internals
    def status(self) -> str:
        """One self-contained line: done/total, rates, elapsed and remaining time."""
        elapsed = time.perf_counter() - self._t0
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else None
        pct = 100 * self.done // max(1, self.total)
        fps = self.frames / elapsed if elapsed > 0 else 0.0
        return (f"{self.description}: {self.done}/{self.total} videos ({pct}%), {rate:.1f} videos/s, "
                f"{fps:.0f} frames/s, elapsed {_clock(elapsed)}, eta {_clock(left if self.done else None)}")

    def _line(self, final: bool = False) -> None:
        self._last_log = time.perf_counter()
        self._last_tenth = self.done * 10 // max(1, self.total)
        self.console.print(self.status() + (" - done" if final else ""), highlight=False, soft_wrap=True,
                           markup=False)

    def _bar(self):
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)
        from rich.table import Column
        from rich.text import Text

        class RateColumn(ProgressColumn):
            def render(self, task) -> Text:
                speed = task.finished_speed or task.speed
                elapsed = task.elapsed or 0.0
                frames = task.fields.get("frames", 0)
                fps = f" {frames / elapsed:.0f} fr/s" if elapsed > 0 and frames else ""
                return Text(f"{speed:.1f} vid/s{fps}" if speed else "-", style="progress.data.speed")

        name = TextColumn("[bold]{task.description}", table_column=Column(no_wrap=True))
        count = MofNCompleteColumn(table_column=Column(no_wrap=True))
        eta = TimeRemainingColumn(table_column=Column(no_wrap=True))
        # description, count and eta always; then the rate, the elapsed time and the bar
        # while they fit (a column that does not fit is left out, never cut or wrapped)
        width = self.console.width
        room = width - (len(self.description) + 1) - (2 * len(str(self.total)) + 2) - (4 + 8)
        rate = room >= 26
        room -= 26 if rate else 0
        elapsed = room >= 8
        room -= 8 if elapsed else 0
        columns: list[Any] = [name]
        if room >= 12:
            columns.append(BarColumn(bar_width=min(40, room - 2)))
        columns.append(count)
        if rate:
            columns.append(RateColumn(table_column=Column(no_wrap=True)))
        if elapsed:
            columns.append(TimeElapsedColumn(table_column=Column(no_wrap=True)))
        columns += [TextColumn("eta", table_column=Column(no_wrap=True)), eta]
        return Progress(*columns, console=self.console)
