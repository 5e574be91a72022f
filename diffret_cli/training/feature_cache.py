"""The stage-2 feature cache: the frozen stage-1 model's features of the training split,
computed once instead of running CLIP on every batch (the official code's largest cost).

Scale decides the design. MSRVTT's 180,000 training captions x 32 words x 512 dims are
5.9 GB of token features in float16 (11.8 GB in float32), so the cache is never held
whole in memory, neither while it is made nor while it is used:

- **Extraction is split across ranks.** Each rank encodes a contiguous share of the
  captions and of the videos (:func:`~diffret_cli.distributed.shard_range`) and writes
  every batch, cast to the cache dtype, straight to its own rows of the file
  (``os.pwrite`` into a file rank 0 laid out beforehand). A rank's memory peak is one
  batch of features, whatever the size of the dataset.
- **One ordinary safetensors file**, ``features/<train split>.safetensors`` (readable
  with ``safetensors.safe_open``), built under a temp name and renamed into place by
  rank 0 once every rank has written and synced its rows: a file at the final path is
  always complete.
- **Read memory-mapped** (:class:`CachedFeatures`): a batch copies its rows; the pages
  are the operating system's file cache, shared by every rank of a machine rather than
  a private copy per process.
- **Checked before reuse.** The header records what the features were computed from
  (a digest of the stage-1 weights, of the split's video ids and captions, the dtype,
  precision and shapes); a cache that does not match is rebuilt, so stage 2 never
  trains on the features of an earlier stage 1.

Every rank must see the same run directory (one machine, or a shared filesystem), as
for checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import time
import warnings
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np
import torch
from torch import nn

from diffret_cli.distributed import DistInfo, barrier, broadcast_object, shard_range
from diffret_cli.errors import ConfigError, DiffretError
from diffret_cli.features import SplitTexts, iter_text_features, iter_video_features
from diffret_cli.fileio import TEMP_PREFIX, fsync_dir
from diffret_cli.model.diffusionret import TextFeatures, VideoFeatures
from diffret_cli.training.context import RunContext

FORMAT = "diffret-feature-cache/2"
#: safetensors dtype names of what the cache stores
_ST_DTYPES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32", torch.uint8: "U8",
              torch.int64: "I64"}
_TORCH_DTYPES = {v: k for k, v in _ST_DTYPES.items()}


class FeatureCacheError(DiffretError):
    """The stage-2 feature cache cannot be built or read."""


def cache_path(ctx: RunContext) -> Path:
    return ctx.run_dir / "features" / f"{ctx.recipe['dataset']['train_split']}.safetensors"


# ----------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class TensorSlot:
    """Where one tensor of the cache lies in the file."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int  # absolute byte offset of row 0

    @property
    def row_bytes(self) -> int:
        return math.prod(self.shape[1:]) * _itemsize(self.dtype)

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.row_bytes


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def tensor_shapes(num_captions: int, num_videos: int, *, words: int, frames: int, width: int,
                  dtype: torch.dtype) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
    """The cache's tensors in file order: the int64 one first and the byte masks last, so
    every tensor starts at a multiple of its element size (the header is 8-aligned)."""
    return [("caption_video", torch.int64, (num_captions,)),
            ("text_tokens", dtype, (num_captions, words, width)),
            ("text_cls", dtype, (num_captions, width)),
            ("video_frames", dtype, (num_videos, frames, width)),
            ("text_mask", torch.uint8, (num_captions, words)),
            ("video_mask", torch.uint8, (num_videos, frames))]


def build_header(shapes, metadata: dict[str, str]) -> tuple[bytes, dict[str, TensorSlot], int]:
    """(header bytes, slots, file size) of a safetensors file holding ``shapes``."""
    entries: dict[str, object] = {"__metadata__": metadata}
    spans, pos = {}, 0
    for name, dtype, shape in shapes:
        n = math.prod(shape) * _itemsize(dtype)
        entries[name] = {"dtype": _ST_DTYPES[dtype], "shape": list(shape), "data_offsets": [pos, pos + n]}
        spans[name] = (dtype, tuple(shape), pos)
        pos += n
    js = json.dumps(entries).encode()
    js += b" " * (-(8 + len(js)) % 8)  # the data section starts 8-aligned
    start = 8 + len(js)
    slots = {name: TensorSlot(name, dt, shape, start + off) for name, (dt, shape, off) in spans.items()}
    return struct.pack("<Q", len(js)) + js, slots, start + pos


