"""``diffret index build``: encode a collection once into a search index.

The work is cut into chunks of ``chunk_size`` items, each encoded in batches and saved
as one file under a build folder beside the output (``.tmp-build-<name>/``) the moment
it is done, so:

- **resumable**: a killed build, run again with the same command, skips the chunks it
  finished (the build folder records the item list and the model; if either changed, it
  starts over);
- **distributed**: under ``torchrun`` rank ``r`` of ``w`` encodes the chunks ``c`` with
  ``c % w == r``; when every rank is done, rank 0 merges the chunks in item order into
  the final store and builds the first stage;
- **robust**: a video that cannot be decoded is recorded (id, path, reason) in
  ``failures.json`` and left out; it never stops the build.

The finished index is written in a temp folder and swapped into place in one step.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from diffret_cli.fileio import TEMP_PREFIX, atomic_path, atomic_write_json, replace_dir
from diffret_cli.search import first_stage
from diffret_cli.search.engine import FIRST_STAGE_FILE, FORMAT, INDEX_JSON, model_fingerprint
from diffret_cli.search.sources import Source, SourceItem, load_item
from diffret_cli.search.store import PartWriter, pooled

PLAN_JSON = "plan.json"


@dataclass
class BuildSettings:
    batch_size: int = 16
    chunk_size: int = 256
    workers: int = 0
    device: str = "auto"
    precision: str = "auto"
    first_stage: str = "auto"
    nlist: int | None = None
    nprobe: int | None = None
    thumbnails: bool = True
    progress: bool = True
    extra_captions: list[str] = field(default_factory=list)


def build_dir_for(out: Path) -> Path:
    """Where an interrupted build of ``out`` keeps its finished chunks."""
    return out.with_name(f"{TEMP_PREFIX}build-{out.name}")


class _Items(Dataset):
    def __init__(self, source: Source, items: list[SourceItem], model, thumbs: bool):
        enc = model.encoder
        self.source, self.items, self.thumbs = source, items, thumbs
        self.kw = dict(image_size=enc.image_size, mean=enc.image_mean, std=enc.image_std,
                       max_frames=model.config["max_frames"])

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return load_item(self.source, self.items[i], thumbs=self.thumbs, **self.kw)


def _plan(source: Source, fingerprint: str, settings: BuildSettings) -> dict[str, Any]:
    h = hashlib.sha256()
    for it in source.items:
        h.update(json.dumps([it.id, it.path, list(it.captions)]).encode())
    return {"items": len(source.items), "items_sha256": h.hexdigest(), "model": fingerprint,
            "chunk_size": settings.chunk_size, "thumbnails": settings.thumbnails, "source": source.description}


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[failed]} failed"), TimeElapsedColumn(), TextColumn("eta"),
                    TimeRemainingColumn(), console=Console(stderr=True), disable=not enabled)


@torch.no_grad()
def encode_chunk(model, source: Source, items: list[SourceItem], settings: BuildSettings, device,
                 precision: str, advance: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
    """Encode ``items``: the arrays of one chunk file (only the items that decoded)."""
    from diffret_cli.features import autocast_for

    loader = DataLoader(_Items(source, items, model, settings.thumbnails), batch_size=settings.batch_size,
                        shuffle=False, num_workers=settings.workers, collate_fn=list)
    feats, weights, lengths, pools, thumbs, ok, errors = [], [], [], [], [], [], []
    pos = 0
    for batch in loader:
        good = [i for i, b in enumerate(batch) if not b.error]
        for i, b in enumerate(batch):
            if b.error:
                it = items[pos + i]
                errors.append({"id": it.id, "path": it.path, "reason": b.error})
        if good:
            x = torch.stack([batch[i].frames for i in good]).to(device)
            m = torch.stack([batch[i].mask for i in good]).to(device)
            with autocast_for(device, precision):
                v = model.encode_video(x, m)
            # weights and pooled vectors from the float16 features the index keeps, so the
            # index scores exactly as the model scores its stored features
            f = v.frames.half().float()
            vn, w = model.similarity.prepare_video(f, m)
            feats.append(f.half().cpu().numpy())
            weights.append(w.float().cpu().numpy())
            lengths.append(m.sum(dim=1).cpu().numpy().astype(np.int16))
            pools.append(pooled(vn, w).half().cpu().numpy())
            thumbs.extend(batch[i].thumb for i in good)
            ok.extend(pos + i for i in good)
        pos += len(batch)
        if advance:
            advance(len(batch), len(batch) - len(good))
    t, d = model.config["max_frames"], model.encoder.embed_dim
    offs = np.cumsum([0] + [len(b) for b in thumbs]).astype(np.int64)
    return {
        "features": np.concatenate(feats) if feats else np.zeros((0, t, d), np.float16),
        "weights": np.concatenate(weights) if weights else np.zeros((0, t), np.float32),
        "lengths": np.concatenate(lengths) if lengths else np.zeros((0,), np.int16),
        "pooled": np.concatenate(pools) if pools else np.zeros((0, d), np.float16),
        "ok": np.asarray(ok, dtype=np.int64),
        "thumbs": np.frombuffer(b"".join(thumbs), dtype=np.uint8),
        "thumb_offsets": offs,
        "errors": np.asarray(json.dumps(errors)),
    }


def _save_chunk(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def _load_chunk(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@torch.no_grad()
def encode_captions(model, captions: list[str], *, device, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Token features (all ``max_words`` positions, as evaluation keeps them), weights,
    lengths, pooled vectors and sentence features of every caption."""
    out: dict[str, list] = {"features": [], "weights": [], "lengths": [], "pooled": [], "cls": []}
    for a in range(0, len(captions), batch_size):
        ids, mask = model.encoder.tokenize(captions[a:a + batch_size], model.config["max_words"])
        ids, mask = ids.to(device), mask.to(device)
        f = model.encode_text(ids, mask)
        tn, w = model.similarity.prepare_text(f.tokens.half().float(), mask)  # as stored
        out["features"].append(f.tokens.half().cpu().numpy())
        out["weights"].append(w.float().cpu().numpy())
        out["lengths"].append(mask.sum(dim=1).cpu().numpy().astype(np.int16))
        out["pooled"].append(pooled(tn, w).half().cpu().numpy())
        out["cls"].append(f.cls.half().cpu().numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def build_first_stage(part_dir: Path, settings: BuildSettings, *, progress=None) -> dict[str, Any]:
    """Build and save the FAISS index of a written part; returns its spec."""
    vecs = np.load(part_dir / "pooled.npy", mmap_mode="r")
    spec = first_stage.choose(len(vecs), settings.first_stage, nlist=settings.nlist, nprobe=settings.nprobe)
    index = first_stage.build(vecs, spec, progress=progress)
    first_stage.save(index, part_dir / FIRST_STAGE_FILE)
    return spec.to_dict()


def build_index(model, source: Source, out: str | Path, *, settings: BuildSettings | None = None,
                checkpoint: str | None = None) -> dict[str, Any] | None:
    """Build (or resume building) the index of ``source`` at ``out``; returns the index's
    ``index.json`` on rank 0 (None on other ranks)."""
    from diffret_cli.distributed import barrier, cleanup, init_distributed
    from diffret_cli.features import resolve_device, resolve_precision

    settings = settings or BuildSettings()
    out = Path(out)
    t_start = time.perf_counter()
    device = resolve_device(settings.device)
    info = init_distributed(device.type)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    precision = resolve_precision(settings.precision, device)
    model = model.to(device).eval()
    fingerprint = model_fingerprint(model)
    work = build_dir_for(out)
    chunks_dir = work / "chunks"
    plan = _plan(source, fingerprint, settings)
    if info.is_main:
        old = json.loads((work / PLAN_JSON).read_text()) if (work / PLAN_JSON).is_file() else None
        if old != plan:
            shutil.rmtree(work, ignore_errors=True)  # another collection or model: start over
        chunks_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(work / PLAN_JSON, plan)
    barrier(info)

    n = len(source.items)
    cs = settings.chunk_size
    n_chunks = math.ceil(n / cs)
    mine = [c for c in range(n_chunks) if c % info.world_size == info.rank]
    todo = [c for c in mine if not (chunks_dir / f"chunk-{c:06d}.npz").is_file()]
    done_items = sum(min(cs, n - c * cs) for c in mine if c not in todo)
    with _progress(settings.progress and info.is_main) as bar:
        task = bar.add_task("encode videos", total=sum(min(cs, n - c * cs) for c in mine), completed=done_items,
                            failed=0)
        failed = 0

        def advance(k: int, bad: int) -> None:
            nonlocal failed
            failed += bad
            bar.update(task, advance=k, failed=failed)

        for c in todo:
            items = source.items[c * cs:(c + 1) * cs]
            arrays = encode_chunk(model, source, items, settings, device, precision, advance)
            _save_chunk(chunks_dir / f"chunk-{c:06d}.npz", arrays)
    barrier(info)
    if not info.is_main:
        cleanup(info)
        return None
    meta = merge(model, source, out, work, n_chunks, settings, fingerprint=fingerprint, checkpoint=checkpoint,
                 device=device, t_start=t_start)
    cleanup(info)
    return meta


def merge(model, source: Source, out: Path, work: Path, n_chunks: int, settings: BuildSettings, *,
          fingerprint: str, checkpoint: str | None, device, t_start: float) -> dict[str, Any]:
    """Rank 0: the chunks, in item order, into the final store; captions; first stages."""
    chunks_dir = work / "chunks"
    final = work / "index"
    shutil.rmtree(final, ignore_errors=True)
    cs = settings.chunk_size
    counts, failures = [], []
    for c in range(n_chunks):  # pass 1: sizes and failures only (npz members load lazily)
        with np.load(chunks_dir / f"chunk-{c:06d}.npz", allow_pickle=False) as z:
            counts.append(len(z["ok"]))
            failures.extend(json.loads(str(z["errors"])))
    total = sum(counts)
    t, d = model.config["max_frames"], model.encoder.embed_dim
    video_items: list[dict[str, Any]] = []
    thumbs: list[bytes] = []
    meta: dict[str, Any] = {"format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                            "model": {"checkpoint": checkpoint, "fingerprint": fingerprint,
                                      "max_frames": t, "max_words": model.config["max_words"], "width": d},
                            "source": source.description, "videos": None, "captions": None,
                            "failed": len(failures)}
    caption_texts: list[str] = []
    caption_items: list[dict[str, Any]] = []
    if total:
        w = PartWriter(final / "videos", n=total, tokens=t, width=d, with_cls=False, with_thumbs=settings.thumbnails)
        row = 0
        for c in range(n_chunks):
            z = _load_chunk(chunks_dir / f"chunk-{c:06d}.npz")
            k = len(z["ok"])
            w.write(row, features=z["features"], weights=z["weights"], lengths=z["lengths"],
                    pooled_vectors=z["pooled"])
            offs, blob = z["thumb_offsets"], z["thumbs"].tobytes()
            for j, i in enumerate(z["ok"].tolist()):
                it = source.items[c * cs + i]
                video_items.append({"id": it.id, "path": it.path, **({"captions": list(it.captions)}
                                                                   if it.captions else {})})
                thumbs.append(blob[offs[j]:offs[j + 1]])
                for cap in it.captions:
                    caption_texts.append(cap)
                    caption_items.append({"text": cap, "video": row + j, "video_id": it.id})
            row += k
        w.finish(video_items, thumbs)
        meta["videos"] = {"count": total, "first_stage": build_first_stage(final / "videos", settings)}
    for cap in settings.extra_captions:
        caption_texts.append(cap)
        caption_items.append({"text": cap, "video": None, "video_id": None})
    if caption_texts:
        arr = encode_captions(model, caption_texts, device=device)
        cw = PartWriter(final / "captions", n=len(caption_texts), tokens=arr["features"].shape[1], width=d,
                        with_cls=True, with_thumbs=False)
        cw.write(0, features=arr["features"], weights=arr["weights"], lengths=arr["lengths"],
                 pooled_vectors=arr["pooled"], cls=arr["cls"])
        cw.finish(caption_items)
        meta["captions"] = {"count": len(caption_texts),
                            "first_stage": build_first_stage(final / "captions", settings)}
    atomic_write_json(work / "failures.json", failures)
    if not total and not caption_texts:
        from diffret_cli.search.store import SearchIndexError

        raise SearchIndexError(f"nothing to index: all {len(source.items)} video(s) failed to decode "
                               f"(first: {failures[0]['path'] if failures else '-'}: "
                               f"{failures[0]['reason'] if failures else '-'})",
                               hint=f"see the reasons in {work / 'failures.json'}; fix or remove those files")
    atomic_write_json(final / "failures.json", failures)
    meta["build_seconds"] = round(time.perf_counter() - t_start, 2)
    atomic_write_json(final / INDEX_JSON, meta)
    replace_dir(final, out)
    shutil.rmtree(work, ignore_errors=True)
    return meta


