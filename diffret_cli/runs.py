"""Running a recipe: run directories, the two stages in order, resume, final evaluation.

This is the Python API behind ``diffret train``; the CLI only parses arguments.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any

import torch
import yaml

from diffret_cli.distributed import barrier, cleanup, init_distributed
from diffret_cli.errors import ConfigError
from diffret_cli.features import resolve_device, resolve_precision
from diffret_cli.fileio import atomic_write_bytes, atomic_write_json
from diffret_cli.model.diffusionret import DiffusionRet
from diffret_cli.trainer import (RunContext, finalize_best, jsonl_logger, load_best_stage1,
                                 load_training_state, run_stage1, run_stage2)

RECIPE_FILE = "recipe.yaml"


def ensure_prepared(name: str, data_root: Path | None, *, data_cfg: dict | None = None,
                    options: dict | None = None, progress: bool = True):
    """Open prepared dataset ``name``; a generated dataset (``synthetic``) that is not
    prepared yet is generated on the spot (nothing to download). Others must be prepared
    with ``diffret data prepare`` first: their error says how."""
    from diffret_cli.data.manifest import PreparedDataset
    from diffret_cli.data.prepare import is_generated, make_plugin, prepare
    from diffret_cli.errors import DiffretError

    try:
        return PreparedDataset.open(data_root, name)
    except DiffretError:
        if not is_generated(make_plugin(name, options)):
            raise
    data_cfg = data_cfg or {}
    prepare(name, data_root=data_root, fps=data_cfg.get("fps", 1.0), short_side=data_cfg.get("short_side", 224),
            plugin_options=options, progress=progress)
    return PreparedDataset.open(data_root, name)


def new_run_dir(recipe_name: str, base: Path = Path("runs")) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = base / f"{recipe_name}-{stamp}"
    n = 1
    while path.exists():
        n += 1
        path = base / f"{recipe_name}-{stamp}-{n}"
    return path


def check_run_dir(run_dir: Path) -> Path:
    run_dir = Path(run_dir).expanduser()
    if run_dir.resolve() == Path.cwd().resolve():
        raise ConfigError("the run directory cannot be the working directory itself",
                          hint="pass --run-dir runs/NAME (or leave it out for a fresh timestamped one)")
    return run_dir


def _progress(enabled: bool):
    if not enabled:
        return None
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("lr {task.fields[lr]:.2e}"),
                    TextColumn("{task.fields[rate]:.1f} pairs/s"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True))


def train(recipe: dict, *, run_dir: Path, data_root: Path | None = None, resume: bool = False,
          stages: list[int] | None = None, progress: bool = True, stop_after_steps: int | None = None) -> Path:
    """Train ``recipe`` into ``run_dir``; returns the run directory."""
    from diffret_cli.data.manifest import PreparedDataset

    run_dir = check_run_dir(run_dir)
    tr = recipe["train"]
    device = resolve_device(tr["device"])
    dist = init_distributed(device.type)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    precision = resolve_precision(tr["precision"], device)
    if device.type == "cpu" and tr["num_workers"] > 0 and "OMP_NUM_THREADS" not in os.environ:
        # leave the loader workers their cores: oversubscribed intra-op threads make
        # small CPU models ten times slower
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // dist.world_size - tr["num_workers"]))
    stages = stages or list(tr["stages"])
    torch.manual_seed(tr["seed"])

    state = None
    if resume:
        state = load_training_state(run_dir)
        if state is None:
            raise ConfigError(f"nothing to resume in {run_dir} (no checkpoints/last/training_state.pt)",
                              hint="start without --resume, or pass the run directory of an interrupted run")
        saved = yaml.safe_load((run_dir / RECIPE_FILE).read_text())
        if saved != json.loads(json.dumps(recipe)):
            raise ConfigError(f"the recipe differs from the one saved in {run_dir / RECIPE_FILE}",
                              hint="resume with the same recipe and overrides (or start a new run)")
    elif dist.is_main:
        stage1_done = (run_dir / "checkpoints" / "stage1" / "best" / "model.safetensors").is_file()
        if (run_dir / "checkpoints").exists() and not (stages == [2] and stage1_done):
            raise ConfigError(f"{run_dir} already holds a run",
                              hint="pass --resume to continue it, --stage 2 to (re)train its stage 2, "
                              "or another --run-dir")
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(run_dir / RECIPE_FILE, yaml.safe_dump(recipe, sort_keys=False).encode())
    barrier(dist)

    if dist.is_main:
        ensure_prepared(recipe["dataset"]["name"], data_root, data_cfg=recipe.get("data"),
                        options=recipe["dataset"].get("options"), progress=progress)
    barrier(dist)
    data = PreparedDataset.open(data_root, recipe["dataset"]["name"])
    writer = None
    if dist.is_main:
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(run_dir / "tensorboard"))
        except ImportError:
            pass
    log = jsonl_logger(run_dir / "metrics.jsonl", dist, writer)

    # stage 2 on top of a finished stage 1 starts from its best weights: no pretrained download
    from_stage1 = stages == [2] and (run_dir / "checkpoints" / "stage1" / "best").is_dir()
    model = DiffusionRet(recipe["model"], load_pretrained=state is None and not from_stage1).to(device)
    if state is not None:
        from safetensors.torch import load_file

        from diffret_cli.convert import load_strict

        load_strict(model, load_file(str(run_dir / "checkpoints" / "last" / "model.safetensors"),
                                     device=str(device)), source="checkpoints/last")
    bar = _progress(progress and dist.is_main)
    ctx = RunContext(run_dir=run_dir, recipe=recipe, data=data, device=device, precision=precision, dist=dist,
                     log=log, progress=bar, resume_state=state, stop_after_steps=stop_after_steps)
    log({"event": "start", "stages": stages, "device": str(device), "precision": precision,
         "world_size": dist.world_size, "resume": bool(state)})
    try:
        if bar is not None:
            bar.start()
        start_stage = state["stage"] if state else min(stages)
        if 1 in stages and start_stage <= 1:
            run_stage1(ctx, model)
            ctx.resume_state = None
        if 2 in stages:
            if not (state and state["stage"] == 2):
                load_best_stage1(run_dir, model)
            run_stage2(ctx, model)
        if dist.is_main:
            finalize_best(run_dir, stages)
        log({"event": "done"})
    finally:
        if bar is not None:
            bar.stop()
        if writer is not None:
            writer.close()
        cleanup(dist)
    return run_dir


def save_eval(run_dir: Path, name: str, result: dict[str, Any]) -> Path:
    path = Path(run_dir) / "eval" / f"{name}.json"
    atomic_write_json(path, result)
    return path
