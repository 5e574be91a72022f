"""The on-disk feature store of a search index: what is kept per video (and per caption).

Layout of one part (``INDEX/videos/`` or ``INDEX/captions/``), every array a ``.npy``
file opened memory-mapped, so a million-item index opens in milliseconds and only the
rows a query touches are read:

==================  ===================  ===============================================
file                shape, dtype         why it is kept
==================  ===================  ===============================================
``features.npy``    [N, T, D] float16    the token-wise similarity (paper Eq. 10) and the
                                         denoiser (Eq. 4) of the shortlist: read only for
                                         the few hundred rows a query shortlists
``weights.npy``     [N, T] float32       the similarity's per-token weights (its MLP run
                                         once at build time, not on every query)
``lengths.npy``     [N] int16            valid tokens (frames or words); the rest is padding
``pooled.npy``      [N, D] float16       the first-stage vector (see :func:`pooled`); the
                                         FAISS index is built from it and can be rebuilt
``cls.npy``         [N, D] float16       captions only: the sentence feature the v2t
                                         denoiser takes as a candidate
``items.jsonl``     N lines              id, path, captions (per item; offsets in
``items.idx.npy``   [N + 1] int64        ``items.idx.npy``, so a result is read by seek)
``thumbs.bin``      bytes                videos only: one JPEG strip per video
``thumbs.idx.npy``  [N + 1] int64        its offsets (an empty range: no thumbnail)
==================  ===================  ===============================================

float16 is where ranking allows it (features, pooled vectors: relative error 5e-4, far
below the score gaps that order candidates; the bench measures recall against float32
scoring); the token weights are a softmax that feeds a weighted sum and stay float32.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from diffret_cli.errors import DiffretError

FEATURES, WEIGHTS, LENGTHS, POOLED, CLS = "features.npy", "weights.npy", "lengths.npy", "pooled.npy", "cls.npy"
ITEMS, ITEMS_IDX, THUMBS, THUMBS_IDX = "items.jsonl", "items.idx.npy", "thumbs.bin", "thumbs.idx.npy"


class SearchIndexError(DiffretError):
    """A search index is missing, incomplete or does not match what is asked of it."""


def pooled(normed: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The first-stage vector of each item: its normalised tokens averaged with the
    similarity's own token weights, ``p = sum_j w_j v_j / |v_j|``.

    Why this vector: for a text ``q = sum_i w_i t_i / |t_i|`` pooled the same way,
    ``q . p = sum_ij w_i u_j cos(t_i, v_j)`` is the weight-averaged cosine matrix whose
    row and column maxima the token-wise score (Eq. 10) sums, so it ranks like Eq. 10
    while being one inner product FAISS can search. ``normed`` [N,T,D] is already
    masked (padding rows zero) and ``weights`` [N,T] is zero on padding.
    """
    return torch.einsum("ntd,nt->nd", normed, weights)


