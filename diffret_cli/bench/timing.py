"""Phase timing and peak memory for the benchmarks.

Wall time is what a user waits for; CPU time (the process's, all threads) is reported
beside it because on a shared machine it is the steadier figure. CUDA work is
synchronised at each phase boundary so a phase owns the kernels it launched.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from diffret_cli.errors import ConfigError

DEVICES = ("cpu", "cuda")


def resolve_device(device: str) -> torch.device:
    """``cpu`` or ``cuda`` (``cuda:N`` too); CUDA must be present."""
    dev = torch.device(device)
    if dev.type not in DEVICES:
        raise ConfigError(f"unknown device {device!r}", hint="use --device cpu or --device cuda")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda, but torch sees no CUDA device",
                          hint="run on a machine with a GPU and a CUDA build of torch, or use --device cpu")
    return dev


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_bytes() -> int | None:
    """Resident set size of this process now (Linux), else None."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class PeakMemory:
    """Peak memory over a region: CUDA's allocator peak on a GPU; on CPU the resident set
    size, sampled every few milliseconds (Linux), or the process's lifetime high-water
    mark where that is all the system offers."""

    def __init__(self, device: torch.device, interval_s: float = 0.005):
        self.device, self.interval_s = device, interval_s
        self.peak_bytes = 0
        self.kind = "cuda_allocated" if device.type == "cuda" else "process_rss"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif _rss_bytes() is not None:
            self.peak_bytes = _rss_bytes() or 0
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak_bytes = max(self.peak_bytes, _rss_bytes() or 0)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self.peak_bytes, _rss_bytes() or 0)
        else:  # ru_maxrss: kilobytes on Linux, bytes on macOS
            scale = 1 if sys.platform == "darwin" else 1024
            self.peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
            self.kind = "process_rss_lifetime"

    @property
    def megabytes(self) -> float:
        return self.peak_bytes / 2 ** 20


@dataclass
class PhaseTimer:
    """Seconds per named phase (wall and CPU); a phase entered twice accumulates."""

    device: torch.device
    wall: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def phase(self, name: str):
        synchronize(self.device)
        w0, c0 = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            synchronize(self.device)
            self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - w0
            self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - c0

    def total(self) -> float:
        return sum(self.wall.values())

    def as_dict(self, ndigits: int = 4) -> dict:
        return {"phases": {k: round(v, ndigits) for k, v in self.wall.items()},
                "cpu_phases": {k: round(v, ndigits) for k, v in self.cpu.items()},
                "total": round(self.total(), ndigits), "cpu_total": round(sum(self.cpu.values()), ndigits)}


def environment(device: torch.device) -> dict:
    """What the figures depend on: torch, threads, the device's name."""
    env = {"torch": torch.__version__, "device": str(device), "threads": torch.get_num_threads(),
           "cpu_count": os.cpu_count()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env
