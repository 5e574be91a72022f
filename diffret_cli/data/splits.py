"""Which splits of a dataset can be prepared from a source folder, and how splits overlap.

A source often holds only some splits' files: the public test annotations of DiDeMo or
LSMDC are what ``diffret eval --out-domain msrvtt:didemo`` needs, and LSMDC's training
files are licence-gated. ``prepare`` prepares every split whose files are present and
lists the others (:class:`AbsentSplit`) with where to get them and the ``--split`` flag.

Splits must not share videos: a validation video that is also a training video makes
model selection score what the model trained on. :func:`shared_videos` counts, for
every pair of splits, the videos they share; ``prepare`` records it and ``data info``
reports it (all zero for every built-in dataset at its defaults).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from diffret_cli.data.plugin import AnnotatedDataset, DatasetPlugin
from diffret_cli.errors import DiffretError


@dataclass(frozen=True)
class AbsentSplit:
    """A split that cannot be prepared from the source: which files are missing and why."""

    split: str
    files: tuple[str, ...]  # annotation files of the split that were not found
    message: str  # what is missing, naming the folder searched
    hint: str  # where to get the files
    command: str  # the command that prepares the split once the files are there

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["files"] = list(self.files)
        return d


def names_under(base: Path, *, depth: int = 3) -> set[str]:
    """File names up to ``depth`` folders below ``base`` (to tell "the files are here")."""
    names: set[str] = set()
    base_depth = len(base.parts)
    for dirpath, dirnames, filenames in os.walk(base):
        if len(Path(dirpath).parts) - base_depth >= depth:
            dirnames.clear()
        names.update(filenames)
    return names


def _found(plugin: AnnotatedDataset, source: Path, name: str) -> bool:
    try:
        plugin.find_file(source, name)
    except DiffretError:
        return False
    return True


def missing_files(plugin: DatasetPlugin, source: Path, split: str) -> tuple[list[str], str, str]:
    """(missing annotation files, message, hint) of ``split`` under ``source``; no files
    missing means the split can be prepared (its files may still be malformed)."""
    files = list(plugin.annotation_files(split))
    if not files:
        return [], "", ""
    if isinstance(plugin, AnnotatedDataset):
        try:  # resolves alternatives too (MSVD: the pickle or the json captions)
            plugin.resolve_annotation_files(source, split)
            return [], "", ""
        except DiffretError as exc:
            missing = [f for f in files if not _found(plugin, source, f)] or files
            return missing, exc.message, exc.hint or ""
    names = names_under(source)
    missing = [f for f in files if not (source / f).exists() and Path(f).name not in names]
    note = getattr(plugin, "download_note", "") or ""
    return missing, f"{plugin.name}: {', '.join(missing)} not found under {source}", note


def check_splits(plugin: DatasetPlugin, source: Path, splits: Iterable[str], *,
                 name: str | None = None) -> tuple[list[str], list[AbsentSplit]]:
    """Split ``splits`` into those whose annotation files are all under ``source`` and
    the :class:`AbsentSplit` records of the rest."""
    ready: list[str] = []
    absent: list[AbsentSplit] = []
    name = name or plugin.name
    for split in splits:
        missing, message, hint = missing_files(plugin, Path(source), split)
        if not missing:
            ready.append(split)
            continue
        absent.append(AbsentSplit(split, tuple(missing), message, hint,
                                  f"diffret data prepare {name} --source {source} --split {split}"))
    return ready, absent


def shared_videos(ids_by_split: Mapping[str, Iterable[str]]) -> dict[str, dict[str, int]]:
    """For every split, how many of its videos each other split also lists."""
    sets = {s: set(ids) for s, ids in ids_by_split.items()}
    return {s: {o: len(a & b) for o, b in sets.items() if o != s} for s, a in sets.items()}
