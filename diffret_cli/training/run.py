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
from diffret_cli.fileio import atomic_write_bytes, atomic_write_text, is_temp_name, replace_dir, temp_sibling
from diffret_cli.training.context import RunContext
from diffret_cli.training.loop import run_stage
from diffret_cli.training.reporting import jsonl_logger, progress_bar, tensorboard_writer
from diffret_cli.training.state import METRICS_FILE, last_dir, load_training_state

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
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--run-dir {run_dir} is a file, not a folder",
                          hint="pass a folder (new, or the run to resume), e.g. --run-dir runs/NAME")
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


def check_stages(recipe: dict, family, stages: list[int]) -> None:
    """The stages asked for exist in the family and each trains at least one epoch."""
    unknown = sorted(set(stages) - set(family.stages()))
    if unknown:
        raise ConfigError(f"the {family.name} family has no stage {unknown[0]}",
                          hint=f"its stages: {', '.join(map(str, family.stages()))} (train.stages / --stage)")
    for s in stages:
        epochs = recipe[f"stage{s}"]["epochs"]
        if epochs < 1:
            others = [x for x in recipe["train"]["stages"] if x != s]
            raise ConfigError(f"stage{s}.epochs={epochs}: stage {s} would train nothing",
                              hint=f"set stage{s}.epochs to 1 or more, or leave stage {s} out "
                              f"(train.stages={others or '[...]'} or --stage {others[0] if others else 'N'})")


def check_pairs(recipe: dict, data, stages: list[int]) -> None:
    """The training split exists and holds at least one global batch of every stage that
    will run: checked before anything is written, not when stage 2 starts hours later."""
    name = recipe["dataset"]["train_split"]
    split = data.split(name)  # a split that was not prepared is an error naming the command
    pairs = sum(len(v.captions) for v in split.videos)
    for s in stages:
        bs = recipe[f"stage{s}"]["batch_size"]
        if pairs < bs:
            raise ConfigError(f"the {name} split of {recipe['dataset']['name']} has {pairs} caption-video pairs, "
                              f"fewer than one stage{s} batch of {bs}",
                              hint=f"lower stage{s}.batch_size to {pairs} or less (or prepare more data)")
    if recipe["dataset"].get("val_split"):
        data.split(recipe["dataset"]["val_split"])


def intra_op_threads(cores: int, world_size: int, num_workers: int) -> int | None:
    """torch's intra-op threads for one CPU training process, or None to keep torch's
    default (every core): the cores are shared by ``world_size`` processes on the machine,
    each also running ``num_workers`` loader workers. Oversubscribed intra-op threads
    make small CPU models ten times slower."""
    if world_size <= 1 and num_workers <= 0:
        return None  # the process has the machine to itself
    return max(1, cores // max(1, world_size) - num_workers)


def train(recipe: dict, *, run_dir: Path | None = None, data_root: Path | None = None, resume: bool = False,
          stages: list[int] | None = None, progress: bool = True, stop_after_steps: int | None = None) -> Path:
    """Train ``recipe`` into ``run_dir`` (default: a fresh ``runs/<name>-<timestamp>``);
    returns the run directory.

    Every check runs before the first write into the run directory (the recipe, the
    resume state, devices, batch sizes, the model, the dataset and its splits), so a
    command that fails leaves an existing run exactly as it was."""
    from diffret_cli.data.ensure import ensure_prepared

    if run_dir is not None:
        run_dir = check_run_dir(run_dir)
    tr = recipe["train"]
    device = resolve_device(tr["device"])
    family = get_family(family_name(recipe["model"]))
    stages = stages or list(tr["stages"])
    check_stages(recipe, family, stages)
    # a process group the caller made (a script launching train() twice) is theirs to close
    owns_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    dist = init_distributed(device.type)
    try:
        if dist.enabled and device.type == "cuda":
            device = torch.device("cuda", dist.local_rank)
        precision = resolve_precision(tr["precision"], device)
        check_batches(recipe, stages, dist)
        run_dir = shared_run_dir(run_dir, recipe["name"], dist)
        # every rank checks (read-only), so a refused start stops them all alike
        state = check_start(run_dir, recipe, resume=resume, stages=stages)
        torch.manual_seed(tr["seed"])  # the initial weights, then the run's random stream
        model = start_model(recipe, run_dir, state=state, stages=stages, device=device)
        rng = torch.get_rng_state()  # kept from whatever the data checks below draw
        # the data is checked (and a generated dataset generated) by rank 0, then opened by all
        data = ensure_prepared(recipe["dataset"]["name"], data_root, data_cfg=recipe.get("data"),
                               options=recipe["dataset"].get("options"), progress=progress) if dist.is_main else None
        if dist.is_main:
            check_pairs(recipe, data, stages)
            open_run_dir(run_dir, recipe, state=state)  # the first write into the run directory
        barrier(dist)
        if data is None:
            from diffret_cli.data.manifest import PreparedDataset

            data = PreparedDataset.open(data_root, recipe["dataset"]["name"])
        threads = intra_op_threads(os.cpu_count() or 1, dist.world_size, tr["num_workers"])
        if device.type == "cpu" and threads is not None and "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(threads)
        torch.set_rng_state(rng)
        return _run(recipe, family, model, run_dir=run_dir, data=data, device=device, precision=precision, dist=dist,
                    state=state, stages=stages, progress=progress, stop_after_steps=stop_after_steps)
    finally:
        if owns_group:
            cleanup(dist)


def check_start(run_dir: Path, recipe: dict, *, resume: bool, stages: list[int]) -> dict | None:
    """The resume state (``--resume``), after checking that the run can start or resume
    in ``run_dir``; writes nothing."""
    if resume:
        state = load_training_state(run_dir)
        if state is None:
            raise ConfigError(f"nothing to resume in {run_dir} (no {last_dir(run_dir) / 'training_state.pt'})",
                              hint="start without --resume, or pass the run directory of an interrupted run")
        saved = load_saved_recipe(run_dir)
        if saved != json.loads(json.dumps(recipe)):
            raise ConfigError(f"the recipe differs from the one saved in {run_dir / RECIPE_FILE}",
                              hint="resume with the same recipe and overrides (or start a new run)")
        return state
    stage1_done = (run_dir / "checkpoints" / "stage1" / "best" / "model.safetensors").is_file()
    if (run_dir / "checkpoints").exists() and not (stages == [2] and stage1_done):
        raise ConfigError(f"{run_dir} already holds a run",
                          hint="pass --resume to continue it, --stage 2 to (re)train its stage 2, or another --run-dir")
    return None


def load_saved_recipe(run_dir: Path) -> dict:
    path = run_dir / RECIPE_FILE
    if not path.is_file():
        raise ConfigError(f"{path} is missing, so the run cannot be resumed safely",
                          hint="restore it (recipe-history/ holds earlier ones), or train into a new --run-dir")
    try:
        saved = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}",
                          hint="restore it (recipe-history/ holds earlier ones), or train into a new --run-dir") from exc
    if not isinstance(saved, dict):
        raise ConfigError(f"{path} holds no recipe", hint="restore it, or train into a new --run-dir")
    return saved


