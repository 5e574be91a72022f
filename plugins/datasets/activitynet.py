"""ActivityNet Captions (Krishna et al., ICCV 2017), paragraph retrieval.

Files from the dense-captioning release ``captions.zip``: ``train.json`` and
``val_1.json`` (``{"v_<id>": {duration, timestamps, sentences}}``) and the id lists
``train_ids.json`` / ``val_ids.json``. One query per video: its sentences, stripped and
joined with one space. Listed ids with no captions (train.json covers 10,009 of the
10,024 train ids) are item problems. Video files drop the ``v_`` prefix:
``<id>.mp4`` / ``.mkv`` / ``.webm``.

Splits. "test" is ``val_1.json`` restricted to ``val_ids.json`` (4,917 videos), as in
every paper: the release has no public test captions. "val" must then come from
elsewhere, or model selection would look at the test videos (the official code, as
CLIP4Clip before it, validates on ``val_1.json``). By default val is a fixed 1-in-20
subset of the training ids, chosen by a hash of the id (:func:`is_held_out`: 509 of
the 10,024, all with captions), and those videos are removed from train (9,500 left
with captions). ``paper_splits=True`` restores the official setting: train on every
training video and validate on ``val_1.json``. What it gives up: validation is then
the test set, so the selected checkpoint has seen the test videos' scores.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, ClassVar

from diffret_cli.sdk import (
    AnnotatedDataset, Caption, ConfigError, DownloadSource, ItemProblem, Protocol, VideoEntry, build_entries,
    load_json, load_json_id_list, require_keys, require_list, require_str,
)

CAPTIONS_URL = "https://cs.stanford.edu/people/ranjaykrishna/densevid/captions.zip"
VIDEOS_FORM = "http://activity-net.org/download.html"
TRAIN_FILES = ("train.json", "train_ids.json")
TEST_FILES = ("val_1.json", "val_ids.json")
#: one training video in HOLD_OUT_EVERY is held out as the validation split
HOLD_OUT_EVERY = 20
VIDEO = "an object {duration, timestamps, sentences}"


def file_stem(video_key: str) -> str:
    """``v_<id>`` -> ``<id>``, the name the video files carry."""
    return video_key[2:] if video_key.startswith("v_") else video_key


def is_held_out(video_key: str) -> bool:
    """Whether training video ``video_key`` belongs to the default validation split.

    A hash of the id, not its position, so the choice does not depend on the order or
    completeness of ``train_ids.json`` and is the same on every machine.
    """
    return int(hashlib.sha1(video_key.encode("utf-8")).hexdigest(), 16) % HOLD_OUT_EVERY == 0


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

    def __init__(self, *, paper_splits: bool = False):
        if not isinstance(paper_splits, bool):
            raise ConfigError(f"activitynet: paper_splits={paper_splits!r}; allowed: true, false",
                              hint="paper_splits=false validates on 1 in 20 training videos held out of "
                                   "training (default); true validates on val_1.json, the test set")
        self.paper_splits = paper_splits

    def config(self) -> dict[str, Any]:
        return {"paper_splits": self.paper_splits}

    def files(self, split: str) -> tuple[str, str]:
        """(captions file, ids file) that ``split`` is read from."""
        if split == "test" or (split == "val" and self.paper_splits):
            return TEST_FILES
        return TRAIN_FILES

    def video_dirs(self) -> list[str]:
        return ["videos", "Activity_Videos", "."]

    def annotation_files(self, split: str) -> list[str]:
        self.check_split(split)
        return list(self.files(split))

    def parse(self, source: Path, split: str) -> tuple[list[VideoEntry], list[ItemProblem]]:
        captions_name, ids_name = self.files(split)
        ids_path = self.find_file(source, ids_name)
        captions_path = self.find_file(source, captions_name)
        ids = load_json_id_list(ids_path)
        if not self.paper_splits and split in ("train", "val"):
            ids = [i for i in ids if is_held_out(i) == (split == "val")]
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
