"""The dataset plugin interface: a benchmark's files in, :class:`SplitAnnotations` out.

:class:`DatasetPlugin` is the base of every dataset plugin (group ``diffret.datasets``);
:class:`AnnotatedDataset` is the base for a benchmark read from its distributed
annotation files under a source folder (the readers it uses are in
:mod:`diffret_cli.data.readers`). Both belong to the data layer: they import nothing
from the model, training or CLI layers. Third parties import them from
:mod:`diffret_cli.sdk`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from diffret_cli.configurable import ConfigurablePlugin
from diffret_cli.data.locate import find_video_file
from diffret_cli.data.types import ItemProblem, Protocol, SplitAnnotations, VideoEntry
from diffret_cli.errors import AnnotationError, ConfigError

#: sub-folders searched (after the source root) in every annotated dataset: the names
#: the common bundles and repositories unpack to
COMMON_SUBDIRS: tuple[str, ...] = ("anns", "annotations", "data")


@dataclass(frozen=True)
class DownloadSource:
    """Where a dataset's files can be fetched from (for ``diffret data prepare``)."""

    name: str  # e.g. "annotations", "videos"
    urls: tuple[str, ...]  # tried in order
    filename: str  # saved as
    sha256: str | None = None
    size: int | None = None
    extract: bool = True
    note: str = ""


class DatasetPlugin(ConfigurablePlugin, ABC):
    """Reads a benchmark's files exactly as distributed.

    ``load_split(source, split)`` parses the annotation files under ``source`` (the
    official layout) and returns :class:`SplitAnnotations`; it raises
    :class:`~diffret_cli.errors.AnnotationError` (file, line or key, what was expected)
    on a malformed file and records per-item problems without raising.
    """

    name: ClassVar[str]
    splits: ClassVar[tuple[str, ...]]
    protocol: ClassVar[Protocol]
    #: paper settings for this benchmark
    max_words: ClassVar[int] = 32
    max_frames: ClassVar[int] = 12
    #: None when the data cannot be downloaded (LSMDC), with the reason in download_note
    downloads: ClassVar[tuple[DownloadSource, ...] | None] = None
    download_note: ClassVar[str] = ""

    @abstractmethod
    def annotation_files(self, split: str) -> list[str]:
        """Paths (relative to the source dir) of the files ``load_split(split)`` reads."""

    @abstractmethod
    def load_split(self, source: Path, split: str) -> SplitAnnotations:
        ...

    def video_dirs(self) -> list[str]:
        """Directories (relative to the source dir) searched for video files."""
        return ["videos", "."]

    def locate_video(self, source: Path, entry: VideoEntry) -> Path | None:
        """The video file of ``entry`` under ``source``, or None when it is missing."""
        return find_video_file(source, self.video_dirs(), entry)

    #: frames per second of what ``generate`` returns (generated datasets only)
    generated_fps: ClassVar[float] = 1.0

    def generate(self, entry: VideoEntry) -> np.ndarray | None:
        """Frames of a procedurally generated video ([T,H,W,3] uint8), or None for a
        dataset read from files. Lets ``synthetic`` skip video files entirely."""
        return None


class AnnotatedDataset(DatasetPlugin):
    """A benchmark read from its distributed annotation files under a source dir.

    Subclasses set ``subdirs`` (their bundle's own folder names, searched before the
    common ones), ``get_it`` (where the annotation files come from, for the hint of a
    missing-file error; ``file_hints`` overrides it for single files that come from
    elsewhere) and implement :meth:`parse`.
    """

    subdirs: ClassVar[tuple[str, ...]] = ()
    get_it: ClassVar[str] = ""
    file_hints: ClassVar[dict[str, str]] = {}
    #: the Hugging Face Hub copy of the dataset, if one is known (schema unverified)
    hf_repo: ClassVar[str | None] = None

    def config(self) -> dict[str, Any]:
        return {}

    def search_dirs(self) -> tuple[str, ...]:
        return (".",) + tuple(self.subdirs) + COMMON_SUBDIRS

    def find_file(self, source: Path, name: str) -> Path:
        """``name`` at the source root or in one of :meth:`search_dirs`."""
        tried = [Path(source) / d / name if d != "." else Path(source) / name
                 for d in self.search_dirs()]
        for path in tried:
            if path.is_file():
                return path
        raise AnnotationError(
            f"{self.name}: annotation file {name} not found; looked for:\n  "
            + "\n  ".join(str(p) for p in tried),
            hint=self.file_hints.get(name, self.get_it) + f"; put it in {source} or one of its sub-folders "
            f"{', '.join(d for d in self.search_dirs() if d != '.')}",
        )

    def resolve_annotation_files(self, source: Path, split: str) -> list[Path]:
        """Where each of :meth:`annotation_files` is under ``source`` (raises if missing)."""
        self.check_split(split)
        return [self.find_file(Path(source), name) for name in self.annotation_files(split)]

    def check_split(self, split: str) -> None:
        if split not in self.splits:
            raise ConfigError(f"{self.name} has no split {split!r}; available: {', '.join(self.splits)}",
                              hint=f"use one of: {', '.join(self.splits)}")

    def split_protocol(self, split: str) -> Protocol:
        """How ``split`` is evaluated; the class ``protocol`` unless a split differs."""
        return self.protocol

    def load_split(self, source: Path, split: str) -> SplitAnnotations:
        self.check_split(split)
        source = Path(source)
        if not source.is_dir():
            raise AnnotationError(f"{self.name}: source directory {source} does not exist",
                                  hint=self.get_it)
        videos, problems = self.parse(source, split)
        return SplitAnnotations(dataset=self.name, split=split, protocol=self.split_protocol(split),
                                videos=videos, problems=problems)

    @abstractmethod
    def parse(self, source: Path, split: str) -> tuple[list[VideoEntry], list[ItemProblem]]:
        """Videos and per-item problems of ``split``; raises on a malformed file."""
