"""Querying an index: first stage, token-wise similarity on the shortlist, diffusion
re-ranking of the top K.

    from diffret_cli.search import SearchIndex

    index = SearchIndex.open("my-index")                  # the model it was built with
    [hits] = index.search("a man is playing guitar", top=10)
    index.search_video("clip.mp4")                        # video -> captions

A text query goes through three stages (DiffusionRet's two, with a cheap one in front):

1. FAISS returns the ``shortlist`` items whose pooled vector is nearest the query's
   (:mod:`~diffret_cli.search.first_stage`);
2. the token-wise similarity (paper Eq. 10) scores the shortlist exactly, from the
   memory-mapped features (only those rows are read);
3. the text-to-video denoiser re-ranks the top ``rerank`` of them (Eq. 13).

Stages 2 and 3 are what ``diffret eval`` computes over the whole gallery: when the
shortlist holds the gallery's Eq. 10 top ``rerank``, the results are the exhaustive ones.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffret_cli.model.diffusionret import TextFeatures
from diffret_cli.search import first_stage, scoring
from diffret_cli.search.store import Part, SearchIndexError

FORMAT = "diffret-index/1"
INDEX_JSON = "index.json"
FIRST_STAGE_FILE = "first_stage.faiss"
#: items the first stage hands to the token-wise similarity per query (the bench
#: measures the recall of the final top 10 it gives on a million items)
DEFAULT_SHORTLIST = 1000
#: rows Eq. 10 scores at once for a batch of queries (their shortlists' union)
MAX_SCORED_ROWS = 16384


def model_fingerprint(model) -> str:
    """A short hash of the model's weights (names, shapes and a strided sample of every
    tensor, so it costs milliseconds even for ViT-B/32): an index and the model that
    queries it must agree, or the query lands in a different feature space. The config
    is left out: a saved and reloaded model spells it out in full, same weights."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        flat = t.detach().reshape(-1)
        step = max(1, flat.numel() // 256)
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(flat[::step].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def read_meta(root: Path) -> dict[str, Any]:
    path = Path(root) / INDEX_JSON
    if not path.is_file():
        hint = "build one with `diffret index build --checkpoint RUN (--videos DIR | --dataset NAME) --out INDEX`"
        if Path(root).with_name(f".tmp-build-{Path(root).name}").is_dir():
            hint = "a build of it was interrupted: run the same `diffret index build` command again to resume"
        raise SearchIndexError(f"{root} is not a search index (no {INDEX_JSON})", hint=hint)
    meta = json.loads(path.read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT:
        raise SearchIndexError(f"{path}: format {meta.get('format')!r}, this diffret reads {FORMAT!r}",
                               hint="rebuild the index with this version: `diffret index build ...`")
    return meta


class _Stage:
    """One searchable part: its store and its first-stage index."""

    def __init__(self, root: Path, spec: dict):
        self.part = Part.open(root)
        self.spec = first_stage.FirstStageSpec.from_dict(spec)
        self.index = first_stage.load(root / FIRST_STAGE_FILE)

    def shortlist(self, queries: torch.Tensor, k: int, nprobe: int | None) -> tuple[np.ndarray, np.ndarray]:
        """Union of the queries' shortlists (sorted rows) and a [B, U] membership mask."""
        n = len(self.part)
        if n <= k:  # everything is the shortlist: exhaustive
            return np.arange(n), np.ones((queries.shape[0], n), dtype=bool)
        _, rows = first_stage.search(self.index, self.spec, queries.cpu().numpy(), k, nprobe=nprobe)
        union = np.unique(rows[rows >= 0])
        member = np.zeros((rows.shape[0], len(union)), dtype=bool)
        for b in range(rows.shape[0]):
            r = rows[b][rows[b] >= 0]
            member[b, np.searchsorted(union, r)] = True
        return union, member


class SearchIndex:
    def __init__(self, root: Path, meta: dict, model, *, device: torch.device):
        self.root, self.meta, self.model, self.device = Path(root), meta, model, device
        self.videos = _Stage(self.root / "videos", meta["videos"]["first_stage"]) if meta.get("videos") else None
        self.captions = (_Stage(self.root / "captions", meta["captions"]["first_stage"])
                         if meta.get("captions") else None)

    @classmethod
    def open(cls, root: str | Path, *, model=None, checkpoint: str | Path | None = None,
             device: str | torch.device = "cpu", check_model: bool = True) -> "SearchIndex":
        """Open an index with the model it was built with (``index.json`` records its
        checkpoint; ``checkpoint`` or ``model`` replace it, and must be the same weights)."""
        from diffret_cli import api

        root = Path(root)
        meta = read_meta(root)
        device = torch.device(device)
        if model is None:
            ckpt = checkpoint or meta["model"].get("checkpoint")
            if not ckpt or not Path(ckpt).exists():
                raise SearchIndexError(f"the checkpoint this index was built with is not at {ckpt}",
                                       hint="pass it with --checkpoint PATH (the same weights)")
            model = api.load(ckpt, device=str(device))
        model = model.to(device).eval()
        if not hasattr(model, "denoiser_t2v"):
            raise SearchIndexError("search re-ranks with DiffusionRet's denoisers; this model has none",
                                   hint="build and query the index with a DiffusionRet checkpoint")
        if check_model and model_fingerprint(model) != meta["model"]["fingerprint"]:
            raise SearchIndexError(
                f"{root} was built with another model (fingerprint {meta['model']['fingerprint']}, "
                f"built from {meta['model'].get('checkpoint')})",
                hint="query it with the checkpoint it was built with, or rebuild the index with this one")
        return cls(root, meta, model, device=device)

    # ------------------------------------------------------------------ settings
    def _settings(self, stage: _Stage, direction: str, top: int, shortlist: int | None, rerank: int | None,
                  steps: int | None, seed: int, nprobe: int | None) -> dict[str, Any]:
        k = self.model.config["rerank"][f"topk_{direction}"] if rerank is None else int(rerank)
        s = max(int(shortlist or DEFAULT_SHORTLIST), k, top)
        return {"top": int(top), "shortlist": min(s, len(stage.part)), "rerank": k,
                "steps": len(self.model.make_sampler(**({"sample_steps": steps} if steps else {})).timesteps()),
                "seed": int(seed),
                "first_stage": stage.spec.kind,
                "nprobe": (nprobe or stage.spec.nprobe) if stage.spec.kind == "ivf" else None}

    # ------------------------------------------------------------------ text -> video
    def search(self, queries: str | list[str], *, top: int = 10, shortlist: int | None = None,
               rerank: int | None = None, steps: int | None = None, seed: int = 0,
               nprobe: int | None = None) -> list[dict[str, Any]]:
        """Text-to-video: one result dict per query (the JSON of ``diffret search --json``)."""
        if self.videos is None:
            raise SearchIndexError(f"{self.root} holds no videos (it is an index of captions)",
                                   hint="query it with --video FILE, or build an index with --videos/--dataset")
        queries = [queries] if isinstance(queries, str) else list(queries)
        t0 = time.perf_counter()
        text = scoring.encode_queries(self.model, queries, device=self.device)
        encode_ms = (time.perf_counter() - t0) * 1e3
        out = self.search_features(text, top=top, shortlist=shortlist, rerank=rerank, steps=steps, seed=seed,
                                   nprobe=nprobe)
        for q, r in zip(queries, out):
            r["query"] = q
            r["timing_ms"] = {"encode": round(encode_ms, 2), **r["timing_ms"]}
            r["timing_ms"]["total"] = round(sum(v for k, v in r["timing_ms"].items() if k != "total"), 2)
        return out

    @torch.no_grad()
    def search_features(self, text: TextFeatures, *, top: int = 10, shortlist: int | None = None,
                        rerank: int | None = None, steps: int | None = None, seed: int = 0,
                        nprobe: int | None = None) -> list[dict[str, Any]]:
        """Text-to-video from already encoded queries (what :meth:`search` runs after the
        text tower; the bench feeds it features too).

        Stage 2 runs on groups of queries whose shortlists together stay under
        :data:`MAX_SCORED_ROWS` rows (memory stays bounded for any batch); each query
        keeps its best ``max(top, rerank)`` items. Stage 3 then re-ranks queries in the
        model's ``rerank.chunk_size`` chunks with one generator seeded by ``seed``: the
        noise layout of ``diffret eval``, so a batch of a split's captions against an
        index of that split gives evaluation's ranking.
        """
        stage, part = self.videos, self.videos.part
        st = self._settings(stage, "t2v", top, shortlist, rerank, steps, seed, nprobe)
        timing = {"first_stage": 0.0, "read": 0.0, "tokenwise": 0.0, "rerank": 0.0}
        tick = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal tick
            now = time.perf_counter()
            timing[name] += (now - tick) * 1e3
            tick = now

        text = TextFeatures(text.tokens.to(self.device), text.cls.to(self.device), text.mask.to(self.device))
        t, tw, tmask, q = scoring.text_side(self.model, text)
        b, k = q.shape[0], st["rerank"]
        keep = min(max(top, k), len(part))
        cand_rows = np.full((b, keep), -1, dtype=np.int64)
        cand_s1 = torch.full((b, keep), float("-inf"), device=self.device)
        lap("first_stage")
        group = max(1, MAX_SCORED_ROWS // st["shortlist"])
        for a in range(0, b, group):  # stage 2: Eq. 10 on each query's shortlist
            sl = slice(a, min(a + group, b))
            rows, member = stage.shortlist(q[sl], st["shortlist"], st["nprobe"])
            lap("first_stage")
            feats, weights, mask = part.rows(rows)  # features as stored: float16
            feats, weights, mask = feats.to(self.device), weights.to(self.device), mask.to(self.device)
            lap("read")
            s1 = scoring.tokenwise(t[sl], tw[sl], tmask[sl], scoring.normalise(feats, mask), weights)
            s1 = s1.masked_fill(~torch.from_numpy(member).to(self.device), float("-inf"))
            vals, cols = s1.topk(min(keep, len(rows)), dim=1)
            cand_rows[sl, :vals.shape[1]] = rows[cols.cpu().numpy()]
            cand_s1[sl, :vals.shape[1]] = vals
            lap("tokenwise")
        fused = cand_s1.clone()
        if k > 0:  # stage 3: the top k of each query, in evaluation's chunks and noise order
            g = torch.Generator(device=self.device).manual_seed(seed)
            chunk = self.model.config["rerank"]["chunk_size"]
            for a in range(0, b, chunk):
                sl = slice(a, min(a + chunk, b))
                top_rows = torch.from_numpy(cand_rows[sl, :k]).to(self.device)
                top_s = cand_s1[sl, :k]
                cands, pos, sub = scoring.candidate_matrix(top_rows, top_s)  # each row: its top k
                if cands.numel() == 0:
                    continue
                feats, _, mask = part.rows(cands.cpu().numpy())
                out = scoring.rerank_t2v(self.model, sub, text.cls[sl], feats.float().to(self.device),
                                         mask.to(self.device), topk=k, steps=steps, seed=seed, generator=g,
                                         chunk_size=chunk)
                fused[sl, :k] = torch.where(top_rows >= 0, out.gather(1, pos), top_s)
            lap("rerank")
        scores, order = fused.topk(min(top, keep), dim=1)
        out = []
        for i in range(b):
            hits = []
            for c, sc in zip(order[i].tolist(), scores[i].tolist()):
                row = int(cand_rows[i, c])
                if row < 0 or sc == float("-inf"):  # an approximate first stage found fewer items
                    continue
                item = part.item(row)
                hits.append({"rank": len(hits) + 1, "row": row, "id": item["id"], "path": item.get("path"),
                             "score": round(float(sc), 6), "stage1": round(float(cand_s1[i, c]), 6),
                             **({"captions": item["captions"]} if item.get("captions") else {})})
            out.append({"direction": "t2v", "results": hits, "settings": st,
                        "timing_ms": {k_: round(v, 2) for k_, v in timing.items()}})
        return out

    # ------------------------------------------------------------------ video -> text
    @torch.no_grad()
    def search_video(self, path: str | Path, *, top: int = 10, shortlist: int | None = None,
                     rerank: int | None = None, steps: int | None = None, seed: int = 0,
                     nprobe: int | None = None, backend: str = "auto") -> dict[str, Any]:
        """Video-to-text: the captions of the index that best describe the video file."""
        from diffret_cli.search.sources import load_file

        if self.captions is None:
            raise SearchIndexError(f"{self.root} holds no captions",
                                   hint="build the index from a dataset (--dataset NAME) or add --captions FILE")
        stage = self.captions
        st = self._settings(stage, "v2t", top, shortlist, rerank, steps, seed, nprobe)
        t0 = time.perf_counter()
        enc = self.model.encoder
        loaded = load_file(path, image_size=enc.image_size, mean=enc.image_mean, std=enc.image_std,
                           max_frames=self.model.config["max_frames"], backend=backend, thumbs=False)
        if loaded.error:
            raise SearchIndexError(f"cannot read the query video {path}: {loaded.error}",
                                   hint="check that the file is a video decord or PyAV can decode")
        video = self.model.encode_video(loaded.frames[None].to(self.device), loaded.mask[None].to(self.device))
        v, vw = self.model.similarity.prepare_video(video.frames, video.mask)
        q = scoring.pooled(v, vw)
        timing = {"encode": round((time.perf_counter() - t0) * 1e3, 2)}
        t1 = time.perf_counter()
        rows, _ = stage.shortlist(q, st["shortlist"], st["nprobe"])
        tokens, weights, mask = stage.part.rows(rows)
        t_norm = scoring.normalise(tokens.to(self.device), mask.to(self.device))
        # captions are the text side of Eq. 10: [K, 1] scores, one row per caption
        s1 = scoring.tokenwise(t_norm, weights.to(self.device), mask.to(self.device), v, vw).t()
        cls = torch.from_numpy(np.ascontiguousarray(stage.part.cls[rows])).float().to(self.device)
        timing["stage1"] = round((time.perf_counter() - t1) * 1e3, 2)
        t2 = time.perf_counter()
        fused = s1
        if st["rerank"] > 0:
            fused = scoring.rerank_top(s1, st["rerank"], lambda sub, cols: scoring.rerank_v2t(
                self.model, sub, cls[cols], video.frames, video.mask, topk=st["rerank"], steps=steps, seed=seed))
        timing["rerank"] = round((time.perf_counter() - t2) * 1e3, 2)
        k = min(top, len(rows))
        scores, cols = fused[0].topk(k)
        hits = []
        for rank, (c, sc) in enumerate(zip(cols.tolist(), scores.tolist()), start=1):
            row = int(rows[c])
            item = stage.part.item(row)
            hits.append({"rank": rank, "row": row, "caption": item["text"], "video": item.get("video"),
                         "video_id": item.get("video_id"),
                         "score": round(float(sc), 6), "stage1": round(float(s1[0, c]), 6)})
        timing["total"] = round(sum(timing.values()), 2)
        return {"query": str(path), "direction": "v2t", "results": hits, "settings": st, "timing_ms": timing}
