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

import contextlib
import os
import shutil
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


# ----------------------------------------------------------------------- safe writes
@contextlib.contextmanager
def atomic_path(path: Path):
    """Yield a temp path beside ``path``; when the block succeeds, fsync it and rename it
    over ``path``, so readers see the old file or the new one, never half.

    Same directory (same filesystem, so ``os.replace`` is atomic), fsync'd before the
    rename and the directory fsync'd after it (where supported): a crash or ``kill -9``
    leaves at most a stray ``.tmp-*`` file that nothing reads.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{os.urandom(4).hex()}-{path.name}")
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def replace_dir(tmp: Path, final: Path) -> None:
    """Swap the finished folder ``tmp`` into ``final``: readers see the old folder or the
    new one (the old one is moved aside first, then removed), never a half-copied one."""
    tmp, final = Path(tmp), Path(final)
    old = final.with_name(f".tmp-old-{os.urandom(4).hex()}-{final.name}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def fsync_dir(directory: Path) -> None:
    """Persist a rename in ``directory`` (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def is_temp_name(name: str) -> bool:
    """True for the temp files and directories our atomic writers leave behind on a crash."""
    return name.startswith(".tmp-")
