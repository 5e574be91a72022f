"""LSMDC (Rohrbach et al., IJCV 2017), the 2016 challenge files.

Tab-separated, no header, six fields per line: clip_id, start_aligned, end_aligned,
start_extracted, end_extracted, sentence. One caption per clip; the test split is the
1,000-clip public test. A clip's video is ``<movie>/<clip_id>.avi`` where the movie is
the clip id up to its last ``_`` (``0001_American_Beauty_00.00.51.926-00.00.54.679`` is
in ``0001_American_Beauty/``). The files are licence-gated by MPII: there is no download.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from diffret_cli.data.types import ItemProblem, Protocol, VideoEntry
from diffret_cli.sdk import AnnotatedDataset, build_entries, group_rows, read_tsv

FILES = {
    "train": "LSMDC16_annos_training.csv",
    "val": "LSMDC16_annos_val.csv",
    "test": "LSMDC16_challenge_1000_publictect.csv",
}
COLUMNS = ("clip_id", "start_aligned", "end_aligned", "start_extracted", "end_extracted", "sentence")
ACCESS = "https://sites.google.com/site/describingmovies/download"


def movie_of(clip_id: str) -> str:
    """The movie folder of a clip: its id up to the last ``_``."""
    return clip_id.rpartition("_")[0]


class LSMDC(AnnotatedDataset):
    name: ClassVar[str] = "lsmdc"
    splits: ClassVar[tuple[str, ...]] = ("train", "val", "test")
    protocol: ClassVar[Protocol] = "single"
    max_words: ClassVar[int] = 32
    max_frames: ClassVar[int] = 12
    hf_repo: ClassVar[str | None] = None
    subdirs: ClassVar[tuple[str, ...]] = ("LSMDC", "lsmdc")
    downloads: ClassVar = None
    download_note: ClassVar[str] = (
        "LSMDC is licence-gated: MPII grants access on request (" + ACCESS + "). Download the "
        "annotation csv files and the clips yourself and pass the folder with --source.")
    get_it: ClassVar[str] = ("LSMDC files are licence-gated by MPII: request access at " + ACCESS
                             + " and pass the downloaded folder with --source")

    def config(self) -> dict[str, Any]:
        return {}

    def video_dirs(self) -> list[str]:
        return ["videos", "avi", "."]

    def annotation_files(self, split: str) -> list[str]:
        self.check_split(split)
        return [FILES[split]]

    def parse(self, source: Path, split: str) -> tuple[list[VideoEntry], list[ItemProblem]]:
        path = self.find_file(source, FILES[split])
        rows = read_tsv(path, columns=COLUMNS)
        problems: list[ItemProblem] = []
        good = []
        for lineno, fields in rows:
            clip_id = fields[0].strip()
            if not movie_of(clip_id):
                problems.append(ItemProblem(clip_id, "bad-clip-id",
                                            f"line {lineno}: expected <movie>_<start>-<end>, "
                                            "no '_' to find the movie folder", str(path)))
                continue
            good.append((lineno, clip_id, fields[5]))
        ids, captions, dups = group_rows(good, path=path, single=True)
        videos, more = build_entries(ids, captions, captions_file=path,
                                     filename=lambda cid: f"{movie_of(cid)}/{cid}.avi")
        return videos, problems + dups + more
