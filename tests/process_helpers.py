"""What the fault tests need to watch processes: a process group's live members, and
waiting for a condition with a deadline."""

from __future__ import annotations

import os
import time


def process_group(pgid: int) -> dict[int, str]:
    """Live (not zombie) processes of process group ``pgid``: pid -> command line (Linux
    /proc; the callers skip elsewhere)."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
                with open(f"/proc/{d}/cmdline", "rb") as fh:
                    out[int(d)] = fh.read().replace(b"\0", b" ").decode(errors="replace")[:120]
        except (OSError, IndexError, ValueError):
            continue  # the process exited while we read it
    return out


def wait_for(predicate, timeout: float, what: str, *, poll: float = 0.05) -> None:
    """Poll ``predicate`` until it is true; after ``timeout`` seconds fail naming ``what``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
