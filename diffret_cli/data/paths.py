"""Where prepared datasets live on disk.

One rule, used by every command, so ``prepare``, ``info``, ``verify`` and training all
agree without passing paths around: ``--data-root DIR`` wins, then
``$DIFFRET_DATA_ROOT``, then a per-user cache directory.

Layout under the data root (one folder per dataset)::

    <root>/<name>/prepared.json          what was prepared, how, and with which settings
    <root>/<name>/prepare_report.json    every skipped item and parser problem
    <root>/<name>/manifests/<split>/     Hugging Face ``datasets`` table per split
    <root>/<name>/frames/<xx>/<sha1>.safetensors   the frame cache, one file per video
    <root>/<name>/downloads/             archives fetched by the download path
    <root>/<name>/source/                archives extracted here (the default source)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

DATA_ROOT_ENV = "DIFFRET_DATA_ROOT"


def default_cache_dir() -> Path:
    """The per-user cache directory for this platform (not created here)."""
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "diffret" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "diffret"
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    # The XDG spec says a relative value is invalid and must be ignored.
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "diffret"
    return Path.home() / ".cache" / "diffret"


def resolve_data_root(data_root: str | os.PathLike | None = None) -> Path:
    """The data root: the explicit argument, else ``$DIFFRET_DATA_ROOT``, else the cache dir.

    Returned absolute with ``~`` expanded, so messages name the real path.
    """
    if data_root is not None and str(data_root).strip():
        root = Path(data_root)
    elif os.environ.get(DATA_ROOT_ENV, "").strip():
        root = Path(os.environ[DATA_ROOT_ENV].strip())
    else:
        root = default_cache_dir()
    return root.expanduser().absolute()


def dataset_dir(data_root: str | os.PathLike | None, name: str) -> Path:
    """``<root>/<name>``: everything prepared for dataset ``name``."""
    return resolve_data_root(data_root) / name


def frames_dir(prepared: Path) -> Path:
    return prepared / "frames"


def manifests_dir(prepared: Path) -> Path:
    return prepared / "manifests"


def downloads_dir(prepared: Path) -> Path:
    return prepared / "downloads"


def source_dir(prepared: Path) -> Path:
    return prepared / "source"


PREPARED_JSON = "prepared.json"
REPORT_JSON = "prepare_report.json"
