"""MSR-VTT (Xu et al., CVPR 2016) in CLIP4Clip's ``msrvtt_data`` layout.

- train: the 9k (default) or 7k video list, each video with all of its ~20 captions
  from ``MSRVTT_data.json``;
- val: the official 497-video validation list ``MSRVTT_val.full.csv`` (video6513 to
  video7009) with captions from the json; it is *not* the test set, which many
  codebases evaluate on under the name "val";
- test: 1k-A (JSFusion), 1,000 (video, caption) pairs from ``MSRVTT_JSFUSION_test.csv``.

The test split is evaluated "single" (a square caption/video matrix); train and val keep
every caption of a video, so they are "multi" (see :meth:`MSRVTT.split_protocol`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from diffret_cli.data.types import ItemProblem, Protocol, VideoEntry
from diffret_cli.errors import ConfigError
from diffret_cli.sdk import (
    AnnotatedDataset, Caption, DownloadSource, build_entries, group_rows, load_json, read_csv, require_keys,
    require_list, require_str,
)

ANNOTATIONS_URL = "https://github.com/ArrowLuo/CLIP4Clip/releases/download/v0.0/msrvtt_data.zip"
VIDEOS_URL = "https://www.robots.ox.ac.uk/~maxbain/frozen-in-time/data/MSRVTT.zip"
VAL_LIST_URL = ("https://raw.githubusercontent.com/jpthu17/EMCL/main/video_retrieval/"
                "As_an_inference_module/data/msrvtt_data/MSRVTT_val.full.csv")

TRAIN_LISTS = {"9k": "MSRVTT_train.9k.csv", "7k": "MSRVTT_train.7k.csv"}
VAL_LIST = "MSRVTT_val.full.csv"
TEST_CSV = "MSRVTT_JSFUSION_test.csv"
DATA_JSON = "MSRVTT_data.json"
SENTENCE = "an object {sen_id, video_id, caption}"


class MSRVTT(AnnotatedDataset):
    name: ClassVar[str] = "msrvtt"
    splits: ClassVar[tuple[str, ...]] = ("train", "val", "test")
    protocol: ClassVar[Protocol] = "single"
    max_words: ClassVar[int] = 32
    max_frames: ClassVar[int] = 12
    hf_repo: ClassVar[str | None] = "friedrichor/MSR-VTT"
    subdirs: ClassVar[tuple[str, ...]] = ("msrvtt_data", "MSRVTT")
    get_it: ClassVar[str] = f"download and unzip CLIP4Clip's msrvtt_data.zip ({ANNOTATIONS_URL})"
    file_hints: ClassVar[dict[str, str]] = {VAL_LIST: (
        f"{VAL_LIST} (the official 497-video val split) is not in msrvtt_data.zip; get it "
        f"from {VAL_LIST_URL}, or write a csv with header video_id and the ids video6513 "
        "to video7009 (the videos whose split is 'validate' in MSRVTT_data.json)")}
    downloads: ClassVar[tuple[DownloadSource, ...] | None] = (
        DownloadSource("annotations", (ANNOTATIONS_URL,), "msrvtt_data.zip",
                       note="CLIP4Clip bundle: MSRVTT_data.json, MSRVTT_train.9k.csv, "
                       "MSRVTT_train.7k.csv, MSRVTT_JSFUSION_test.csv (unzips to msrvtt_data/)"),
        DownloadSource("val-list", (VAL_LIST_URL,), VAL_LIST, extract=False,
                       note="official 497-video val list (video6513-video7009), not in "
                       "msrvtt_data.zip; copy kept in jpthu17/EMCL"),
        DownloadSource("videos", (VIDEOS_URL,), "MSRVTT.zip",
                       note="Frozen-in-Time copy of the 10,000 videos; unzips to MSRVTT/videos/all/"),
    )

    def __init__(self, *, train_list: str = "9k"):
        if train_list not in TRAIN_LISTS:
            raise ConfigError(f"msrvtt: train_list={train_list!r}; allowed: {', '.join(TRAIN_LISTS)}",
                              hint="train_list=9k (CLIP4Clip, DiffusionRet) or train_list=7k")
        self.train_list = train_list

    def config(self) -> dict[str, Any]:
        return {"train_list": self.train_list}

    def split_protocol(self, split: str) -> Protocol:
        # 1k-A pairs one caption with each video; train and val keep all ~20 captions
        return "single" if split == "test" else "multi"

    def video_dirs(self) -> list[str]:
        return ["videos", "MSRVTT/videos/all", "videos/all", "."]

    def annotation_files(self, split: str) -> list[str]:
        self.check_split(split)
        if split == "test":
            return [TEST_CSV]
        return [TRAIN_LISTS[self.train_list] if split == "train" else VAL_LIST, DATA_JSON]

    def parse(self, source: Path, split: str) -> tuple[list[VideoEntry], list[ItemProblem]]:
        if split == "test":
            csv_path = self.find_file(source, TEST_CSV)
            rows = read_csv(csv_path, columns=("key", "vid_key", "video_id", "sentence"))
            ids, captions, problems = group_rows(
                ((n, f[2].strip(), f[3]) for n, f in rows), path=csv_path, single=True)
            videos, more = build_entries(ids, captions, captions_file=csv_path)
            return videos, problems + more
        list_name = TRAIN_LISTS[self.train_list] if split == "train" else VAL_LIST
        list_path = self.find_file(source, list_name)
        json_path = self.find_file(source, DATA_JSON)
        ids = [f[0].strip() for _, f in read_csv(list_path, columns=("video_id",))]
        captions = read_sentences(json_path)
        return build_entries(ids, captions, captions_file=json_path)


def read_sentences(path: Path) -> dict[str, list[Caption]]:
    """Captions per video id from ``MSRVTT_data.json``'s ``sentences``, in file order."""
    data = load_json(path, expect=dict, what='an object {"videos": [...], "sentences": [...]}')
    require_keys(data, ("sentences",), path=path, where="the top level",
                 what='an object {"videos": [...], "sentences": [...]}')
    sentences = require_list(data["sentences"], path=path, where='"sentences"',
                             what=f"a list of {SENTENCE}")
    captions: dict[str, list[Caption]] = {}
    for i, sen in enumerate(sentences):
        where = f"sentences[{i}]"
        require_keys(sen, ("video_id", "caption"), path=path, where=where, what=SENTENCE)
        vid = require_str(sen["video_id"], path=path, where=f"{where}.video_id")
        text = require_str(sen["caption"], path=path, where=f"{where}.caption")
        captions.setdefault(vid, []).append((where, text))
    return captions
