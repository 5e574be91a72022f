"""Prepared-dataset manifests and the public reader, :class:`PreparedDataset`.

A prepared dataset is a folder (see :mod:`diffret_cli.data.paths`) with:

- ``manifests/<split>/``: a Hugging Face ``datasets`` Arrow table per split, one row per
  video in the plugin's order (the order evaluation protocols depend on), including the
  videos that were skipped, so nothing is silently dropped:
  ``video_id, captions, video_path, duration, fps, num_frames, status, reason`` plus
  ``filename, start, end`` (to rebuild the :class:`VideoEntry`);
- ``prepared.json``: dataset name, plugin config and version, decoder settings, sampling
  fps and short side, creation time, per-split counts and protocol;
- ``frames/``: the :class:`~diffret_cli.data.framecache.FrameCache`.

``status`` is ``ok`` (all frames), ``partial`` (the decoder stopped early but enough
frames came out; ``reason`` says what happened) or ``skipped`` (no frames: ``reason`` is
``code`` or ``code: detail``, e.g. ``missing-video``, ``decode-error: ...``).

Training and evaluation read through :class:`PreparedDataset` and never decode video.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from diffret_cli.data.framecache import FrameCache
from diffret_cli.data.paths import PREPARED_JSON, REPORT_JSON, dataset_dir, frames_dir, manifests_dir
from diffret_cli.data.types import VideoEntry
from diffret_cli.errors import DiffretError
from diffret_cli.fileio import atomic_write_text, replace_dir

if TYPE_CHECKING:  # pragma: no cover
    import datasets

MANIFEST_FORMAT = "diffret-prepared/1"
STATUSES = ("ok", "partial", "skipped")
USABLE = ("ok", "partial")
COLUMNS = ("video_id", "captions", "video_path", "duration", "fps", "num_frames", "status", "reason",
           "filename", "start", "end")


class PreparedDataError(DiffretError):
    """A prepared dataset is missing, incomplete, or was made by an incompatible version."""


def features() -> "datasets.Features":
    """The manifest schema, fixed so an empty split still has typed columns."""
    from datasets import Features, List, Value

    return Features({
        "video_id": Value("string"),
        "captions": List(Value("string")),
        "video_path": Value("string"),
        "duration": Value("float64"),
        "fps": Value("float64"),
        "num_frames": Value("int64"),
        "status": Value("string"),
        "reason": Value("string"),
        "filename": Value("string"),
        "start": Value("float64"),
        "end": Value("float64"),
    })


def reason_code(reason: str) -> str:
    """``"decode-error: moov atom not found"`` -> ``"decode-error"``."""
    return reason.split(":", 1)[0].strip() if reason else ""


# --------------------------------------------------------------------------- writing
def write_split_manifest(prepared: Path, split: str, rows: list[dict[str, Any]]) -> Path:
    """Save one split's table atomically: into a temp folder, then swapped into place.

    A crash leaves either the previous manifest or the new one (plus a ``.tmp-*``
    folder that the next run removes), never a half-written table.
    """
    import datasets

    _check_split_name(split)
    missing = [c for c in COLUMNS if rows and c not in rows[0]]
    if missing:
        raise ValueError(f"manifest rows lack columns {missing}")
    bad = sorted({r["status"] for r in rows} - set(STATUSES))
    if bad:
        raise ValueError(f"unknown status {bad}; expected one of {STATUSES}")
    table = datasets.Dataset.from_dict({c: [r[c] for r in rows] for c in COLUMNS}, features=features())
    base = manifests_dir(prepared)
    base.mkdir(parents=True, exist_ok=True)
    for stale in base.glob(f".tmp-*-{split}"):  # left by a crashed earlier run
        shutil.rmtree(stale, ignore_errors=True)
    tmp = base / f".tmp-{os.getpid()}-{os.urandom(4).hex()}-{split}"
    was_disabled = datasets.utils.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        table.save_to_disk(str(tmp))
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()
    final = base / split
    replace_dir(tmp, final)
    return final


def manifest_digest(folder: Path) -> str:
    """SHA-256 over a saved manifest's Arrow data files (what a reader reads), recorded in
    ``prepared.json`` so a flipped bit or a truncated copy is caught on open."""
    h = hashlib.sha256()
    for f in sorted(Path(folder).glob("*.arrow")):
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def write_prepared_json(prepared: Path, info: dict[str, Any]) -> Path:
    """Write ``prepared.json`` last: its presence marks the dataset as prepared."""
    path = prepared / PREPARED_JSON
    atomic_write_text(path, json.dumps({"format": MANIFEST_FORMAT, **info}, indent=2, sort_keys=False) + "\n")
    return path


def read_prepared_json(prepared: Path) -> dict[str, Any] | None:
    path = prepared / PREPARED_JSON
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise PreparedDataError(f"{path}: not valid JSON ({exc})",
                                hint=f"re-run `diffret data prepare {prepared.name}`") from exc


def _check_split_name(split: str) -> None:
    if not split or "/" in split or "\\" in split or split.startswith("."):
        raise ValueError(f"split name {split!r} cannot be used as a folder name")


# --------------------------------------------------------------------------- reading
@dataclass
class PreparedSplit:
    """One split of a prepared dataset: its manifest table and access to its frames."""

    dataset: "PreparedDataset"
    name: str
    table: "datasets.Dataset"

    @property
    def protocol(self) -> str:
        return self.dataset.split_info(self.name).get("protocol", self.dataset.protocol)

    def rows(self) -> list[dict[str, Any]]:
        return self.table.to_list()

    @cached_property
    def videos(self) -> list[VideoEntry]:
        """Usable videos (status ok or partial), in manifest order."""
        return [_entry(r) for r in self.table.to_list() if r["status"] in USABLE]

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """(video id, reason) for every video of the split that has no frames."""
        return [(r["video_id"], r["reason"]) for r in self.table.select_columns(["video_id", "status", "reason"]).to_list()
                if r["status"] == "skipped"]

    @property
    def num_captions(self) -> int:
        """Captions of the usable videos."""
        return sum(len(v.captions) for v in self.videos)

    def status_counts(self) -> dict[str, int]:
        counts = Counter(self.table["status"])
        return {s: counts.get(s, 0) for s in STATUSES}

    def frames(self, video_id: str, *, indices: Iterable[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        return self.dataset.frames(video_id, indices=indices)

    def __len__(self) -> int:
        return len(self.videos)


def load_manifest_table(path: Path) -> "datasets.Dataset":
    """A saved manifest. ``datasets`` writes no data file for a table of zero rows and
    then cannot load it back, so an empty split (its ``state.json`` lists no files) is
    rebuilt from the schema."""
    import datasets

    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    if state.get("_data_files") == []:
        return datasets.Dataset.from_dict({c: [] for c in COLUMNS}, features=features())
    return datasets.load_from_disk(str(path))


def _entry(row: dict[str, Any]) -> VideoEntry:
    return VideoEntry(row["video_id"], tuple(row["captions"]), row["filename"] or None, row["start"], row["end"])


class PreparedDataset:
    """Read access to a dataset prepared by ``diffret data prepare``.

    >>> ds = PreparedDataset.open(None, "msrvtt")            # doctest: +SKIP
    >>> test = ds.split("test"); frames, ts = test.frames(test.videos[0].video_id)
    """

    def __init__(self, root: Path, info: dict[str, Any]):
        self.root = Path(root)
        self.info = info
        self.cache = FrameCache(frames_dir(self.root))
        self._splits: dict[str, PreparedSplit] = {}

    @classmethod
    def open(cls, data_root: str | os.PathLike | None, name: str) -> "PreparedDataset":
        """Open ``<data_root>/<name>`` (``data_root`` None: see :func:`resolve_data_root`)."""
        root = dataset_dir(data_root, name)
        info = read_prepared_json(root)
        if info is None:
            raise PreparedDataError(
                f"dataset {name!r} is not prepared: {root / PREPARED_JSON} does not exist",
                hint=f"run `diffret data prepare {name}` (with the same --data-root / $DIFFRET_DATA_ROOT)")
        if info.get("format") != MANIFEST_FORMAT:
            raise PreparedDataError(
                f"{root / PREPARED_JSON}: format {info.get('format')!r}, this diffret reads {MANIFEST_FORMAT!r}",
                hint=f"re-run `diffret data prepare {name}`")
        return cls(root, info)

    @property
    def name(self) -> str:
        return self.info.get("dataset", self.root.name)

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.info.get("splits", {}))

    @property
    def protocol(self) -> str:
        return self.info.get("protocol", "single")

    @property
    def fps(self) -> float:
        return float(self.info.get("fps", 1.0))

    @property
    def short_side(self) -> int:
        return int(self.info.get("short_side", 224))

    def split_info(self, name: str) -> dict[str, Any]:
        return self.info.get("splits", {}).get(name, {})

    def split(self, name: str) -> PreparedSplit:
        if name not in self._splits:
            import datasets

            if name not in self.splits:
                raise PreparedDataError(
                    f"dataset {self.name!r} at {self.root} has no prepared split {name!r}; "
                    f"prepared: {', '.join(self.splits) or '(none)'}",
                    hint=f"run `diffret data prepare {self.name} --split {name}`")
            path = manifests_dir(self.root) / name
            fix = (f"re-run `diffret data prepare {self.name} --split {name}` with the same --source "
                   "(cached frames are reused; only the manifest is rebuilt), or `diffret data verify "
                   f"{self.name} --repair`")
            if not path.is_dir():
                raise PreparedDataError(f"{path}: manifest of split {name!r} is missing", hint=fix)
            expected = self.split_info(name).get("manifest_sha256")
            if expected and manifest_digest(path) != expected:
                raise PreparedDataError(f"{path}: manifest of split {name!r} was damaged or changed after "
                                        "prepare (its checksum does not match prepared.json)", hint=fix)
            try:
                table = load_manifest_table(path)
                missing = [c for c in COLUMNS if c not in table.column_names]
                if missing:
                    raise ValueError(f"columns {missing} missing")
            except Exception as exc:  # noqa: BLE001 - pyarrow, json and OS errors of a damaged copy
                detail = " ".join(str(exc).split())[:200]
                raise PreparedDataError(f"{path}: manifest of split {name!r} is unreadable "
                                        f"({type(exc).__name__}: {detail})", hint=fix) from exc
            self._splits[name] = PreparedSplit(self, name, table)
        return self._splits[name]

    def frames(self, video_id: str, *, indices: Iterable[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Frames uint8 [T,H,W,3] and timestamps float64 [T] from the frame cache."""
        return self.cache.read(video_id, indices=None if indices is None else list(indices))

    def report(self) -> dict[str, Any] | None:
        """The last ``prepare_report.json`` (every skipped item with its detail), if any."""
        path = self.root / REPORT_JSON
        if not path.is_file():
            return None
        return json.loads(path.read_text(encoding="utf-8"))

    def __repr__(self) -> str:
        return f"PreparedDataset({self.name!r}, root={str(self.root)!r}, splits={list(self.splits)})"
