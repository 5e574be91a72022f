"""Plain data types shared by dataset plugins, the prepare pipeline and training.

A dataset plugin turns the annotation files users already have into
:class:`SplitAnnotations`: a list of :class:`VideoEntry` (one per video, with all of its
captions) plus the per-item problems found while parsing (ids listed in a split file
with no annotation, empty captions, ...). Per-item problems never stop a run; malformed
files do (:class:`~diffret_cli.errors.AnnotationError`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

#: How a split is evaluated.
#: - "single": one caption per video, the caption/video matrix is square (MSRVTT 1k-A, LSMDC)
#: - "multi": many captions per video; every caption is a text-to-video query and
#:   video-to-text scores each video's caption group by its best caption (MSVD)
#: - "paragraph": one query per video, all its sentences joined (ActivityNet, DiDeMo)
Protocol = Literal["single", "multi", "paragraph"]


@dataclass(frozen=True)
class VideoEntry:
    """One video of a split and its captions.

    ``filename`` is the file name relative to the dataset's video directory when the
    annotation names it exactly (DiDeMo keeps original extensions); otherwise ``None``
    and the plugin's ``locate_video`` searches by ``video_id``.
    ``start``/``end`` (seconds) restrict decoding to a clip of the file when set.
    """

    video_id: str
    captions: tuple[str, ...]
    filename: str | None = None
    start: float | None = None
    end: float | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["captions"] = list(self.captions)
        return d


@dataclass(frozen=True)
class ItemProblem:
    """A per-item problem: recorded, reported, never fatal."""

    item: str  # video id (or caption id)
    reason: str  # short machine-friendly code, e.g. "missing-annotation", "empty-caption"
    detail: str = ""
    file: str = ""  # the annotation or video file concerned


@dataclass
class SplitAnnotations:
    """Parsed annotations of one split."""

    dataset: str
    split: str
    protocol: Protocol
    videos: list[VideoEntry]
    problems: list[ItemProblem] = field(default_factory=list)

    @property
    def num_captions(self) -> int:
        return sum(len(v.captions) for v in self.videos)

    def caption_pairs(self) -> list[tuple[int, str]]:
        """(video index, caption) for every caption, in order: the text-to-video queries."""
        return [(i, c) for i, v in enumerate(self.videos) for c in v.captions]