def start_model(recipe: dict, run_dir: Path, *, state: dict | None, stages: list[int], device: torch.device):
    """The model a run starts from: the resume point's weights, or the family's initial
    model (pretrained weights unless a finished earlier stage provides them). Reads only."""
    from diffret_cli.checkpoint import MODEL_FILE, load_tensors, read_config, verify_file
    from diffret_cli.convert import load_strict

    # a later stage on top of a finished earlier one starts from its best weights: no
    # pretrained download
    from_earlier = min(stages) > 1 and (run_dir / "checkpoints" / f"stage{min(stages) - 1}" / "best").is_dir()
    model = build_model(recipe["model"], load_pretrained=state is None and not from_earlier)
    if hasattr(model, "make_sampler"):  # the sampler validation will use: a bad argument fails now
        steps = recipe.get("eval", {}).get("steps")
        model.make_sampler(**({"sample_steps": steps} if steps is not None else {}))
    if state is not None:
        path = last_dir(run_dir) / MODEL_FILE
        tensors = load_tensors(path)
        verify_file(path, read_config(path.parent))
        load_strict(model, tensors, source=str(path))
    return model.to(device)


def open_run_dir(run_dir: Path, recipe: dict, *, state: dict | None) -> None:
    """The first writes into a run directory, once every check has passed: the recipe,
    what a kill left behind (temp folders of an interrupted save) and, on resume, the
    metrics logged after the resume point (the resumed run logs those steps again)."""
    import shutil

    if state is None:
        write_recipe(run_dir, recipe)
    ckpts = run_dir / "checkpoints"
    for leftover in (p for p in (ckpts.iterdir() if ckpts.is_dir() else ()) if is_temp_name(p.name)):
        shutil.rmtree(leftover, ignore_errors=True)
    if state is not None:
        trim_metrics(run_dir / METRICS_FILE, state)


def trim_metrics(path: Path, state: dict) -> None:
    """metrics.jsonl back to what it held when the resume point was saved: the lines the
    killed run logged after it are logged again, with the same global steps, by the
    resumed run (so no global step appears twice)."""
    size = state.get("metrics_bytes")
    if size is None or not path.is_file() or path.stat().st_size <= size:
        return
    with open(path, "rb") as f:
        kept = f.read(size)
    atomic_write_bytes(path, kept)


def next_global_step(path: Path) -> int:
    """The last global step a run directory's metrics.jsonl recorded (0 for a new run):
    a stage retrained on top of a finished run continues the run's step count."""
    if not path.is_file():
        return 0
    last = 0
    for line in path.read_text(errors="replace").splitlines():
        try:
            last = max(last, int(json.loads(line).get("global_step") or 0))
        except (ValueError, AttributeError, TypeError):
            continue  # a line cut short by a kill
    return last


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


def _run(recipe, family, model, *, run_dir, data, device, precision, dist, state, stages, progress,
         stop_after_steps) -> Path:
    global_step = int(state["global_step"]) if state else next_global_step(run_dir / METRICS_FILE)
    # TensorBoard drops the events a killed run wrote after its resume point
    writer = tensorboard_writer(run_dir, dist, purge_step=global_step + 1 if state else None)
    log = jsonl_logger(run_dir / METRICS_FILE, dist, writer)
    bar = progress_bar(progress and dist.is_main)
    ctx = RunContext(run_dir=run_dir, recipe=recipe, data=data, device=device, precision=precision, dist=dist,
                     log=log, progress=bar, resume_state=state, stop_after_steps=stop_after_steps,
                     global_step=global_step)
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
