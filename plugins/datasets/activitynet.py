"""ActivityNet Captions (Krishna et al., ICCV 2017), paragraph retrieval.

Files from the dense-captioning release ``captions.zip``: ``train.json`` and
``val_1.json`` (``{"v_<id>": {duration, timestamps, sentences}}``) and the id lists
``train_ids.json`` / ``val_ids.json``. One query per video: its sentences, stripped and
joined with one space. "val" and "test" both mean ``val_1.json`` restricted to
``val_ids.json`` (the field has no public test captions). Listed ids with no captions
(train.json covers 10,009 of the 10,024 train ids) are item problems. Video files drop
the ``v_`` prefix: ``<id>.mp4`` / ``.mkv`` / ``.webm``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from diffret_cli.data.types import ItemProblem, Protocol, VideoEntry
from diffret_cli.sdk import (
    AnnotatedDataset, Caption, DownloadSource, build_entries, load_json, load_json_id_list, require_keys,
    require_list, require_str,
)

CAPTIONS_URL = "https://cs.stanford.edu/people/ranjaykrishna/densevid/captions.zip"
VIDEOS_FORM = "http://activity-net.org/download.html"
FILES = {
    "train": ("train.json", "train_ids.json"),
    "val": ("val_1.json", "val_ids.json"),
    "test": ("val_1.json", "val_ids.json"),
}
VIDEO = "an object {duration, timestamps, sentences}"


def file_stem(video_key: str) -> str:
    """``v_<id>`` -> ``<id>``, the name the video files carry."""
    return video_key[2:] if video_key.startswith("v_") else video_key


class ActivityNet(AnnotatedDataset):
    name: ClassVar[str] = "activitynet"
    splits: ClassVar[tuple[str, ...]] = ("train", "val", "test")
    protocol: ClassVar[Protocol] = "paragraph"
    max_words: ClassVar[int] = 64
    max_frames: ClassVar[int] = 64
    hf_repo: ClassVar[str | None] = "friedrichor/ActivityNet_Captions"
    subdirs: ClassVar[tuple[str, ...]] = ("captions", "ActivityNet", "activitynet")
    get_it: ClassVar[str] = f"download and unzip the ActivityNet Captions release ({CAPTIONS_URL})"
    downloads: ClassVar[tuple[DownloadSource, ...] | None] = (
        DownloadSource("annotations", (CAPTIONS_URL,), "captions.zip",
                       note="dense-captioning release: train.json, val_1.json, val_2.json, "
                       "train_ids.json, val_ids.json, test_ids.json"),
    )
    download_note: ClassVar[str] = (
        "Videos are not downloadable directly: request them from the ActivityNet "
        f"organisers with the form at {VIDEOS_FORM}, then pass the folder with --source.")

    def config(self) -> dict[str, Any]:
        return {}

    def video_dirs(self) -> list[str]:
        return ["videos", "Activity_Videos", "."]

    def annotation_files(self, split: str) -> list[str]:
        self.check_split(split)
        return list(FILES[split])

    def parse(self, source: Path, split: str) -> tuple[list[VideoEntry], list[ItemProblem]]:
        captions_name, ids_name = FILES[split]
        ids_path = self.find_file(source, ids_name)
        captions_path = self.find_file(source, captions_name)
        ids = load_json_id_list(ids_path)
        captions = read_sentences(captions_path)
        return build_entries(ids, captions, captions_file=captions_path, paragraph=True,
                             video_id=file_stem)


def read_sentences(path: Path) -> dict[str, list[Caption]]:
    """Sentences per ``v_<id>`` key, in file order (the order of the events)."""
    data = load_json(path, expect=dict, what='an object {"v_<id>": {duration, timestamps, sentences}}')
    captions: dict[str, list[Caption]] = {}
    for key, video in data.items():
        require_keys(video, ("sentences",), path=path, where=f"[{key!r}]", what=VIDEO)
        sentences = require_list(video["sentences"], path=path, where=f"[{key!r}].sentences",
                                 what="a list of strings")
        captions[key] = [(f"[{key!r}].sentences[{j}]",
                          require_str(s, path=path, where=f"[{key!r}].sentences[{j}]"))
                         for j, s in enumerate(sentences)]
    return captions