def read_header(path: Path) -> tuple[dict, int]:
    """(the safetensors header, the byte offset where its data starts)."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise FeatureCacheError(f"{path}: not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", raw)
        if n > 100_000_000:
            raise FeatureCacheError(f"{path}: not a safetensors file (header of {n} bytes)")
        try:
            header = json.loads(f.read(n))
        except ValueError as exc:
            raise FeatureCacheError(f"{path}: unreadable safetensors header ({exc})") from exc
    return header, 8 + n


# ------------------------------------------------------------------------ reading
class CachedFeatures:
    """A feature cache, memory-mapped: ``text`` / ``video`` hold CPU tensors over the
    file's pages in the stored dtype (index them to copy a batch out, then cast it where
    it is used; the pages are read-only, so never write into these tensors);
    ``caption_video`` [C] the video of each caption."""

    def __init__(self, path: Path):
        self.path = Path(path)
        header, start = read_header(self.path)
        self.metadata: dict[str, str] = header.pop("__metadata__", {}) or {}
        raw = np.memmap(self.path, dtype=np.uint8, mode="r")
        t = {}
        with warnings.catch_warnings():  # read-only pages are what we want
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            for name, e in header.items():
                b, end = e["data_offsets"]
                t[name] = (torch.from_numpy(raw[start + b:start + end]).view(_TORCH_DTYPES[e["dtype"]])
                           .reshape(e["shape"]))
        self.text = TextFeatures(t["text_tokens"], t["text_cls"], t["text_mask"])
        self.video = VideoFeatures(t["video_frames"], t["video_mask"])
        self.caption_video = t["caption_video"].numpy().copy()

    def __len__(self) -> int:
        return len(self.caption_video)


# ----------------------------------------------------------------------- fingerprint
def fingerprint(model: nn.Module, texts: SplitTexts, video_ids: list[str], *, dtype: torch.dtype,
                precision: str, split: str) -> dict[str, str]:
    """What the features depend on, as the cache header's metadata: every weight except
    the denoisers' (stage 2 trains those; the features never see them), the split's
    videos and captions in order, the stored dtype and the encoding precision."""
    skip = {id(t) for m in model.stage2_modules() for t in chain(m.parameters(), m.buffers())}
    h = hashlib.sha1()
    for name, t in sorted(chain(model.named_parameters(), model.named_buffers()), key=lambda kv: kv[0]):
        if id(t) in skip:
            continue
        h.update(name.encode())
        h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy())
    d = hashlib.sha1()
    for vid in video_ids:
        d.update(vid.encode() + b"\0")
    for cap, owner in zip(texts.captions, texts.caption_video.tolist()):
        d.update(f"{owner}\0{cap}\0".encode())
    return {"format": FORMAT, "split": split, "weights_sha1": h.hexdigest(), "data_sha1": d.hexdigest(),
            "dtype": str(dtype).removeprefix("torch."), "precision": precision,
            "captions": str(len(texts.captions)), "videos": str(len(video_ids))}


def stale_reason(path: Path, expected: dict[str, str]) -> str | None:
    """Why the cache at ``path`` cannot be reused (None: it can)."""
    if not path.is_file():
        return "absent"
    try:
        meta = read_header(path)[0].get("__metadata__") or {}
    except (FeatureCacheError, OSError) as exc:
        return f"unreadable ({exc})"
    changed = [k for k, v in expected.items() if meta.get(k) != v]
    if not changed:
        return None
    names = {"weights_sha1": "stage-1 weights", "data_sha1": "captions or videos"}
    return "changed: " + ", ".join(names.get(k, k) for k in changed)


# ------------------------------------------------------------------------ building
class _RowWriter:
    """Writes rows of the cache's tensors in place (``os.pwrite``), nothing buffered."""

    def __init__(self, path: Path, slots: dict[str, TensorSlot]):
        self.fd = os.open(path, os.O_WRONLY)
        self.slots = slots
        self.bytes = 0

    def write(self, name: str, row: int, x: torch.Tensor) -> None:
        slot = self.slots[name]
        if tuple(x.shape[1:]) != slot.shape[1:] or row + len(x) > slot.shape[0]:
            raise FeatureCacheError(f"cache tensor {name}: rows {row}..{row + len(x)} of shape "
                                    f"{tuple(x.shape[1:])} do not fit its layout {slot.shape}")
        # cast on the device (half the bytes to move), then one contiguous byte view
        buf = memoryview(x.detach().to(slot.dtype).cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
        pos = slot.offset + row * slot.row_bytes
        while buf:
            n = os.pwrite(self.fd, buf, pos)
            buf, pos = buf[n:], pos + n
        self.bytes += len(x) * slot.row_bytes

    def close(self) -> None:
        try:
            os.fsync(self.fd)
        finally:
            os.close(self.fd)


def build_cache(path: Path, model: nn.Module, split, texts: SplitTexts, *, metadata: dict[str, str],
                dtype: torch.dtype, device: torch.device, precision: str, dist: DistInfo, batch_size: int,
                num_workers: int = 0, progress=None) -> dict:
    """Encode the split into ``path``, every rank its share; collective (all ranks call
    it). Returns this rank's counts and time."""
    t0 = time.perf_counter()
    shapes = tensor_shapes(len(texts.captions), len(split.videos), words=model.config["max_words"],
                           frames=model.config["max_frames"], width=model.encoder.embed_dim, dtype=dtype)
    header, slots, size = build_header(shapes, metadata)
    tmp = path.with_name(f"{TEMP_PREFIX}building-{path.name}")  # the same name on every rank
    if dist.is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:  # header, then a sparse file of the final size
            f.write(header)
            f.truncate(size)
    barrier(dist)
    if not tmp.is_file():
        raise ConfigError(f"rank {dist.rank} cannot see {tmp}, which rank 0 just created",
                          hint="every rank must see the run directory: use a shared filesystem for --run-dir")
    captions, videos = shard_range(len(texts.captions), dist), shard_range(len(split.videos), dist)
    task = None if progress is None else progress.add_task(
        "stage 2 features", total=len(captions) + len(videos), loss=float("nan"), lr=0.0, rate=0.0)
    writer = _RowWriter(tmp, slots)
    model.eval()
    try:
        row = captions.start
        for f in iter_text_features(model, texts.captions[captions.start:captions.stop], batch_size=batch_size,
                                    device=device, precision=precision):
            writer.write("text_tokens", row, f.tokens)
            writer.write("text_cls", row, f.cls)
            writer.write("text_mask", row, f.mask)
            row += len(f.cls)
            if task is not None:
                progress.update(task, advance=len(f.cls))
        row = videos.start
        for v in iter_video_features(model, split, batch_size=max(1, batch_size // 4), device=device,
                                     precision=precision, num_workers=num_workers, indices=videos):
            writer.write("video_frames", row, v.frames)
            writer.write("video_mask", row, v.mask)
            row += len(v.mask)
            if task is not None:
                progress.update(task, advance=len(v.mask))
        if dist.is_main:
            writer.write("caption_video", 0, torch.from_numpy(np.asarray(texts.caption_video, dtype=np.int64)))
    finally:
        writer.close()
    if task is not None:
        progress.remove_task(task)
    barrier(dist)  # every rank's rows are on disk
    if dist.is_main:
        os.replace(tmp, path)
        fsync_dir(path.parent)
    barrier(dist)
    return {"captions": len(captions), "videos": len(videos), "bytes": writer.bytes,
            "seconds": round(time.perf_counter() - t0, 3)}


def train_features(ctx: RunContext, model: nn.Module) -> CachedFeatures:
    """The training split's features from the current (frozen) weights: the cache in the
    run directory when it matches them, else built now by every rank together."""
    path = cache_path(ctx)
    split_name = ctx.recipe["dataset"]["train_split"]
    split = ctx.data.split(split_name)
    texts = SplitTexts.from_split(split)
    dtype = getattr(torch, ctx.recipe["stage2"]["feature_dtype"])
    meta, reason = None, None
    if ctx.dist.is_main:
        meta = fingerprint(model, texts, [v.video_id for v in split.videos], dtype=dtype,
                           precision=ctx.precision, split=split_name)
        reason = stale_reason(path, meta)
    # one decision and one header for all (its length places every rank's rows)
    reason, meta = broadcast_object((reason, meta), ctx.dist)
    if reason is not None:
        stats = build_cache(path, model, split, texts, metadata=meta, dtype=dtype, device=ctx.device,
                            precision=ctx.precision, dist=ctx.dist, batch_size=ctx.recipe["eval"]["batch_size"],
                            num_workers=ctx.recipe["train"]["num_workers"], progress=ctx.progress)
        ctx.log({"event": "feature_cache", "built": True, "reason": reason, "path": str(path),
                 "captions": len(texts.captions), "videos": len(split.videos), "world_size": ctx.dist.world_size,
                 "rank0": stats})
    else:
        ctx.log({"event": "feature_cache", "built": False, "path": str(path)})
    return CachedFeatures(path)