@dataclass
class Part:
    """One memory-mapped part of an index (videos or captions)."""

    root: Path
    features: np.ndarray
    weights: np.ndarray
    lengths: np.ndarray
    pooled: np.ndarray
    cls: np.ndarray | None
    items_idx: np.ndarray
    thumbs_idx: np.ndarray | None
    _fds: dict[str, int] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, root: Path) -> "Part":
        root = Path(root)
        missing = [f for f in (FEATURES, WEIGHTS, LENGTHS, POOLED, ITEMS, ITEMS_IDX) if not (root / f).is_file()]
        if missing:
            raise SearchIndexError(f"search index part {root} is incomplete: missing {', '.join(missing)}",
                              hint="rebuild it with `diffret index build ... --out INDEX` (an interrupted "
                                   "build resumes where it stopped)")
        load = lambda name: np.load(root / name, mmap_mode="r")  # noqa: E731
        part = cls(root, load(FEATURES), load(WEIGHTS), load(LENGTHS), load(POOLED),
                   load(CLS) if (root / CLS).is_file() else None, load(ITEMS_IDX),
                   load(THUMBS_IDX) if (root / THUMBS_IDX).is_file() else None)
        n = len(part.lengths)
        if not (part.features.shape[0] == part.weights.shape[0] == part.pooled.shape[0] == n
                and len(part.items_idx) == n + 1):
            raise SearchIndexError(f"search index part {root} has arrays of different lengths "
                              f"(features {part.features.shape[0]}, weights {part.weights.shape[0]}, "
                              f"pooled {part.pooled.shape[0]}, lengths {n})",
                              hint="the index is damaged; rebuild it with `diffret index build`")
        return part

    def __len__(self) -> int:
        return len(self.lengths)

    def rows(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(features [K,T,D] as stored (float16), weights [K,T] float32, mask [K,T] int64)
        of rows ``idx``, read from disk in ascending order, returned in the order asked."""
        idx = np.asarray(idx, dtype=np.int64)
        ascending = bool(np.all(idx[1:] > idx[:-1]))
        order = np.arange(len(idx)) if ascending else np.argsort(idx, kind="stable")
        s = idx[order]
        self.prefetch(s)
        feats = torch.from_numpy(self.features[s])
        weights = torch.from_numpy(self.weights[s])
        lengths = torch.from_numpy(self.lengths[s].astype(np.int64))
        if not ascending:
            back = torch.from_numpy(np.argsort(order, kind="stable"))
            feats, weights, lengths = feats[back], weights[back], lengths[back]
        mask = (torch.arange(feats.shape[1])[None, :] < lengths[:, None]).long()
        return feats, weights.float(), mask

    def prefetch(self, rows: np.ndarray) -> None:
        """Ask the kernel to read rows ``rows`` (sorted) of the per-item arrays now, all at
        once. Touching a memory map that is not in the page cache reads one page at a
        time, a full disk round trip each: 1,000 shortlisted rows of a cold index took
        6.7 s that way on this machine's disk and 31 ms with the reads queued together
        (``posix_fadvise(WILLNEED)``). A no-op where the call does not exist."""
        if not hasattr(os, "posix_fadvise") or len(rows) == 0:
            return
        if not self._fds:  # the small per-item arrays (52 bytes a video): all of them, once
            for name in (WEIGHTS, LENGTHS):
                fd = os.open(self.root / name, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
                finally:
                    os.close(fd)
            self._fds[FEATURES] = os.open(self.root / FEATURES, os.O_RDONLY)
        size = self.features.dtype.itemsize * int(np.prod(self.features.shape[1:]))
        # consecutive rows as one range: fewer calls when the shortlist clusters
        for run in np.split(rows, np.flatnonzero(np.diff(rows) != 1) + 1):
            os.posix_fadvise(self._fds[FEATURES], self.features.offset + int(run[0]) * size, len(run) * size,
                             os.POSIX_FADV_WILLNEED)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def item(self, row: int) -> dict[str, Any]:
        a, b = int(self.items_idx[row]), int(self.items_idx[row + 1])
        with open(self.root / ITEMS, "rb") as fh:
            fh.seek(a)
            return json.loads(fh.read(b - a))

    def thumbnail(self, row: int) -> bytes | None:
        if self.thumbs_idx is None:
            return None
        a, b = int(self.thumbs_idx[row]), int(self.thumbs_idx[row + 1])
        if b <= a:
            return None
        with open(self.root / THUMBS, "rb") as fh:
            fh.seek(a)
            return fh.read(b - a)

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.iterdir() if p.is_file())


class PartWriter:
    """Writes a part of known size row range by row range (preallocated ``.npy`` files,
    so a row range can be written in any order), then the item table and thumbnails.

    Files are written under a temp folder the caller swaps into place when everything
    is written (``diffret_cli.fileio.replace_dir``), so a reader never sees half an index.
    """

    def __init__(self, root: Path, *, n: int, tokens: int, width: int, with_cls: bool, with_thumbs: bool):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        mm = np.lib.format.open_memmap
        self.features = mm(self.root / FEATURES, mode="w+", dtype=np.float16, shape=(n, tokens, width))
        self.weights = mm(self.root / WEIGHTS, mode="w+", dtype=np.float32, shape=(n, tokens))
        self.lengths = mm(self.root / LENGTHS, mode="w+", dtype=np.int16, shape=(n,))
        self.pooled = mm(self.root / POOLED, mode="w+", dtype=np.float16, shape=(n, width))
        self.cls = mm(self.root / CLS, mode="w+", dtype=np.float16, shape=(n, width)) if with_cls else None
        self.with_thumbs = with_thumbs
        self.n = n

    def write(self, start: int, *, features: np.ndarray, weights: np.ndarray, lengths: np.ndarray,
              pooled_vectors: np.ndarray, cls: np.ndarray | None = None) -> None:
        end = start + len(lengths)
        self.features[start:end] = features
        self.weights[start:end] = weights
        self.lengths[start:end] = lengths
        self.pooled[start:end] = pooled_vectors
        if self.cls is not None:
            if cls is None:
                raise ValueError("this part keeps sentence features: pass cls=")
            self.cls[start:end] = cls

    def finish(self, items: Iterable[dict[str, Any]], thumbs: Iterable[bytes] | None = None) -> None:
        """Flush the arrays, then write the item table (and thumbnails), one per row."""
        for a in (self.features, self.weights, self.lengths, self.pooled, self.cls):
            if a is not None:
                a.flush()
        offsets = [0]
        with open(self.root / ITEMS, "wb") as fh:
            for it in items:
                fh.write(json.dumps(it, ensure_ascii=False).encode("utf-8") + b"\n")
                offsets.append(fh.tell())
        if len(offsets) != self.n + 1:
            raise ValueError(f"{len(offsets) - 1} items for {self.n} rows")
        np.save(self.root / ITEMS_IDX, np.asarray(offsets, dtype=np.int64))
        if self.with_thumbs:
            offs = [0]
            with open(self.root / THUMBS, "wb") as fh:
                for jpg in thumbs or ():
                    fh.write(jpg or b"")
                    offs.append(fh.tell())
            if len(offs) != self.n + 1:
                raise ValueError(f"{len(offs) - 1} thumbnails for {self.n} rows")
            np.save(self.root / THUMBS_IDX, np.asarray(offs, dtype=np.int64))
        _fsync_tree(self.root)


def _fsync_tree(root: Path) -> None:
    for p in root.iterdir():
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
