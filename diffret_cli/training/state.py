"""The resume point ``checkpoints/last``: model, config and the training state.

The folder is written whole under a temp name and swapped in as one unit
(:func:`diffret_cli.fileio.replace_dir`), so a kill at any instant leaves either the old
resume point or the new one: never new weights with an old optimiser or RNG state.
The training state holds only tensors and plain numbers (the RNG states converted), so
it loads with ``torch.load(weights_only=True)``: opening a run folder someone shared
runs no pickled code.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from diffret_cli.checkpoint import CONFIG_FILE, read_config, save_model, verify_file
from diffret_cli.errors import CheckpointError
from diffret_cli.fileio import atomic_write_bytes, replace_dir, temp_sibling

STATE_FILE = "training_state.pt"
METRICS_FILE = "metrics.jsonl"


def last_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints" / "last"


def rng_state(gen: torch.Generator | None) -> dict:
    """Every random stream the loop draws from, as tensors and numbers only."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, mt, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "python": {"version": int(version), "mt": torch.tensor(mt, dtype=torch.int64),
                       "gauss_next": gauss_next},
            "gen": gen.get_state() if gen is not None else None}


def set_rng_state(s: dict, gen: torch.Generator | None) -> None:
    torch.set_rng_state(s["torch"])
    n = s["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = s["python"]
    random.setstate((p["version"], tuple(p["mt"].tolist()), p["gauss_next"]))
    if gen is not None and s.get("gen") is not None:
        gen.set_state(s["gen"])


def save_training_state(run_dir: Path, model, state: dict) -> None:
    """checkpoints/last <- model + config + ``state``, as one unit. The state also records
    how long metrics.jsonl was (``metrics_bytes``): a resume cuts what the interrupted
    run logged after this point, which the resumed run logs again."""
    dst = last_dir(run_dir)
    tmp = temp_sibling(dst)
    metrics = Path(run_dir) / METRICS_FILE
    state = {**state, "metrics_bytes": metrics.stat().st_size if metrics.is_file() else 0}
    try:
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(tmp / STATE_FILE, buf.getvalue())
        # config.json, written last, records both files' checksums
        save_model(model, tmp, checksums={STATE_FILE: hashlib.sha256(buf.getvalue()).hexdigest()})
        replace_dir(tmp, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


REQUIRED_KEYS = ("stage", "epoch", "batch", "best", "global_step", "optimizer", "scheduler", "rng")


def load_training_state(run_dir: Path) -> dict | None:
    """The state saved with ``checkpoints/last``, or None when the run has none. A file
    that cannot be read as diffret's plain-tensor state (empty, cut short, damaged, or
    holding pickled objects, which ``weights_only=True`` refuses to run) is a
    :class:`CheckpointError` naming the file."""
    path = last_dir(run_dir) / STATE_FILE
    if not path.is_file():
        return None
    hint = ("the resume point is damaged or was not written by diffret: restore the run folder from a copy, "
            "or train into a new --run-dir (a run whose stage 1 finished can retrain stage 2 with --stage 2)")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"cannot read the resume state {path}: the file is empty (0 bytes)", hint=hint)
    if (path.parent / CONFIG_FILE).is_file():  # written last: a resume point saved whole
        try:
            verify_file(path, read_config(path.parent))
        except CheckpointError as exc:
            raise CheckpointError(exc.message, hint=hint) from exc
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only refused something that is not a tensor
        raise CheckpointError(f"refusing to load the resume state {path}: it holds pickled Python objects, "
                              "which could run code (only tensors and plain numbers are loaded)", hint=hint) from exc
    except Exception as exc:  # torch raises RuntimeError, EOFError, ValueError, IndexError, ... for damage
        detail = str(exc).strip().split(". ")[0].splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot read the resume state {path} ({size} bytes): {detail}", hint=hint) from exc
    missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"the resume state {path} lacks {', '.join(missing)}", hint=hint)
    return state