@torch.no_grad()
def write_feature_index(model, out: str | Path, *, n: int, batches, items, settings: BuildSettings | None = None,
                        checkpoint: str | None = None, description: dict | None = None) -> dict[str, Any]:
    """An index of features computed elsewhere (the bench's synthetic gallery).

    ``batches`` yields ``(start, frames, lengths)``: rows ``start ..`` as frame features
    after the temporal transformer (float [k,T,D] tensors) and their valid-frame counts;
    ``items`` yields one ``{"id": ..., "path": ...}`` per row. The similarity's frame
    weights and the pooled vectors are computed here, as a build from videos does.
    """
    settings = settings or BuildSettings()
    out = Path(out)
    t_start = time.perf_counter()
    work = build_dir_for(out)
    shutil.rmtree(work, ignore_errors=True)
    final = work / "index"
    t, d = model.config["max_frames"], model.encoder.embed_dim
    w = PartWriter(final / "videos", n=n, tokens=t, width=d, with_cls=False, with_thumbs=False)
    for start, frames, lengths in batches:
        lengths = torch.as_tensor(lengths)
        mask = (torch.arange(t)[None, :] < lengths[:, None]).long()
        frames = frames.half().float()  # as stored (see encode_chunk)
        vn, wts = model.similarity.prepare_video(frames, mask)
        w.write(start, features=frames.half().numpy(), weights=wts.float().numpy(),
                lengths=lengths.numpy().astype(np.int16), pooled_vectors=pooled(vn, wts).half().numpy())
    w.finish(items)
    t_features = time.perf_counter() - t_start
    spec = build_first_stage(final / "videos", settings)
    meta = {"format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "model": {"checkpoint": checkpoint, "fingerprint": model_fingerprint(model), "max_frames": t,
                      "max_words": model.config["max_words"], "width": d},
            "source": description or {"kind": "features"}, "videos": {"count": n, "first_stage": spec},
            "captions": None, "failed": 0,
            "build_seconds": round(time.perf_counter() - t_start, 2),
            "build_seconds_parts": {"features": round(t_features, 2),
                                    "first_stage": round(time.perf_counter() - t_start - t_features, 2)}}
    atomic_write_json(final / "failures.json", [])
    atomic_write_json(final / INDEX_JSON, meta)
    replace_dir(final, out)
    shutil.rmtree(work, ignore_errors=True)
    return meta
