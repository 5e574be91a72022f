"""Find the video file of a :class:`~diffret_cli.data.types.VideoEntry` on disk.

Datasets arrive in many layouts: MSRVTT keeps ``video<N>.mp4`` (some ``.webm``) in one
folder, LSMDC ``<movie>/<clip_id>.avi``, DiDeMo keeps the original Flickr file names
(``.mov``, ``.m4v``, ``.3gp``, some ending in a bare ``.``), and users often re-encode
everything to ``<name>.mp4`` (CLIP4Clip's ``compress_video.py``). Lookups go through
an index of each video directory and its direct sub-directories, built once per
(source, directories): preparing 10,000 videos must not list a folder 10,000 times.
Call :func:`clear_video_index` after adding files to a directory already indexed.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

from diffret_cli.data.types import VideoEntry

__all__ = ["VIDEO_EXTENSIONS", "find_video_file", "clear_video_index"]

#: Extensions tried, in this order, when an entry has only a video id. The first ten
#: cover the benchmarks; the rest are other containers DiDeMo's originals use.
VIDEO_EXTENSIONS: tuple[str, ...] = (
    ".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v", ".mpg", ".wmv", ".3gp", ".flv",
    ".mpeg", ".3g2", ".mts", ".m2ts", ".ts", ".ogv", ".qt",
)

# Archive debris that looks like video but is not: macOS resource forks ("._x.mp4")
# and the folder they are unpacked into.
_SKIP_DIRS = {"__MACOSX"}


@dataclass
class _DirIndex:
    """Files of one video directory and of its direct sub-directories."""

    root: Path
    by_relpath: dict[str, Path] = field(default_factory=dict)  # "a.mp4", "movie/clip.avi"
    by_name: dict[str, Path] = field(default_factory=dict)  # file name -> first path seen
    by_stem: dict[tuple[str, str], Path] = field(default_factory=dict)  # (stem, .ext lower)


def _visible(name: str) -> bool:
    return not name.startswith(".")


def _scan(root: Path) -> _DirIndex:
    """List ``root`` and one level below it. Top-level files win over sub-directory
    files of the same name; sub-directories are visited in sorted order so that the
    result does not depend on the file system's listing order."""
    index = _DirIndex(root=root)
    subdirs: list[tuple[str, Path]] = []

    def add(rel: str, name: str, path: Path) -> None:
        index.by_relpath.setdefault(rel, path)
        index.by_name.setdefault(name, path)
        stem, ext = os.path.splitext(name)
        if ext:
            index.by_stem.setdefault((stem, ext.lower()), path)

    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return index
    for entry in entries:
        if not _visible(entry.name):
            continue
        if entry.is_dir():
            if entry.name not in _SKIP_DIRS:
                subdirs.append((entry.name, Path(entry.path)))
        elif entry.is_file():
            add(entry.name, entry.name, Path(entry.path))
    for sub_name, sub in subdirs:
        try:
            children = sorted(os.scandir(sub), key=lambda e: e.name)
        except (NotADirectoryError, PermissionError):
            continue
        for entry in children:
            if _visible(entry.name) and entry.is_file():
                add(f"{sub_name}/{entry.name}", entry.name, Path(entry.path))
    return index


@functools.lru_cache(maxsize=64)
def _indexes(source: str, dirs: tuple[str, ...]) -> tuple[_DirIndex, ...]:
    return tuple(_scan(Path(source) / d) for d in dirs)


def clear_video_index() -> None:
    """Forget every directory index (after files were added or moved)."""
    _indexes.cache_clear()


def _filename_candidates(filename: str) -> list[str]:
    """The name as written, then its re-encoded forms.

    ``x.mov`` may have been re-encoded to ``x.mov.mp4`` (name kept, as the DiDeMo
    lists expect) or to ``x.mp4``; ``x.`` (a bare dot, as in DiDeMo) to ``x..mp4`` or
    ``x.mp4``.
    """
    names = [filename, filename + ".mp4"]
    stem = os.path.splitext(filename)[0] if not filename.endswith(".") else filename[:-1]
    if stem and stem + ".mp4" not in names:
        names.append(stem + ".mp4")
    return names


def find_video_file(source: Path, video_dirs: list[str], entry: VideoEntry) -> Path | None:
    """The file holding ``entry``'s video under ``source``, or None when there is none.

    Each of ``video_dirs`` (relative to ``source``) is searched with its direct
    sub-directories, earlier directories first:

    1. when ``entry.filename`` is set: that name exactly, first as a relative path
       (``movie/clip.avi``), then as a bare file name (a flat copy of a nested layout);
       only when no directory holds it, its re-encoded forms ``<name>.mp4`` and then
       ``<name without extension>.mp4``. The name the annotation gives wins over a
       re-encoded copy because it is the one the annotation means.
    2. otherwise, or when none of those exists: ``entry.video_id`` followed by one of
       :data:`VIDEO_EXTENSIONS` (extension case ignored); in each directory the
       earlier extension in that list wins.
    """
    indexes = _indexes(str(Path(source)), tuple(video_dirs))
    if entry.filename:
        rel = entry.filename.replace(os.sep, "/").lstrip("/")
        base = rel.rsplit("/", 1)[-1]
        for candidate_rel, candidate_base in zip(_filename_candidates(rel),
                                                 _filename_candidates(base)):
            for index in indexes:
                hit = index.by_relpath.get(candidate_rel)
                if hit is not None:
                    return hit
            for index in indexes:
                hit = index.by_name.get(candidate_base)
                if hit is not None:
                    return hit
    for index in indexes:
        for ext in VIDEO_EXTENSIONS:
            hit = index.by_stem.get((entry.video_id, ext))
            if hit is not None:
                return hit
    return None
