"""The first stage: FAISS over one pooled vector per item (:func:`store.pooled`).

It only has to shortlist: the token-wise similarity then re-scores the shortlist
exactly, so the first stage trades a little recall of its own order for speed and
memory, and its vectors are kept in float16 (FAISS scalar quantizer ``QT_fp16``: 2 bytes
per dimension, decoded exactly to the float16 values the store holds).

Kinds (``auto`` picks by collection size; every kind can be forced):

- ``flat``: exhaustive inner product. Exact; the default up to :data:`EXACT_UP_TO` items,
  where a scan costs a few milliseconds.
- ``ivf``: inverted lists over ``nlist`` k-means cells; a query scans the ``nprobe``
  nearest cells. The default above :data:`EXACT_UP_TO`: it builds in minutes on two
  cores (k-means on a sample, then one assignment pass) and its memory is the vectors
  plus 8 bytes of id each.
- ``hnsw``: a proximity graph (``M`` links per item). Fast queries, but a slow build on
  a CPU (hours for a million items on two cores) and 2M x 4 bytes of links per item;
  pick it by hand where build time is cheap.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from diffret_cli.errors import ConfigError

KINDS = ("auto", "flat", "ivf", "hnsw")
#: up to this many items ``auto`` is exact (a float16 scan of 100k x 512 is ~100 MB)
EXACT_UP_TO = 100_000
#: k-means training points per IVF cell (FAISS warns below 39; more buys little)
TRAIN_PER_CELL = 64


def _faiss():
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ImportError("the search index needs FAISS: pip install faiss-cpu (or faiss-gpu)") from exc
    return faiss


@dataclass
class FirstStageSpec:
    kind: str
    nlist: int = 0  # ivf
    nprobe: int = 0  # ivf: cells scanned per query (a search may override it)
    m: int = 0  # hnsw: links per node
    ef_search: int = 0  # hnsw: candidate list size (raised to the shortlist size at search)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v or k == "kind"}

    @classmethod
    def from_dict(cls, d: dict) -> "FirstStageSpec":
        return cls(**d)


def choose(n: int, kind: str = "auto", *, nlist: int | None = None, nprobe: int | None = None,
           m: int | None = None) -> FirstStageSpec:
    """The first stage for ``n`` items. IVF cells: the power of two nearest sqrt(n)
    (FAISS's guideline is 1 to 16 x sqrt(n); fewer cells keep k-means cheap on a CPU,
    and the shortlist is long, so cells may be coarse); ``nprobe`` scans about 2.5% of
    the collection (the bench measures recall of the final top 10 at this setting)."""
    if kind not in KINDS:
        raise ConfigError(f"unknown first-stage index kind {kind!r}", hint=f"use one of: {', '.join(KINDS)}")
    if kind == "auto":
        kind = "flat" if n <= EXACT_UP_TO else "ivf"
    if kind == "flat":
        return FirstStageSpec("flat")
    if kind == "ivf":
        cells = nlist or max(16, 2 ** round(math.log2(max(math.sqrt(n), 1))))
        cells = min(cells, max(1, n // 39))  # every cell needs training points
        return FirstStageSpec("ivf", nlist=cells, nprobe=nprobe or max(8, math.ceil(cells / 40)))
    return FirstStageSpec("hnsw", m=m or 32, ef_search=128)


def build(vectors: np.ndarray, spec: FirstStageSpec, *, batch: int = 65536, seed: int = 0,
          progress: Callable[[int], None] | None = None):
    """A FAISS index over ``vectors`` [N, D] (any float dtype; a memmap is read in
    batches, so a million rows never sit in memory as float32 at once)."""
    faiss = _faiss()
    n, d = vectors.shape
    qt, ip = faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
    if spec.kind == "flat":
        index = faiss.IndexScalarQuantizer(d, qt, ip)
    elif spec.kind == "ivf":
        index = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(d), d, spec.nlist, qt, ip)
        index.by_residual = False  # fp16 codes are exact enough; residuals only slow the scan
        rng = np.random.default_rng(seed)
        take = min(n, spec.nlist * TRAIN_PER_CELL)
        sample = np.sort(rng.choice(n, take, replace=False))
        index.cp.seed = seed
        index.train(np.ascontiguousarray(vectors[sample], dtype=np.float32))
        index.nprobe = spec.nprobe
    elif spec.kind == "hnsw":
        index = faiss.IndexHNSWSQ(d, qt, spec.m, ip)
        index.hnsw.efSearch = spec.ef_search
        index.train(np.ascontiguousarray(vectors[: min(n, 10000)], dtype=np.float32))
    else:  # pragma: no cover - choose() validated it
        raise ConfigError(f"unknown first-stage kind {spec.kind!r}", hint=f"use one of: {', '.join(KINDS[1:])}")
    for a in range(0, n, batch):
        index.add(np.ascontiguousarray(vectors[a:a + batch], dtype=np.float32))
        if progress:
            progress(min(batch, n - a))
    return index


def save(index, path: Path) -> None:
    from diffret_cli.fileio import atomic_path

    faiss = _faiss()
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))


def load(path: Path):
    return _faiss().read_index(str(path))


def search(index, spec: FirstStageSpec, queries: np.ndarray, k: int, *, nprobe: int | None = None):
    """(scores [B,k] float32, rows [B,k] int64; -1 where fewer than k items were found)."""
    faiss = _faiss()
    q = np.ascontiguousarray(queries, dtype=np.float32)
    k = min(k, index.ntotal)
    if spec.kind == "ivf":
        params = faiss.SearchParametersIVF(nprobe=int(nprobe or spec.nprobe))
        return index.search(q, k, params=params)
    if spec.kind == "hnsw":
        params = faiss.SearchParametersHNSW(efSearch=max(k, spec.ef_search))
        return index.search(q, k, params=params)
    return index.search(q, k)
