"""``diffret data prepare``: annotations + videos in, manifests + frame cache out.

The pipeline, in the order that keeps failures cheap:

1. resolve the plugin and the source folder (``--source``, else ``<root>/<name>/source``,
   else the download path), and which requested splits have their annotation files
   there; the others are listed (:class:`~diffret_cli.data.splits.AbsentSplit`) with
   where to get them, and only a source with none of them is an error;
2. parse **every** preparable split first: a malformed annotation file raises
   :class:`AnnotationError` before a single video is touched or a folder created;
3. one work item per unique video, run in worker processes: locate the file, decode
   and sample it (``fps``, ``short_side``), write its frames to the cache atomically
   (or, for a generated dataset, ``plugin.generate(entry)``). A bad video (missing,
   empty, corrupt, no video stream, even one that crashes the decoder) is recorded
   with its reason and never stops the run;
4. write one manifest per split, ``prepared.json`` (last: its presence means "done"),
   and ``prepare_report.json`` listing every skipped item and parser problem.

Re-running is cheap and safe: videos whose cache file exists with the same settings
and source file, and still passes its checksum, are reported as cached and not decoded
again (a damaged file is decoded again); the manifests come out the same. An
interrupted run (Ctrl-C, SIGTERM, kill -9) leaves only complete cache files behind and
no worker process running.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from diffret_cli.data.framecache import DEFAULT_QUALITY
from diffret_cli.data.manifest import (USABLE, PreparedDataError, load_manifest_table, manifest_digest,
                                       read_prepared_json, reason_code, write_prepared_json, write_split_manifest)
from diffret_cli.data.paths import REPORT_JSON, dataset_dir, frames_dir, manifests_dir, source_dir
from diffret_cli.data.plugin import DatasetPlugin
from diffret_cli.data.prepare_worker import (CACHE_VERSION, WorkersUnavailable, WorkerState, fingerprint,
                                             init_worker, process_start_time, process_video, run_pool,
                                             sigterm_as_interrupt)
from diffret_cli.data.progress import PrepareProgress
from diffret_cli.data.splits import AbsentSplit, check_splits, names_under, shared_videos
from diffret_cli.data.types import ItemProblem, SplitAnnotations, VideoEntry
from diffret_cli.errors import AnnotationError, ConfigError, DiffretError
from diffret_cli.fileio import atomic_write_text, is_temp_name


# ------------------------------------------------------------------------------ report
@dataclass
class SplitSummary:
    """Per-split counts shown in the summary table and stored in prepared.json."""

    split: str
    protocol: str
    videos: int = 0
    ok: int = 0
    partial: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason code -> count
    captions: int = 0  # captions of usable videos
    captions_total: int = 0  # captions of every video in the annotations
    cached: int = 0  # usable videos found already in the cache (not decoded again)
    frames: int = 0
    problems: int = 0  # parser-level per-item problems
    repaired: int = 0  # cached files that failed their checksum and were decoded again
    shared: dict[str, int] = field(default_factory=dict)  # other split -> videos listed in both

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    @property
    def ready(self) -> int:
        """Usable videos (ok + partial): the same count ``diffret data info`` calls ready."""
        return self.ok + self.partial


@dataclass
class PrepareReport:
    """What ``prepare`` did; also written to ``<root>/<name>/prepare_report.json``."""

    dataset: str
    prepared_dir: str
    source: str
    settings: dict[str, Any]
    splits: dict[str, SplitSummary]
    skipped: list[dict[str, str]]  # split, video_id, reason, detail, file
    problems: list[dict[str, str]]  # split, item, reason, detail, file (from the parser)
    videos: int = 0  # unique videos
    decoded: int = 0  # unique videos decoded (or generated) in this run
    cached: int = 0  # unique videos already in the cache
    frames_written: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # CPU time of the per-video work (decode, resize, encode, write), all workers
    report_path: str = ""
    notes: list[str] = field(default_factory=list)  # e.g. fell back to in-process decoding
    absent: list[AbsentSplit] = field(default_factory=list)  # requested splits without their files
    repaired: list[dict[str, str]] = field(default_factory=list)  # video_id, problem (decoded again)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for name, s in self.splits.items():
            d["splits"][name]["skipped_total"] = s.num_skipped
            d["splits"][name]["ready"] = s.ready
        d["absent"] = [a.to_dict() for a in self.absent]
        return d


# ------------------------------------------------------------------------------ plugin
def make_plugin(name: str, options: dict[str, Any] | None = None) -> DatasetPlugin:
    """The dataset plugin ``name`` built with ``options`` (``--option key=value``)."""
    from diffret_cli.registry import registry

    obj = registry().get("datasets", name)
    if isinstance(obj, DatasetPlugin):
        if options:
            obj = type(obj)(**{**obj.config(), **options})
        return obj
    return registry().create("datasets", name, **(options or {}))


def is_generated(plugin: DatasetPlugin) -> bool:
    """True for datasets whose frames come from ``plugin.generate`` instead of files."""
    return type(plugin).generate is not DatasetPlugin.generate


def _plugin_version(plugin: DatasetPlugin, name: str) -> str:
    from diffret_cli.registry import plugin_version

    version = plugin_version("datasets", name)
    if version == "-":
        version = str(getattr(plugin, "version", "-"))
    return version


# ------------------------------------------------------------------------------ source
def _required_files(plugin: DatasetPlugin, splits: Iterable[str]) -> list[str]:
    files: list[str] = []
    for s in splits:
        files.extend(f for f in plugin.annotation_files(s) if f not in files)
    return files


def _has_files(base: Path, files: list[str]) -> bool:
    return bool(files) and all((base / f).exists() for f in files)


def find_source_root(base: Path, files: list[str], *, depth: int = 2) -> Path | None:
    """``base`` or the shallowest folder below it holding every one of ``files``.

    Archives often unpack into a folder of their own (``msrvtt_data/...``).
    """
    level = [base]
    for _ in range(depth + 1):
        for d in level:
            if _has_files(d, files):
                return d
        level = sorted(c for d in level if d.is_dir() for c in d.iterdir() if c.is_dir() and not c.name.startswith("."))
    return None


def source_root_under(base: Path, files: list[str]) -> Path | None:
    """Where to read from under ``base``: the one folder holding every file if there is
    one; else ``base`` itself when every file is somewhere below it (dataset plugins
    search their usual sub-folders); None when some file is not there at all."""
    if not base.is_dir():
        return None
    exact = find_source_root(base, files)
    if exact is not None:
        return exact
    names = names_under(base)
    return base if all(Path(f).name in names for f in files) else None


def resolve_source(plugin: DatasetPlugin, prepared: Path, source: str | os.PathLike | None,
                   splits: list[str], *, progress: bool) -> Path:
    """The folder holding the dataset's files.

    ``--source`` wins. Otherwise ``<root>/<name>/source`` is used when it holds the files
    of every requested split, or of at least one (the rest are then reported absent
    rather than downloaded: a user who placed some files there chose them); only when
    it holds none are the files downloaded.
    """
    files = _required_files(plugin, splits)
    if source is not None:
        src = Path(source).expanduser().absolute()
        if not src.is_dir():
            raise DiffretError(f"--source {src} is not a directory",
                               hint="pass the folder that holds the annotation files and videos")
        return src
    if not files:  # generated dataset: nothing to read
        return source_dir(prepared)
    found = source_root_under(source_dir(prepared), files)
    if found is not None:
        return found
    for split in splits:  # some splits' files are there: prepare those
        some = source_root_under(source_dir(prepared), list(plugin.annotation_files(split)))
        if some is not None and check_splits(plugin, some, [split])[0]:
            return some
    from diffret_cli.data.download import fetch_sources

    fetched = fetch_sources(plugin, prepared, progress=progress)
    # When a file is still missing, the plugin's parser says which and where to get it.
    return source_root_under(fetched, files) or fetched


# ----------------------------------------------------------------------------- prepare
def prepare(name: str, *, data_root: str | os.PathLike | None, source: str | os.PathLike | None = None,
            fps: float = 1.0, short_side: int = 224, workers: int | None = None,
            splits: Iterable[str] | None = None, plugin_options: dict[str, Any] | None = None,
            progress: bool = True, quality: int = DEFAULT_QUALITY) -> PrepareReport:
    """Prepare dataset ``name`` under ``data_root`` (see :mod:`diffret_cli.data.paths`).

    ``workers`` processes decode in parallel (default ``min(8, cpu count)``; 1 runs in
    this process). ``splits`` limits the work to some splits (default: all of them).
    Returns the :class:`PrepareReport`, also written as ``prepare_report.json``.
    """
    t0 = time.perf_counter()
    if not fps > 0:
        raise ConfigError(f"--fps must be > 0, got {fps}", hint="use e.g. --fps 1 (DiffusionRet) or --fps 3")
    if int(short_side) < 16:
        raise ConfigError(f"--short-side must be >= 16, got {short_side}", hint="use e.g. --short-side 224")
    if workers is not None and int(workers) < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}", hint="omit it for min(8, cpu count)")
    fps, short_side = float(fps), int(short_side)
    workers = int(workers) if workers else min(8, os.cpu_count() or 1)

    plugin = make_plugin(name, plugin_options)
    wanted = list(plugin.splits) if not splits else list(dict.fromkeys(splits))
    unknown = [s for s in wanted if s not in plugin.splits]
    if unknown:
        raise ConfigError(f"dataset {name!r} has no split {', '.join(map(repr, unknown))}; "
                          f"available: {', '.join(plugin.splits)}", hint="pick splits from that list with --split")
    root = dataset_dir(data_root, name)
    src = resolve_source(plugin, root, source, wanted, progress=progress)
    ready, absent = check_splits(plugin, src, wanted, name=name)
    if not ready:
        raise _nothing_to_prepare(name, src, absent)

    # 2. every split parsed before any video work (AnnotationError propagates from here).
    annotations: dict[str, SplitAnnotations] = {s: plugin.load_split(src, s) for s in ready}

    # 3. unique videos across splits, first occurrence wins.
    unique: dict[str, VideoEntry] = {}
    extra_problems: list[tuple[str, ItemProblem]] = []
    for s, ann in annotations.items():
        for e in ann.videos:
            first = unique.setdefault(e.video_id, e)
            if (first.start, first.end) != (e.start, e.end):
                extra_problems.append((s, ItemProblem(e.video_id, "conflicting-clip",
                                                      f"also listed with start/end {first.start}/{first.end}; "
                                                      "the first listing is used")))
    generated = is_generated(plugin)
    root.mkdir(parents=True, exist_ok=True)
    entries = list(unique.values())
    procs = 1 if workers == 1 or len(entries) <= 1 else min(workers, len(entries))
    with _lock(root), sigterm_as_interrupt():
        _sweep_temp(frames_dir(root))
        state = WorkerState(plugin, src, frames_dir(root), fps, short_side, int(quality), generated,
                            fingerprint([name, plugin.config()]), owner_pid=os.getpid(),
                            owner_start=process_start_time(os.getpid()))
        results: dict[str, dict[str, Any]] = {}
        notes: list[str] = []
        with PrepareProgress(f"prepare {name}", len(entries), enabled=progress) as bar:
            def on_result(r: dict[str, Any]) -> None:
                results[r["video_id"]] = r
                bar.advance(frames=r["written"])

            if procs == 1:
                init_worker(state)
                for e in entries:
                    on_result(process_video(e))
            else:
                try:
                    run_pool(entries, state, procs, on_result)
                except WorkersUnavailable as exc:
                    note = f"worker processes could not start ({exc}); decoded in this process instead"
                    notes.append(note)
                    init_worker(state)
                    for e in entries:
                        if e.video_id not in results:
                            on_result(process_video(e))

        # 4. manifests, prepared.json, report.
        report = _write_outputs(name, plugin, root, src, annotations, results, extra_problems,
                                fps=fps, short_side=short_side, quality=int(quality), generated=generated)
    report.seconds = time.perf_counter() - t0
    report.notes = notes + report.notes
    report.absent = absent
    report.videos = len(entries)
    report.cached = sum(1 for r in results.values() if r["cached"])
    report.decoded = sum(1 for r in results.values() if r["written"])
    report.frames_written = sum(r["written"] for r in results.values())
    report.cpu_seconds = sum(r.get("cpu_s", 0.0) for r in results.values())
    report.repaired = [{"video_id": r["video_id"], "problem": r["repaired"]}
                       for r in results.values() if r.get("repaired")]
    atomic_write_text(Path(report.report_path), json.dumps(report.to_dict(), indent=2) + "\n")
    return report


def _nothing_to_prepare(name: str, src: Path, absent: list[AbsentSplit]) -> AnnotationError:
    """The error for a source that holds no requested split's files: each split's cause."""
    lines = [f"  {a.split}: {a.message}" for a in absent]
    hints = list(dict.fromkeys(a.hint for a in absent if a.hint))
    which = ", ".join(a.split for a in absent)
    return AnnotationError(
        f"{name}: no requested split ({which}) can be prepared from {src}:\n" + "\n".join(lines),
        hint="; ".join(hints) + ("; " if hints else "")
        + f"put the files under {src} (or pass --source DIR), and use --split to prepare only the "
          "splits you have")


def _write_outputs(name: str, plugin: DatasetPlugin, root: Path, src: Path,
                   annotations: dict[str, SplitAnnotations], results: dict[str, dict[str, Any]],
                   extra_problems: list[tuple[str, ItemProblem]], *, fps: float, short_side: int,
                   quality: int, generated: bool) -> PrepareReport:
    summaries: dict[str, SplitSummary] = {}
    digests: dict[str, str] = {}
    skipped: list[dict[str, str]] = []
    problems: list[dict[str, str]] = []
    for s, ann in annotations.items():
        summary = SplitSummary(s, ann.protocol, videos=len(ann.videos), captions_total=ann.num_captions,
                               problems=len(ann.problems))
        rows = []
        for e in ann.videos:
            r = results[e.video_id]
            rows.append({"video_id": e.video_id, "captions": list(e.captions), "video_path": r["video_path"],
                         "duration": r["duration"], "fps": fps, "num_frames": r["num_frames"],
                         "status": r["status"], "reason": r["reason"], "filename": e.filename or "",
                         "start": e.start, "end": e.end})
            if r["status"] in USABLE:
                setattr(summary, r["status"], getattr(summary, r["status"]) + 1)
                summary.captions += len(e.captions)
                summary.frames += r["num_frames"]
                summary.cached += int(r["cached"])
                summary.repaired += int(bool(r.get("repaired")))
            else:
                code = reason_code(r["reason"])
                summary.skipped[code] = summary.skipped.get(code, 0) + 1
                detail = r["reason"].split(":", 1)[1].strip() if ":" in r["reason"] else ""
                skipped.append({"split": s, "video_id": e.video_id, "reason": code, "detail": detail,
                                "file": r["video_path"]})
        summary.skipped = dict(sorted(summary.skipped.items()))
        digests[s] = manifest_digest(write_split_manifest(root, s, rows))
        summaries[s] = summary
        for p in ann.problems:
            problems.append({"split": s, **asdict(p)})
    for s, p in extra_problems:
        problems.append({"split": s, **asdict(p)})
        summaries[s].problems += 1

    damaged = ""
    try:
        previous = read_prepared_json(root) or {}
    except PreparedDataError as exc:  # rewritten below; splits not prepared now must be again
        previous, damaged = {}, f"{exc.message}; it was rewritten (prepare any other split again)"
    plugin_config = json.loads(json.dumps(plugin.config(), default=str))
    same = (previous.get("fps") == fps and previous.get("short_side") == short_side
            and previous.get("plugin_config") == plugin_config)
    split_info = {k: v for k, v in previous.get("splits", {}).items() if same and k not in summaries}
    for k in previous.get("splits", {}):
        if k not in summaries and k not in split_info:  # made with other settings: drop it
            import shutil

            shutil.rmtree(manifests_dir(root) / k, ignore_errors=True)
    for s, sm in summaries.items():
        split_info[s] = {"protocol": sm.protocol, "videos": sm.videos, "ready": sm.ready, "ok": sm.ok,
                         "partial": sm.partial, "skipped": sm.num_skipped, "captions": sm.captions,
                         "frames": sm.frames, "manifest_sha256": digests[s]}
    split_info = {k: split_info[k] for k in [*plugin.splits, *sorted(split_info)] if k in split_info}
    # videos listed by two splits, over every split the folder now holds (kept ones too)
    ids = {k: [e.video_id for e in annotations[k].videos] if k in annotations else _manifest_ids(root, k)
           for k in split_info}
    ids = {k: v for k, v in ids.items() if v is not None}  # an unreadable kept manifest: not counted
    for k, shared in shared_videos(ids).items():
        split_info[k]["shared_videos"] = shared
        if k in summaries:
            summaries[k].shared = shared
    settings = {"fps": fps, "short_side": short_side, "codec": "png" if generated else "jpeg",
                "jpeg_quality": quality}
    write_prepared_json(root, {
        "dataset": name,
        "plugin_config": plugin_config,
        "plugin_version": _plugin_version(plugin, name),
        "generated": generated,
        "decoder": {"backend": "generated"} if generated else _decoder_settings(),
        "fps": fps,
        "short_side": short_side,
        "frame_codec": settings["codec"],
        "jpeg_quality": quality,
        "cache_version": CACHE_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": "" if generated else str(src),
        "protocol": plugin.protocol,
        "max_words": plugin.max_words,
        "max_frames": plugin.max_frames,
        "splits": split_info,
    })
    return PrepareReport(dataset=name, prepared_dir=str(root), source="" if generated else str(src),
                         settings=settings, splits=summaries, skipped=skipped, problems=problems,
                         report_path=str(root / REPORT_JSON), notes=[damaged] if damaged else [])


def _manifest_ids(root: Path, split: str) -> list[str] | None:
    """Video ids of an already prepared split (a kept manifest); None when it is damaged
    (it is not this run's to rewrite; ``data info`` and ``verify`` name it)."""
    try:
        return list(load_manifest_table(manifests_dir(root) / split)["video_id"])
    except Exception:  # noqa: BLE001 - any read error of a damaged copy
        return None


def _decoder_settings() -> dict[str, Any]:
    from diffret_cli.data.video import decoder_settings

    return json.loads(json.dumps(decoder_settings(), default=str))


@contextlib.contextmanager
def _lock(root: Path):
    """One ``prepare`` per dataset folder at a time (two would sweep each other's temp files)."""
    path = root / ".prepare.lock"
    fh = open(path, "a+")
    try:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no advisory lock, run one at a time
            yield
            return
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            raise DiffretError(f"another `diffret data prepare` is running on {root}",
                               hint=f"wait for it to finish (or remove {path} if no such process exists)") from exc
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    finally:
        fh.close()


def _sweep_temp(frames: Path) -> int:
    """Delete temp files left by an interrupted run (safe: we hold the dataset lock)."""
    removed = 0
    for f in frames.parent.iterdir():  # prepared.json / report temp files
        if f.is_file() and is_temp_name(f.name):
            f.unlink(missing_ok=True)
            removed += 1
    if not frames.is_dir():
        return removed
    for shard in frames.iterdir():
        if shard.is_dir():
            for f in shard.iterdir():
                if is_temp_name(f.name):
                    f.unlink(missing_ok=True)
                    removed += 1
    return removed


# ----------------------------------------------------------------------------- summary
def summary_table(report: PrepareReport):
    """A rich Table: per split, videos ready (ok + partial, as ``data info`` counts them) /
    partial / skipped (by reason, in the caption), captions of ready videos, frames."""
    from rich.table import Table

    table = Table(title=f"{report.dataset}: prepared in {report.seconds:.1f} s "
                        f"({report.decoded} decoded, {report.cached} cached, {report.frames_written} frames written)")
    for col in ("split", "protocol", "videos", "ready", "partial", "skipped", "captions", "frames"):
        table.add_column(col, justify="left" if col in ("split", "protocol") else "right", no_wrap=True)
    reasons = []
    for s in report.splits.values():
        table.add_row(s.split, s.protocol, str(s.videos), str(s.ready), str(s.partial),
                      f"[red]{s.num_skipped}[/red]" if s.num_skipped else "0", str(s.captions), str(s.frames))
        if s.skipped:
            reasons.append(f"{s.split}: " + ", ".join(f"{k} {v}" for k, v in s.skipped.items()))
    if reasons:
        table.caption = "skipped by reason - " + "; ".join(reasons)
    return table
