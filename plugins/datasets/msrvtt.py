"""MSR-VTT (Xu et al., CVPR 2016) from CLIP4Clip's ``msrvtt_data.zip``, as distributed.

That bundle holds ``MSRVTT_data.json``, ``MSRVTT_train.9k.csv``, ``MSRVTT_train.7k.csv``
and ``MSRVTT_JSFUSION_test.csv``; nothing else is needed.

- val: the 497 official validation videos, the videos whose ``split`` is ``validate`` in
  ``MSRVTT_data.json`` (video6513 to video7009), with all their captions. Some copies
  also ship ``MSRVTT_val.full.csv`` with the same ids; it is read only when the json
  has no ``videos`` list. Val is *not* the test set, which many codebases evaluate on
  under the name "val".
- train: the 9k (default) or 7k list **minus the validation videos**. Both lists contain
  all 497 of them, so training on a whole list and selecting checkpoints on val would
  select on training videos. Held out, 9k leaves 8,503 training videos and 7k leaves
  6,513 (exactly the official train split).
- test: 1k-A (JSFusion), 1,000 (video, caption) pairs from ``MSRVTT_JSFUSION_test.csv``;
  it shares no video with either list.

``paper_splits=True`` trains on the whole list as the official code did (9,000 videos).
What it gives up: the validation videos are then training videos, so validation scores,
and the checkpoint chosen by them, no longer estimate performance on unseen videos.
(The official code, like CLIP4Clip, validated on the 1k-A test file itself.)

The test split is evaluated "single" (a square caption/video matrix); train and val keep
every caption of a video, so they are "multi" (see :meth:`MSRVTT.split_protocol`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from diffret_cli.sdk import (
    AnnotatedDataset, AnnotationError, Caption, ConfigError, DownloadSource, ItemProblem, Protocol, VideoEntry,
    build_entries, group_rows, load_json, read_csv, require_keys, require_list, require_str,
)

ANNOTATIONS_URL = "https://github.com/ArrowLuo/CLIP4Clip/releases/download/v0.0/msrvtt_data.zip"
VIDEOS_URL = "https://www.robots.ox.ac.uk/~maxbain/frozen-in-time/data/MSRVTT.zip"

TRAIN_LISTS = {"9k": "MSRVTT_train.9k.csv", "7k": "MSRVTT_train.7k.csv"}
VAL_LIST = "MSRVTT_val.full.csv"  # optional: the json's videos[].split says the same
TEST_CSV = "MSRVTT_JSFUSION_test.csv"
DATA_JSON = "MSRVTT_data.json"
VAL_SPLIT = "validate"  # videos[].split value of the official validation videos
SENTENCE = "an object {sen_id, video_id, caption}"
VIDEO = "an object {video_id, split, ...}"
TOP = 'an object {"videos": [...], "sentences": [...]}'


class MSRVTT(AnnotatedDataset):
    name: ClassVar[str] = "msrvtt"
    splits: ClassVar[tuple[str, ...]] = ("train", "val", "test")
    protocol: ClassVar[Protocol] = "single"
    max_words: ClassVar[int] = 32
    max_frames: ClassVar[int] = 12
    hf_repo: ClassVar[str | None] = "friedrichor/MSR-VTT"
    subdirs: ClassVar[tuple[str, ...]] = ("msrvtt_data", "MSRVTT")
    get_it: ClassVar[str] = f"download and unzip CLIP4Clip's msrvtt_data.zip ({ANNOTATIONS_URL})"
    downloads: ClassVar[tuple[DownloadSource, ...] | None] = (
        DownloadSource("annotations", (ANNOTATIONS_URL,), "msrvtt_data.zip",
                       note="CLIP4Clip bundle: MSRVTT_data.json, MSRVTT_train.9k.csv, "
                       "MSRVTT_train.7k.csv, MSRVTT_JSFUSION_test.csv (unzips to msrvtt_data/)"),
        DownloadSource("videos", (VIDEOS_URL,), "MSRVTT.zip",
                       note="Frozen-in-Time copy of the 10,000 videos; unzips to MSRVTT/videos/all/"),
    )

    def __init__(self, *, train_list: str = "9k", paper_splits: bool = False):
        if train_list not in TRAIN_LISTS:
            raise ConfigError(f"msrvtt: train_list={train_list!r}; allowed: {', '.join(TRAIN_LISTS)}",
                              hint="train_list=9k (CLIP4Clip, DiffusionRet) or train_list=7k")
        if not isinstance(paper_splits, bool):
            raise ConfigError(f"msrvtt: paper_splits={paper_splits!r}; allowed: true, false",
                              hint="paper_splits=false holds the 497 validation videos out of training "
                                   "(default); true trains on them too, as the paper did")
        self.train_list = train_list
        self.paper_splits = paper_splits

    def config(self) -> dict[str, Any]:
        return {"train_list": self.train_list, "paper_splits": self.paper_splits}

    def split_protocol(self, split: str) -> Protocol:
        # 1k-A pairs one caption with each video; train and val keep all ~20 captions
        return "single" if split == "test" else "multi"

    def video_dirs(self) -> list[str]:
        return ["videos", "MSRVTT/videos/all", "videos/all", "."]

    def annotation_files(self, split: str) -> list[str]:
        self.check_split(split)
        if split == "test":
            return [TEST_CSV]
        if split == "val":
            return [DATA_JSON]
        return [TRAIN_LISTS[self.train_list], DATA_JSON]

    def parse(self, source: Path, split: str) -> tuple[list[VideoEntry], list[ItemProblem]]:
        if split == "test":
            csv_path = self.find_file(source, TEST_CSV)
            rows = read_csv(csv_path, columns=("key", "vid_key", "video_id", "sentence"))
            ids, captions, problems = group_rows(
                ((n, f[2].strip(), f[3]) for n, f in rows), path=csv_path, single=True)
            videos, more = build_entries(ids, captions, captions_file=csv_path)
            return videos, problems + more
        json_path = self.find_file(source, DATA_JSON)
        data = load_json(json_path, expect=dict, what=TOP)
        val_ids = self.validation_ids(source, data, json_path)
        if split == "val":
            ids = val_ids
        else:
            list_path = self.find_file(source, TRAIN_LISTS[self.train_list])
            ids = [f[0].strip() for _, f in read_csv(list_path, columns=("video_id",))]
            if not self.paper_splits:
                held_out = set(val_ids)
                ids = [i for i in ids if i not in held_out]
        return build_entries(ids, sentences_of(data, json_path), captions_file=json_path)

    def validation_ids(self, source: Path, data: dict, json_path: Path) -> list[str]:
        """The official validation videos: ``videos[].split == "validate"`` in the json, or
        the ids of ``MSRVTT_val.full.csv`` when the json has no ``videos`` list."""
        if "videos" in data:
            return split_ids(data, json_path, VAL_SPLIT)
        try:
            csv_path = self.find_file(source, VAL_LIST)
        except AnnotationError:
            raise AnnotationError(
                f"{json_path}: no \"videos\" list (each video's official split), and no {VAL_LIST} "
                "to take the validation videos from",
                hint=f"use the MSRVTT_data.json of msrvtt_data.zip ({ANNOTATIONS_URL}), or put "
                     f"{VAL_LIST} (header video_id, ids video6513 to video7009) next to it") from None
        return [f[0].strip() for _, f in read_csv(csv_path, columns=("video_id",))]


def split_ids(data: dict, path: Path, split: str) -> list[str]:
    """Ids of the videos whose ``split`` is ``split`` in ``MSRVTT_data.json``, in file order."""
    videos = require_list(data["videos"], path=path, where='"videos"', what=f"a list of {VIDEO}")
    out = []
    for i, video in enumerate(videos):
        where = f"videos[{i}]"
        require_keys(video, ("video_id", "split"), path=path, where=where, what=VIDEO)
        if require_str(video["split"], path=path, where=f"{where}.split") == split:
            out.append(require_str(video["video_id"], path=path, where=f"{where}.video_id"))
    return out


def sentences_of(data: dict, path: Path) -> dict[str, list[Caption]]:
    """Captions per video id from the json's ``sentences``, in file order."""
    require_keys(data, ("sentences",), path=path, where="the top level", what=TOP)
    sentences = require_list(data["sentences"], path=path, where='"sentences"', what=f"a list of {SENTENCE}")
    captions: dict[str, list[Caption]] = {}
    for i, sen in enumerate(sentences):
        where = f"sentences[{i}]"
        require_keys(sen, ("video_id", "caption"), path=path, where=where, what=SENTENCE)
        vid = require_str(sen["video_id"], path=path, where=f"{where}.video_id")
        text = require_str(sen["caption"], path=path, where=f"{where}.caption")
        captions.setdefault(vid, []).append((where, text))
    return captions

