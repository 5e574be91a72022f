"""MSVD (Chen and Dolan, ACL 2011) in CLIP4Clip's ``msvd_data`` layout.

Splits 1,200 / 100 / 670 videos from ``{train,val,test}_list.txt``, about 40 captions
each. Captions come from ``raw-captions.pkl`` (``{video_id: [[token, ...], ...]}``,
CLIP4Clip's bundle; loaded without executing anything) or X-Pool's
``captions_msvd.json`` (``{video_id: [caption, ...]}``). Multi-caption evaluation:
every caption of a test video is a query.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from diffret_cli.data.safe_pickle import safe_load
from diffret_cli.data.types import ItemProblem, Protocol, VideoEntry
from diffret_cli.errors import AnnotationError, ConfigError
from diffret_cli.sdk import (
    AnnotatedDataset, Caption, DownloadSource, build_entries, decode_text, load_json, read_id_list,
    require_list, require_str,
)

ANNOTATIONS_URL = "https://github.com/ArrowLuo/CLIP4Clip/releases/download/v0.0/msvd_data.zip"
VIDEOS_URL = "https://www.cs.utexas.edu/users/ml/clamp/videoDescription/YouTubeClips.tar"
PICKLE = "raw-captions.pkl"
JSON = "captions_msvd.json"
CAPTION_FILES = ("auto", PICKLE, JSON)


class MSVD(AnnotatedDataset):
    name: ClassVar[str] = "msvd"
    splits: ClassVar[tuple[str, ...]] = ("train", "val", "test")
    protocol: ClassVar[Protocol] = "multi"
    max_words: ClassVar[int] = 32
    max_frames: ClassVar[int] = 12
    hf_repo: ClassVar[str | None] = "friedrichor/MSVD"
    subdirs: ClassVar[tuple[str, ...]] = ("msvd_data", "MSVD")
    get_it: ClassVar[str] = f"download and unzip CLIP4Clip's msvd_data.zip ({ANNOTATIONS_URL})"
    downloads: ClassVar[tuple[DownloadSource, ...] | None] = (
        DownloadSource("annotations", (ANNOTATIONS_URL,), "msvd_data.zip",
                       note="CLIP4Clip bundle: raw-captions.pkl, train_list.txt, val_list.txt, "
                       "test_list.txt (unzips to msvd_data/)"),
        DownloadSource("videos", (VIDEOS_URL,), "YouTubeClips.tar",
                       note="UT Austin copy of the 1,970 clips, <youtube id>_<start>_<end>.avi "
                       "(untars to YouTubeClips/)"),
    )

    def __init__(self, *, captions: str = "auto"):
        if captions not in CAPTION_FILES:
            raise ConfigError(f"msvd: captions={captions!r}; allowed: {', '.join(CAPTION_FILES)}",
                              hint=f"auto reads {PICKLE} if present, else {JSON}")
        self.captions = captions

    def config(self) -> dict[str, Any]:
        return {"captions": self.captions}

    def video_dirs(self) -> list[str]:
        return ["videos", "YouTubeClips", "."]

    def annotation_files(self, split: str) -> list[str]:
        """With ``captions="auto"`` the pickle is named; :meth:`resolve_annotation_files`
        says which caption file a source dir actually has."""
        self.check_split(split)
        return [JSON if self.captions == JSON else PICKLE, f"{split}_list.txt"]

    def resolve_annotation_files(self, source: Path, split: str) -> list[Path]:
        self.check_split(split)
        return [self._caption_file(Path(source)), self.find_file(Path(source), f"{split}_list.txt")]

    def _caption_file(self, source: Path) -> Path:
        if self.captions != "auto":
            return self.find_file(source, self.captions)
        try:
            return self.find_file(source, PICKLE)
        except AnnotationError as missing_pickle:
            try:
                return self.find_file(source, JSON)
            except AnnotationError:
                raise AnnotationError(f"{missing_pickle.message}\n(nor {JSON}, X-Pool's "
                                      "caption file, in the same places)",
                                      hint=missing_pickle.hint) from None

    def parse(self, source: Path, split: str) -> tuple[list[VideoEntry], list[ItemProblem]]:
        caption_path = self._caption_file(source)
        list_path = self.find_file(source, f"{split}_list.txt")
        ids, problems = read_id_list(list_path)
        captions = (read_pickle_captions(caption_path) if caption_path.suffix == ".pkl"
                    else read_json_captions(caption_path))
        videos, more = build_entries(ids, captions, captions_file=caption_path)
        return videos, problems + more


def read_pickle_captions(path: Path) -> dict[str, list[Caption]]:
    """``{video_id: [[token, ...], ...]}`` -> captions with tokens joined by spaces."""
    data = safe_load(path)  # Python 2 strings arrive as bytes; decoded below, per item
    if not isinstance(data, dict):
        raise AnnotationError(f"{path}: top level is a {type(data).__name__}, expected a dict "
                              "{video_id: [[token, ...], ...]}", hint="check the file")
    captions: dict[str, list[Caption]] = {}
    for key, caps in data.items():
        vid = _text(key, path=path, where="a key")
        if not isinstance(caps, (list, tuple)):
            raise AnnotationError(f"{path}: [{vid!r}] is a {type(caps).__name__}, expected a "
                                  "list of captions (token lists)", hint="check the file")
        captions[vid] = [(f"[{vid!r}][{j}]", _caption_text(cap, path=path, where=f"[{vid!r}][{j}]"))
                         for j, cap in enumerate(caps)]
    return captions


def _caption_text(cap: Any, *, path: Path, where: str) -> str:
    if isinstance(cap, (list, tuple)):
        return " ".join(_text(tok, path=path, where=f"{where} token") for tok in cap)
    return _text(cap, path=path, where=where)  # a caption stored as one string


def _text(value: Any, *, path: Path, where: str) -> str:
    if isinstance(value, bytes):
        return decode_text(value)  # bad bytes are reported per caption later
    if not isinstance(value, str):
        raise AnnotationError(f"{path}: {where} is a {type(value).__name__}, expected a string",
                              hint="check the file")
    return value


def read_json_captions(path: Path) -> dict[str, list[Caption]]:
    """X-Pool's ``{video_id: [caption, ...]}``."""
    data = load_json(path, expect=dict, what='an object {"<video_id>": ["caption", ...]}')
    captions: dict[str, list[Caption]] = {}
    for vid, caps in data.items():
        require_list(caps, path=path, where=f"[{vid!r}]", what="a list of caption strings")
        captions[vid] = [(f"[{vid!r}][{j}]", require_str(c, path=path, where=f"[{vid!r}][{j}]"))
                         for j, c in enumerate(caps)]
    return captions
