"""DiDeMo (Hendricks et al., ICCV 2017), paragraph retrieval.

Annotations: ``{train,val,test}_data.json`` from LisaAnne/LocalizingMoments, a list of
``{annotation_id, description, video, times, dl_link, num_segments}``. Splits: the
collaborative-experts lists ``{train,val,test}_list.txt``, restricted to videos that
have annotations (the json holds more videos than the lists).

A video is named by its FULL original file name, the ``video`` field, extension kept
(``.mov``, ``.m4v``, ... and some ending in a bare ``.``): that is both the entry's
``video_id`` and its ``filename``. Stripping the extension, as some loaders do, makes
the names match nothing.

Paragraph order: the json lists a video's descriptions in an arbitrary order (entries
are scattered through the file, not grouped or sorted), while ``annotation_id`` is a
unique id assigned as descriptions were collected. Sorting by it makes the paragraph a
function of the annotations rather than of how the file was serialised.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from diffret_cli.data.types import ItemProblem, Protocol, VideoEntry
from diffret_cli.errors import AnnotationError
from diffret_cli.sdk import (
    AnnotatedDataset, Caption, DownloadSource, build_entries, load_json, read_id_list, require_keys, require_str,
)

DATA_URL = "https://raw.githubusercontent.com/LisaAnne/LocalizingMoments/master/data/{split}_data.json"
LIST_URL = ("https://raw.githubusercontent.com/albanie/collaborative-experts/master/misc/"
            "datasets/didemo/{split}_list.txt")
ENTRY = "an object {annotation_id, description, video, times, dl_link, num_segments}"


class DiDeMo(AnnotatedDataset):
    name: ClassVar[str] = "didemo"
    splits: ClassVar[tuple[str, ...]] = ("train", "val", "test")
    protocol: ClassVar[Protocol] = "paragraph"
    max_words: ClassVar[int] = 64
    max_frames: ClassVar[int] = 64
    hf_repo: ClassVar[str | None] = "friedrichor/DiDeMo"
    subdirs: ClassVar[tuple[str, ...]] = ("DiDeMo", "didemo")
    get_it: ClassVar[str] = ("get <split>_data.json from " + DATA_URL.format(split="<split>")
                             + " and <split>_list.txt from " + LIST_URL.format(split="<split>"))
    downloads: ClassVar[tuple[DownloadSource, ...] | None] = tuple(
        DownloadSource(f"{split}-{kind}", (url.format(split=split),), name.format(split=split),
                       extract=False, note=note)
        for split in ("train", "val", "test")
        for kind, url, name, note in (
            ("annotations", DATA_URL, "{split}_data.json", "LocalizingMoments annotations"),
            ("list", LIST_URL, "{split}_list.txt", "collaborative-experts split list"),
        )
    )
    download_note: ClassVar[str] = (
        "Videos come from YFCC100M via LocalizingMoments' download/download_videos.py "
        "(github.com/LisaAnne/LocalizingMoments); keep their original file names.")

    def config(self) -> dict[str, Any]:
        return {}

    def video_dirs(self) -> list[str]:
        return ["videos", "."]

    def annotation_files(self, split: str) -> list[str]:
        self.check_split(split)
        return [f"{split}_data.json", f"{split}_list.txt"]

    def parse(self, source: Path, split: str) -> tuple[list[VideoEntry], list[ItemProblem]]:
        data_path = self.find_file(source, f"{split}_data.json")
        list_path = self.find_file(source, f"{split}_list.txt")
        names, problems = read_id_list(list_path)
        captions = read_descriptions(data_path)
        videos, more = build_entries(names, captions, captions_file=data_path, paragraph=True,
                                     filename=lambda name: name)
        return videos, problems + more


def read_descriptions(path: Path) -> dict[str, list[Caption]]:
    """Descriptions per video file name, sorted by ``annotation_id``."""
    entries = load_json(path, expect=list, what=f"a list of {ENTRY}")
    by_video: dict[str, list[tuple[int, Caption]]] = {}
    for i, entry in enumerate(entries):
        where = f"[{i}]"
        require_keys(entry, ("annotation_id", "description", "video"), path=path, where=where,
                     what=ENTRY)
        aid = entry["annotation_id"]
        if not isinstance(aid, int) or isinstance(aid, bool):
            raise AnnotationError(f"{path}: {where}.annotation_id is {aid!r}, expected an integer",
                                  hint="check that this is the right file for this dataset")
        video = require_str(entry["video"], path=path, where=f"{where}.video")
        text = require_str(entry["description"], path=path, where=f"{where}.description")
        by_video.setdefault(video, []).append((aid, (f"{where} (annotation_id {aid})", text)))
    return {video: [cap for _, cap in sorted(items, key=lambda item: item[0])]
            for video, items in by_video.items()}
