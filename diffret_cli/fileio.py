"""Atomic writes: the one place checkpoints, runs and prepared data write files.

Every writer here leaves a reader (another process, or the same program after a crash
or ``kill -9``) seeing the old content or the new one, never half of either:

- a file is written to a temp name beside its target (same directory, so the same
  filesystem and ``os.replace`` is atomic), fsync'd, renamed over the target, and the
  directory fsync'd so the rename survives a power cut;
- a folder is swapped in one step where the kernel allows it (Linux
  ``renameat2(RENAME_EXCHANGE)``), so the old folder or the new one is always in place.

Temp files and folders start with :data:`TEMP_PREFIX`; :func:`is_temp_name` tells
them apart, so sweepers and listings can skip or delete what a crash left behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Iterator

__all__ = [
    "TEMP_PREFIX", "atomic_path", "atomic_write_bytes", "atomic_write_text", "atomic_write_json",
    "replace_dir", "fsync_dir", "is_temp_name", "temp_sibling",
]

#: Prefix of every temp file and folder the writers below create.
TEMP_PREFIX = ".tmp-"


def is_temp_name(name: str) -> bool:
    """True for the temp files and folders these writers leave behind on a crash."""
    return name.startswith(TEMP_PREFIX)


def temp_sibling(path: str | os.PathLike, tag: str = "") -> Path:
    """A fresh temp name beside ``path`` (same folder, hence same filesystem)."""
    path = Path(path)
    return path.with_name(f"{TEMP_PREFIX}{tag}{os.getpid()}-{os.urandom(4).hex()}-{path.name}")


def fsync_dir(directory: str | os.PathLike) -> None:
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


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path``; when the block succeeds, fsync it and rename it
    over ``path``. On any exception (KeyboardInterrupt included) the temp file is removed
    and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically, as UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON (key order kept, trailing newline) atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


# ------------------------------------------------------------------------- folders
_RENAME_EXCHANGE = 2  # linux/fs.h


def _renameat2():
    """libc's renameat2, or None (not Linux, old glibc, or no libc found)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths; False where the kernel or filesystem cannot."""
    fn = _renameat2()
    if fn is None:
        return False
    at_fdcwd = -100
    rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV, errno.EPERM):
        return False  # e.g. a filesystem without RENAME_EXCHANGE support
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def replace_dir(tmp: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Put the finished folder ``tmp`` in place of ``dst`` (which may not exist yet).

    On Linux the two folders are exchanged in one ``renameat2(RENAME_EXCHANGE)`` call,
    so a reader always finds ``dst`` holding the complete old or the complete new
    folder. Elsewhere (or on a filesystem without it) the old folder is renamed aside
    and the new one renamed in: two renames, so for an instant ``dst`` does not exist,
    but it is never half-written. The old folder is deleted afterwards either way.
    """
    tmp, dst = Path(tmp), Path(dst)
    if not tmp.is_dir():
        raise FileNotFoundError(f"replace_dir: {tmp} is not a directory")
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() and _exchange(tmp, dst):
        fsync_dir(dst.parent)
        shutil.rmtree(tmp, ignore_errors=True)  # now holds the old folder
        return
    old = temp_sibling(dst, "old-")
    if dst.exists():
        os.replace(dst, old)
    os.replace(tmp, dst)
    fsync_dir(dst.parent)
    shutil.rmtree(old, ignore_errors=True)
