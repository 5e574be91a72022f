"""What ``diffret data info`` and ``diffret data verify`` report, as library functions.

- :func:`dataset_info`: settings and per-split statistics of a prepared dataset, including
  how many videos each split shares with each other split (zero for every built-in
  dataset at its defaults; see :mod:`diffret_cli.data.splits`);
- :func:`verify_dataset`: every cache file re-checked against its manifest;
- :func:`repair_dataset`: the damaged files deleted and prepared again from the source
  recorded in ``prepared.json``, with the same settings and options.
"""

from __future__ import annotations

import statistics
from typing import Any

from diffret_cli.data.framecache import FrameCache
from diffret_cli.data.manifest import USABLE, PreparedDataError, PreparedDataset, reason_code
from diffret_cli.data.splits import shared_videos
from diffret_cli.errors import DiffretError

#: ``video_id`` of a problem that concerns a split's manifest rather than one cache file
MANIFEST = "(manifest)"


def _stats(values: list[float], *, total: bool = False, digits: int = 2) -> dict[str, float] | None:
    if not values:
        return None
    out = {"min": round(min(values), digits), "max": round(max(values), digits),
           "mean": round(statistics.fmean(values), digits), "median": round(statistics.median(values), digits)}
    if total:
        out["total"] = round(sum(values), digits)
    return out


def dataset_info(name: str, data_root: str | None) -> dict[str, Any]:
    """Settings and per-split statistics of prepared dataset ``name`` (``data info --json``).

    ``ready`` counts the usable videos (status ok or partial), as ``prepare`` does;
    ``shared_videos`` maps every other split to the number of videos both list.
    """
    ds = PreparedDataset.open(data_root, name)
    out: dict[str, Any] = {
        "dataset": ds.name, "root": str(ds.root), "created": ds.info.get("created"),
        "fps": ds.fps, "short_side": ds.short_side, "protocol": ds.protocol,
        "plugin_config": ds.info.get("plugin_config", {}), "plugin_version": ds.info.get("plugin_version"),
        "decoder": ds.info.get("decoder", {}), "splits": {},
    }
    all_rows = {split: ds.split(split).rows() for split in ds.splits}
    shared = shared_videos({s: [r["video_id"] for r in rows] for s, rows in all_rows.items()})
    for split, rows in all_rows.items():
        ready = [r for r in rows if r["status"] in USABLE]
        skipped = [r for r in rows if r["status"] == "skipped"]
        by_reason: dict[str, int] = {}
        for r in skipped:
            code = reason_code(r["reason"])
            by_reason[code] = by_reason.get(code, 0) + 1
        words = [len(c.split()) for r in ready for c in r["captions"]]
        out["splits"][split] = {
            "protocol": ds.split(split).protocol,
            "videos": len(rows),
            "ready": len(ready),
            "ok": sum(r["status"] == "ok" for r in rows),
            "partial": sum(r["status"] == "partial" for r in rows),
            "skipped": len(skipped),
            "skipped_by_reason": dict(sorted(by_reason.items())),
            "skipped_items": [{"video_id": r["video_id"], "reason": r["reason"]} for r in skipped],
            "captions": sum(len(r["captions"]) for r in ready),
            "caption_words": _stats([float(w) for w in words]),
            "duration_s": _stats([r["duration"] for r in ready if r["duration"] is not None], total=True),
            "frames": _stats([float(r["num_frames"]) for r in ready], total=True),
            "shared_videos": shared[split],
        }
    return out


def verify_dataset(name: str, data_root: str | None, *, decode: bool = False) -> tuple[int, list[dict[str, str]]]:
    """(cache files checked, problems) for prepared dataset ``name``: each usable video's
    file exists, parses, matches its checksum and its manifest's frame count (and, with
    ``decode``, every frame decodes). A problem is ``{split, video_id, problem}``."""
    ds = PreparedDataset.open(data_root, name)
    seen: dict[str, int] = {}
    problems: list[dict[str, str]] = []
    for split in ds.splits:
        try:
            table = ds.split(split).table
        except PreparedDataError as exc:  # the manifest itself is damaged: rebuilt by --repair
            problems.append({"split": split, "video_id": MANIFEST, "problem": exc.message})
            continue
        for r in table.select_columns(["video_id", "status", "num_frames"]).to_list():
            if r["status"] not in USABLE or r["video_id"] in seen:
                continue
            seen[r["video_id"]] = r["num_frames"]
            problem = ds.cache.verify(r["video_id"], expected_frames=r["num_frames"], decode=decode)
            if problem:
                problems.append({"split": split, "video_id": r["video_id"], "problem": problem})
    return len(seen), problems


def repair_dataset(name: str, data_root: str | None, problems: list[dict[str, str]], *,
                   workers: int | None = None, progress: bool = False):
    """Delete the cache files named in ``problems`` and prepare ``name`` again with the
    source, settings, options and splits recorded in ``prepared.json``: the damaged
    videos are decoded again, every intact file is reused. Returns the PrepareReport."""
    from diffret_cli.data.prepare import prepare

    ds = PreparedDataset.open(data_root, name)
    info = ds.info
    if info.get("generated"):
        source = None
    else:
        source = info.get("source") or None
        if not source:
            raise DiffretError(f"{ds.root / 'prepared.json'} records no source folder to repair from",
                               hint=f"run `diffret data prepare {name} --source DIR` with the original files")
    cache = FrameCache(ds.cache.root)
    for p in problems:
        if p["video_id"] != MANIFEST:  # a damaged manifest is simply written again
            cache.remove(p["video_id"])
    return prepare(name, data_root=data_root, source=source, fps=ds.fps, short_side=ds.short_side,
                   workers=workers, splits=list(ds.splits), plugin_options=info.get("plugin_config") or None,
                   progress=progress, quality=int(info.get("jpeg_quality", 90)))
