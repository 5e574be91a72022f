"""What every stage of a run shares: the run directory, recipe, data, device, ranks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from diffret_cli.distributed import DistInfo


@dataclass
class RunContext:
    run_dir: Path
    recipe: dict
    data: Any  # PreparedDataset
    device: torch.device
    precision: str
    dist: DistInfo
    log: Callable[[dict], None]
    progress: Any = None
    resume_state: dict | None = None
    stop_after_steps: int | None = None  # testing hook: simulate a kill after N optimizer steps
    steps_done: int = 0  # optimiser steps of this process (the kill hook counts these)
    global_step: int = 0  # optimiser steps of the whole run, continued across resumes
    cache: dict = field(default_factory=dict)  # per-run values a stage computes once


class Interrupted(RuntimeError):
    """Raised by the stop_after_steps testing hook (a simulated kill)."""
