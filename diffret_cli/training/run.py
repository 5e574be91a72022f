"""Running a recipe: the run directory, the family's stages in order, resume.

Nothing is written into a run directory before every check has passed (recipe, resume
state, devices, batch sizes, the dataset), so a command that fails leaves a finished
run as it was.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path

import torch
import yaml

from diffret_cli.distributed import DistInfo, barrier, cleanup, init_distributed
from diffret_cli.errors import ConfigError
from diffret_cli.families import build_model, get_family, family_name
from diffret_cli.features import resolve_device, resolve_precision
from diffret_cli.fileio import atomic_write_text, replace_dir, temp_sibling
from diffret_cli.training.context import RunContext
from diffret_cli.training.loop import run_stage
from diffret_cli.training.reporting import jsonl_logger, progress_bar, tensorboard_writer
from diffret_cli.training.state import last_dir, load_training_state

RECIPE_FILE = "recipe.yaml"


def new_run_dir(recipe_name: str, base: Path = Path("runs")) -> Path:
    """A fresh ``base/<recipe>-<timestamp>`` (suffixed when the name is taken)."""
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


def shared_run_dir(run_dir: Path | None, recipe_name: str, dist: DistInfo) -> Path:
    """The run directory, chosen once by rank 0 and shared with every rank (each rank
    naming its own timestamped folder could split a run across folders)."""
    chosen = [str(run_dir if run_dir is not None else new_run_dir(recipe_name))]
    if dist.enabled:
        import torch.distributed as tdist

        tdist.broadcast_object_list(chosen, src=0)
    return check_run_dir(Path(chosen[0]))


def check_batches(recipe: dict, stages: list[int], dist: DistInfo) -> None:
    """Every stage's global batch splits evenly over the processes: checked before any
    work, not when stage 2 starts hours later."""
    for s in stages:
        bs = recipe[f"stage{s}"]["batch_size"]
        if bs < 1 or bs % dist.world_size:
            lo = max(dist.world_size, bs - bs % dist.world_size)
            raise ConfigError(f"stage{s}.batch_size={bs} does not split evenly over {dist.world_size} processes",
                              hint=f"use stage{s}.batch_size={lo} or {lo + dist.world_size}, or a number of "
                              f"processes that divides {bs}")


def train(recipe: dict, *, run_dir: Path | None = None, data_root: Path | None = None, resume: bool = False,
          stages: list[int] | None = None, progress: bool = True, stop_after_steps: int | None = None) -> Path:
    """Train ``recipe`` into ``run_dir`` (default: a fresh ``runs/<name>-<timestamp>``);
    returns the run directory."""
    from diffret_cli.data.ensure import ensure_prepared
    from diffret_cli.data.manifest import PreparedDataset

    if run_dir is not None:
        run_dir = check_run_dir(run_dir)
    tr = recipe["train"]
    device = resolve_device(tr["device"])
    family = get_family(family_name(recipe["model"]))
    stages = stages or list(tr["stages"])
    unknown = sorted(set(stages) - set(family.stages()))
    if unknown:
        raise ConfigError(f"the {family.name} family has no stage {unknown[0]}",
                          hint=f"its stages: {', '.join(map(str, family.stages()))} (train.stages / --stage)")
    dist = init_distributed(device.type)
    try:
        if dist.enabled and device.type == "cuda":
            device = torch.device("cuda", dist.local_rank)
        precision = resolve_precision(tr["precision"], device)
        check_batches(recipe, stages, dist)
        run_dir = shared_run_dir(run_dir, recipe["name"], dist)
        # every rank checks (read-only), so a refused start stops them all alike
        state = check_start(run_dir, recipe, resume=resume, stages=stages)
        if dist.is_main:  # the last check: the data (generated here when it can be)
            ensure_prepared(recipe["dataset"]["name"], data_root, data_cfg=recipe.get("data"),
                            options=recipe["dataset"].get("options"), progress=progress)
            if not resume:
                write_recipe(run_dir, recipe)
        barrier(dist)
        if device.type == "cpu" and tr["num_workers"] > 0 and "OMP_NUM_THREADS" not in os.environ:
            # leave the loader workers their cores: oversubscribed intra-op threads make
            # small CPU models ten times slower
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // dist.world_size - tr["num_workers"]))
        torch.manual_seed(tr["seed"])
        return _run(recipe, family, run_dir=run_dir, data=PreparedDataset.open(data_root, recipe["dataset"]["name"]),
                    device=device, precision=precision, dist=dist, state=state, stages=stages, progress=progress,
                    stop_after_steps=stop_after_steps)
    finally:
        cleanup(dist)


def check_start(run_dir: Path, recipe: dict, *, resume: bool, stages: list[int]) -> dict | None:
    """The resume state (``--resume``), after checking that the run can start or resume
    in ``run_dir``; writes nothing."""
    if resume:
        state = load_training_state(run_dir)
        if state is None:
            raise ConfigError(f"nothing to resume in {run_dir} (no {last_dir(run_dir) / 'training_state.pt'})",
                              hint="start without --resume, or pass the run directory of an interrupted run")
        saved = yaml.safe_load((run_dir / RECIPE_FILE).read_text())
        if saved != json.loads(json.dumps(recipe)):
            raise ConfigError(f"the recipe differs from the one saved in {run_dir / RECIPE_FILE}",
                              hint="resume with the same recipe and overrides (or start a new run)")
        return state
    stage1_done = (run_dir / "checkpoints" / "stage1" / "best" / "model.safetensors").is_file()
    if (run_dir / "checkpoints").exists() and not (stages == [2] and stage1_done):
        raise ConfigError(f"{run_dir} already holds a run",
                          hint="pass --resume to continue it, --stage 2 to (re)train its stage 2, or another --run-dir")
    return None


def write_recipe(run_dir: Path, recipe: dict) -> None:
    """recipe.yaml <- ``recipe``; a different recipe already there (a stage-2 retrain)
    is kept under ``recipe-history/``."""
    path = run_dir / RECIPE_FILE
    text = yaml.safe_dump(recipe, sort_keys=False)
    if path.is_file() and path.read_text() != text:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        atomic_write_text(run_dir / "recipe-history" / f"recipe-{stamp}.yaml", path.read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


def _run(recipe, family, *, run_dir, data, device, precision, dist, state, stages, progress,
         stop_after_steps) -> Path:
    from safetensors.torch import load_file

    from diffret_cli.convert import load_strict

    writer = tensorboard_writer(run_dir, dist)
    log = jsonl_logger(run_dir / "metrics.jsonl", dist, writer)
    # a later stage on top of a finished earlier one starts from its best weights: no
    # pretrained download
    from_earlier = min(stages) > 1 and (run_dir / "checkpoints" / f"stage{min(stages) - 1}" / "best").is_dir()
    model = build_model(recipe["model"], load_pretrained=state is None and not from_earlier).to(device)
    if state is not None:
        load_strict(model, load_file(str(last_dir(run_dir) / "model.safetensors"), device=str(device)),
                    source=str(last_dir(run_dir) / "model.safetensors"))
    bar = progress_bar(progress and dist.is_main)
    ctx = RunContext(run_dir=run_dir, recipe=recipe, data=data, device=device, precision=precision, dist=dist,
                     log=log, progress=bar, resume_state=state, stop_after_steps=stop_after_steps,
                     global_step=int(state.get("global_step", 0)) if state else 0)
    log({"event": "start", "stages": stages, "device": str(device), "precision": precision,
         "world_size": dist.world_size, "resume": bool(state), "global_step": ctx.global_step})
    try:
        if bar is not None:
            bar.start()
        start = state["stage"] if state else min(stages)
        for number, stage in family.stages().items():
            if number in stages and number >= start:
                run_stage(ctx, model, stage)
        if dist.is_main:
            finalize_best(run_dir, stages)
        log({"event": "done", "global_step": ctx.global_step})
    finally:
        if bar is not None:
            bar.stop()
        if writer is not None:
            writer.close()
    return run_dir


def finalize_best(run_dir: Path, stages: list[int]) -> Path | None:
    """checkpoints/best <- the best checkpoint of the last stage that ran (swapped in as
    one unit)."""
    import shutil

    for stage in sorted(stages, reverse=True):
        src = run_dir / "checkpoints" / f"stage{stage}" / "best"
        if src.is_dir():
            dst = run_dir / "checkpoints" / "best"
            tmp = temp_sibling(dst)
            try:
                shutil.copytree(src, tmp)
                replace_dir(tmp, dst)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            return dst
    return None
