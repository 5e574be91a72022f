"""Checkpoints: ``model.safetensors`` + ``config.json``, written atomically, loaded strictly.

``config.json`` holds the model config with every plugin's registered name, arguments
and version, so :func:`load_model` rebuilds the model from the config alone. It is
written last and records the SHA-256 of the files beside it (``checksums``): neither
safetensors nor torch's zip format notices a flipped bit in tensor data, so a damaged
file would otherwise load silently with wrong weights.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from diffret_cli import __version__
from diffret_cli.errors import CheckpointError
from diffret_cli.fileio import atomic_path, atomic_write_json

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)


CHECKSUMS_KEY = "checksums"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def save_model(model, directory: Path, *, extra: dict | None = None, checksums: dict[str, str] | None = None) -> Path:
    """Write ``directory/model.safetensors``, then ``directory/config.json`` with the
    SHA-256 of the weights (and of any other file of the folder named in ``checksums``)."""
    directory = Path(directory)
    cfg = model.full_config()
    cfg["diffret_version"] = __version__
    if extra:
        cfg["extra"] = extra
    atomic_save_tensors(directory / MODEL_FILE, model.state_dict(), metadata={"format": cfg["format"]})
    cfg[CHECKSUMS_KEY] = {MODEL_FILE: file_sha256(directory / MODEL_FILE), **(checksums or {})}
    atomic_write_json(directory / CONFIG_FILE, cfg)
    return directory


def read_config(directory: Path) -> dict:
    """A checkpoint folder's config.json (with its ``checksums``), or a CheckpointError."""
    path = Path(directory) / CONFIG_FILE
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path} is missing", hint="the checkpoint is incomplete; use another one") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}",
                              hint="the checkpoint is corrupt; use another one") from exc
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path} holds {type(cfg).__name__}, not a model config",
                              hint="the checkpoint is corrupt; use another one")
    return cfg


def verify_file(path: Path, cfg: dict) -> None:
    """``path`` has the SHA-256 its folder's config.json recorded (checkpoints written
    before checksums were recorded pass unchecked)."""
    path = Path(path)
    expected = (cfg.get(CHECKSUMS_KEY) or {}).get(path.name)
    if expected is None or not path.is_file():
        return  # a missing file is reported by its reader
    if file_sha256(path) != expected:
        raise CheckpointError(f"{path} does not match the checksum recorded in {path.parent / CONFIG_FILE}: "
                              "it changed after it was written (a flipped bit, a partial or mixed copy)",
                              hint="copy the checkpoint again from its source, or use another one")


def resolve_checkpoint_dir(path: Path) -> Path:
    """Accept a checkpoint dir, its model.safetensors, or a run dir (its best checkpoint)."""
    path = Path(path)
    if path.is_file() and path.name == MODEL_FILE:
        path = path.parent
    if (path / CONFIG_FILE).is_file():  # a checkpoint folder (load_model names a missing weights file)
        return path
    for sub in ("checkpoints/best", "checkpoints/stage2/best", "checkpoints/stage1/best", "checkpoints/last"):
        if (path / sub / CONFIG_FILE).is_file():
            return path / sub
    raise CheckpointError(f"no diffret checkpoint at {path} (expected {CONFIG_FILE} and {MODEL_FILE})",
                          hint="pass a run directory from `diffret train` or a checkpoint directory; "
                          "convert official weights with `diffret convert best.pth OUT_DIR`")


def load_tensors(path: Path, *, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file; a missing, empty, truncated or otherwise
    unreadable file is a :class:`CheckpointError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing", hint="the checkpoint is incomplete; use another checkpoint "
                              "or run directory (or train again)")
    size = path.stat().st_size
    try:
        return load_file(str(path), device=str(device))
    except Exception as exc:  # safetensors raises its own error type (and OSError)
        what = "empty (0 bytes)" if size == 0 else f"damaged ({size} bytes: {str(exc).splitlines()[0]})"
        raise CheckpointError(f"cannot read {path}: the file is {what}",
                              hint="it was cut short (a full disk, an interrupted copy) or is not a safetensors "
                              "file; copy it again from its source, or use another checkpoint") from exc


def load_model(path: Path, *, map_location: str | torch.device = "cpu"):
    from diffret_cli.convert import load_strict
    from diffret_cli.families import build_model

    directory = resolve_checkpoint_dir(path)
    cfg = read_config(directory)
    state = load_tensors(directory / MODEL_FILE, device=map_location)  # before building: fail fast
    checked = {"checksums": cfg.get(CHECKSUMS_KEY)}
    for key in ("diffret_version", "extra", CHECKSUMS_KEY):
        cfg.pop(key, None)
    model = build_model(cfg, load_pretrained=False)
    # keys and shapes first (the error names the tensor), then the bytes
    load_strict(model, state, source=str(directory / MODEL_FILE))
    verify_file(directory / MODEL_FILE, checked)
    return model
