"""``diffret bench search``: build time, query latency, recall and bytes per video of a
search index at any gallery size, on features shaped like a trained model's.

What is measured, and how:

- **model**: DiffusionRet at ViT-B/32 shapes (width 512, 12 frames, 32 words, DDIM 50
  steps, re-ranking the top 32), randomly initialised: no weights are needed to time it;
- **gallery**: :class:`~diffret_cli.search.synthetic.GalleryGenerator` features drawn
  around a trained model's features of the ``synthetic`` benchmark;
- **build**: writing the features (frame weights and pooled vectors computed by the
  model, as a real build does; video decoding and the vision tower are not part of it)
  plus the FAISS first stage;
- **latency, end to end, one query at a time**: the ViT-B/32 text tower on the query
  string, then first stage, token-wise similarity on the shortlist and diffusion
  re-ranking. The tower's output is unrelated to the gallery (random weights), so the
  scored query features are the benchmark caption's trained features, lifted like the
  gallery: the time is the tower's, the ranking is a trained model's;
- **recall**: the share of the exhaustive top 10 (the token-wise similarity over the
  *whole* gallery, then the same re-ranking, same noise) that the index returns;
- **bytes per video**: on disk (every file of the index) and in memory (the resident
  FAISS index; the features stay on disk and only the shortlist's rows are read).
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from diffret_cli.errors import ConfigError
from diffret_cli.fileio import atomic_write_json
from diffret_cli.search import scoring
from diffret_cli.search.build import BuildSettings, write_feature_index
from diffret_cli.search.engine import FIRST_STAGE_FILE, SearchIndex
from diffret_cli.search.store import pooled
from diffret_cli.search.synthetic import Centres, GalleryGenerator, Lift, centres_from_model, embed_similarity

#: DiffusionRet at ViT-B/32 shapes (the paper's MSR-VTT model)
BENCH_MODEL = {
    "encoder": {"name": "open_clip", "args": {"model": "ViT-B-32-quickgelu", "pretrained": None, "tokenizer": "clip"}},
    "temporal": {"layers": 4, "init_from_text": False},
    "max_words": 32, "max_frames": 12,
}


def bench_model(*, seed: int = 0, config: dict | None = None):
    """The benchmark's model: ``config`` (default :data:`BENCH_MODEL`), random weights."""
    from diffret_cli.model.diffusionret import DiffusionRet

    torch.manual_seed(seed)
    return DiffusionRet(config or BENCH_MODEL, load_pretrained=False).eval()


def _rss() -> dict[str, int]:
    """Resident memory of this process by kind, in bytes (Linux; empty elsewhere)."""
    out = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon", "RssFile"):
                out[k] = int(v.split()[0]) * 1024
    except OSError:
        pass
    return out


def _machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu": cpu, "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()]}


def _pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(values), q)), 2)


def load_centres(checkpoint: str | Path, *, cache: Path | None, data_root=None, dataset: str = "synthetic") -> Centres:
    from diffret_cli import api

    if cache is not None and cache.is_file():
        cached = Centres.load(cache)
        if cached.similarity:  # a cache written before the weight MLPs were kept is recomputed
            return cached
    model = api.load(checkpoint)
    c = centres_from_model(model, dataset=dataset, data_root=data_root)
    if cache is not None:
        c.save(cache)
    return c


@torch.no_grad()
def exhaustive_top(index: SearchIndex, text, *, k: int, block: int = 4096, group: int = 16,
                   progress: Callable[[int], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The token-wise similarity's top ``k`` over every row of the index, per query:
    (scores [Q,k] best first, rows [Q,k]). Reads the features once, in row order."""
    model, part = index.model, index.videos.part
    q = text.tokens.shape[0]
    order = torch.argsort(text.mask.sum(1))  # queries of similar length share a trimmed width
    groups = [order[a:a + group] for a in range(0, q, group)]
    prepared = []
    for g in groups:
        from diffret_cli.model.diffusionret import TextFeatures

        t, tw, tmask, _ = scoring.text_side(model, TextFeatures(text.tokens[g], text.cls[g], text.mask[g]))
        prepared.append((g, t, tw, tmask))
    best_s = torch.full((q, k), float("-inf"))
    best_i = torch.full((q, k), -1, dtype=torch.long)
    n = len(part)
    for a in range(0, n, block):
        rows = np.arange(a, min(a + block, n))
        feats, weights, mask = part.rows(rows)
        v = scoring.normalise(feats, mask)
        for g, t, tw, tmask in prepared:
            s = scoring.tokenwise(t, tw, tmask, v, weights)
            cat_s = torch.cat([best_s[g], s], dim=1)
            cat_i = torch.cat([best_i[g], torch.from_numpy(rows)[None].expand(len(g), -1)], dim=1)
            top_s, pos = cat_s.topk(k, dim=1)
            best_s[g], best_i[g] = top_s, cat_i.gather(1, pos)
        if progress:
            progress(len(rows))
    return best_s, best_i


@torch.no_grad()
def exhaustive_results(index: SearchIndex, text, *, top: int, rerank: int, steps: int | None, seed: int,
                       progress=None) -> tuple[list[list[int]], list[list[int]]]:
    """Per query: (the exhaustive final top ``top`` rows, the exhaustive stage-1 top ``top``)."""
    k = max(rerank, top)
    s1, rows = exhaustive_top(index, text, k=k, progress=progress)
    final, stage1 = [], []
    for i in range(s1.shape[0]):
        r = rows[i].numpy()
        feats, weights, mask = index.videos.part.rows(r)
        scores = s1[i:i + 1]
        if rerank > 0:  # the same call, on the same sorted candidates, with the same noise as a search
            scores = scoring.rerank_t2v(index.model, scores, text.cls[i:i + 1], feats.float(), mask, topk=rerank,
                                        steps=steps, seed=seed)
        final.append(r[scores[0].topk(top).indices.numpy()].tolist())
        stage1.append(r[:top].tolist())
    return final, stage1


@torch.no_grad()
def agreement(model, text, frames: torch.Tensor, lengths: torch.Tensor) -> dict[str, float]:
    """How well the pooled first-stage score agrees with the token-wise similarity (Eq.
    10) over a gallery: the share of each query's Eq. 10 top 10 found in the pooled top
    1% / 5%, and the mean Spearman correlation of the two orders."""
    t, tw, tmask, q = scoring.text_side(model, text)
    mask = (torch.arange(frames.shape[1])[None] < lengths[:, None]).long()
    vn, vw = model.similarity.prepare_video(frames.float(), mask)
    s = scoring.tokenwise(t, tw, tmask, vn, vw)
    p = q @ pooled(vn, vw).t()
    n = frames.shape[0]
    rank = torch.empty_like(p, dtype=torch.long)
    rank.scatter_(1, p.argsort(dim=1, descending=True), torch.arange(n).expand(p.shape[0], n).contiguous())
    r = rank.gather(1, s.topk(min(10, n), dim=1).indices)
    rs, rp = s.argsort(1).argsort(1).double(), p.argsort(1).argsort(1).double()
    rs, rp = rs - rs.mean(1, keepdim=True), rp - rp.mean(1, keepdim=True)
    rho = (rs * rp).sum(1) / (rs.norm(dim=1) * rp.norm(dim=1))
    return {"gallery": n, "queries": int(p.shape[0]),
            "top10_in_pooled_top1pct": round(float((r < max(1, n // 100)).float().mean()), 4),
            "top10_in_pooled_top5pct": round(float((r < max(1, n // 20)).float().mean()), 4),
            "spearman": round(float(rho.mean()), 4)}


def default_checkpoint(base: Path = Path("runs")) -> Path:
    """The newest finished run under ``base`` trained on ``synthetic`` (the quickstart)."""
    from diffret_cli.evaluation import find_run_for

    try:
        return find_run_for("synthetic", base)
    except ConfigError as exc:
        raise ConfigError(f"the search bench draws its gallery around a trained model's features, and no run "
                          f"trained on `synthetic` is under {base}/",
                          hint="train the quickstart (`diffret train --recipe quickstart`, a few minutes on a CPU) "
                               "or pass its run directory with --checkpoint") from exc


def summary_lines(res: dict[str, Any]) -> list[str]:
    """The headline figures of a :func:`bench_search` result, one per line."""
    q, b, r, m = res["query"], res["build"], res["recall"], res["bytes_per_video"]
    fs = b["first_stage"]
    lines = [f"gallery               {res['gallery']:,} videos ({fs['kind']}"
             + (f", nlist {fs['nlist']}, nprobe {q['settings']['nprobe']}" if fs["kind"] == "ivf" else "") + ")",
             f"build                 {b['seconds']:.1f} s (features {b.get('features_s', 0):.1f} s, "
             f"first stage {b.get('first_stage_s', 0):.1f} s)",
             f"query latency         p50 {q['p50_ms']:.1f} ms, p95 {q['p95_ms']:.1f} ms ({q['queries']} queries, "
             f"{res['threads']} threads, {res['device']})",
             "  stages p50          " + ", ".join(f"{k} {v:.1f}" for k, v in q["stages_p50_ms"].items()),
             f"recall of exhaustive  top 10: {r['top10']:.4f} ({r['queries']} queries)",
             f"bytes per video       disk {m['disk']:.0f}, memory (first stage) {m['memory_first_stage']:.0f}, "
             f"read per query {m['read_per_query_bytes'] / 1e6:.1f} MB",
             f"load average          {res['machine_before']['load_avg_1_5_15']} -> "
             f"{res['machine_after']['load_avg_1_5_15']} on {res['machine_before']['cpus']} CPUs"]
    if "query_cold_cache" in res:
        c = res["query_cold_cache"]
        lines.insert(4, f"  cold page cache     p50 {c['p50_ms']:.1f} ms, p95 {c['p95_ms']:.1f} ms")
    return lines


def _drop_page_cache(root: Path) -> bool:
    """Ask the kernel to drop the cached pages of the index's feature files (needs no
    privileges; pages still mapped by a process stay)."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for p in (root / "videos").iterdir():
        if p.suffix == ".npy":
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    return True


def bench_search(*, gallery: int, device: str = "cpu", checkpoint: str | Path | None = None,
                 workdir: str | Path | None = None, data_root=None, queries: int = 200, recall_queries: int = 100,
                 top: int = 10, shortlist: int | None = None, rerank: int = 32, steps: int | None = None,
                 first_stage: str = "auto", nlist: int | None = None, nprobe: int | None = None,
                 threads: int | None = 2, noise: float = 0.5, mix: float = 0.5, seed: int = 0, cold: bool = True,
                 reuse: bool = False, keep: bool = False, chunk: int = 8192, model_config: dict | None = None,
                 log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Build an index of ``gallery`` synthetic videos and measure it (see the module doc).

    ``checkpoint``: a model trained on ``synthetic`` (the centres' features); ``workdir``
    keeps the centres cache and the index (a temp folder, deleted, when None);
    ``reuse``: measure an index already in ``workdir`` built with the same arguments;
    ``model_config``: another model shape than ViT-B/32 (tests use a tiny one).
    """
    log = log or (lambda s: None)
    if gallery < 1:
        raise ConfigError(f"--gallery must be at least 1, got {gallery}", hint="e.g. --gallery 100000")
    checkpoint = checkpoint or default_checkpoint()
    if threads:
        torch.set_num_threads(threads)
        import faiss

        faiss.omp_set_num_threads(threads)
    dev = torch.device(device)
    own_tmp = workdir is None
    work = Path(tempfile.mkdtemp(prefix="diffret-bench-search-")) if own_tmp else Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"gallery": gallery, "device": str(dev), "threads": threads or torch.get_num_threads(),
                              "machine_before": _machine()}
    try:
        centres = load_centres(checkpoint, cache=work / "centres.npz", data_root=data_root)
        model = bench_model(seed=seed, config=model_config)
        width, frames = model.encoder.embed_dim, model.config["max_frames"]
        lift = Lift(centres.frames.shape[2], width, seed=seed)
        embed_similarity(model, centres, lift)
        gen = GalleryGenerator(centres, lift, frames=frames, noise=noise, mix=mix, seed=seed)
        settings = BuildSettings(first_stage=first_stage, nlist=nlist, nprobe=nprobe, thumbnails=False,
                                 progress=False)
        index_dir = work / "index"
        spec_args = {"gallery": gallery, "seed": seed, "noise": noise, "mix": mix, "first_stage": first_stage,
                     "nlist": nlist, "nprobe": nprobe, "checkpoint": str(checkpoint),
                     "model": model_config or BENCH_MODEL}
        args_file = work / "index-args.json"
        if not (reuse and args_file.is_file() and json.loads(args_file.read_text()) == spec_args
                and (index_dir / "index.json").is_file()):
            log(f"building an index of {gallery:,} synthetic videos in {index_dir}")

            def batches():
                for a in range(0, gallery, chunk):
                    f, ln = gen.chunk(a, min(chunk, gallery - a))
                    yield a, torch.from_numpy(f), torch.from_numpy(ln)
                    if a // chunk % 16 == 0:
                        log(f"  features {min(a + chunk, gallery):,}/{gallery:,}")

            items = ({"id": f"synthetic-{i:07d}", "path": None} for i in range(gallery))
            ckpt_dir = None
            if not own_tmp:  # kept: `diffret search WORKDIR/index "..."` then works on the bench's index
                from diffret_cli.checkpoint import save_model

                ckpt_dir = str(save_model(model, work / "model").resolve())
            meta = write_feature_index(model, index_dir, n=gallery, batches=batches(), items=items, settings=settings,
                                       checkpoint=ckpt_dir, description={"kind": "synthetic-features", **spec_args})
            atomic_write_json(args_file, spec_args)
        meta = json.loads((index_dir / "index.json").read_text())
        # the generated gallery's shape: pooled vs token-wise agreement, real centres vs generated
        aq = gen.queries(np.arange(min(200, len(centres.captions))))
        v = len(centres.frames)
        real = torch.from_numpy(lift(centres.frames.reshape(-1, centres.frames.shape[2]))).reshape(
            v, centres.frames.shape[1], width)
        real_len = torch.from_numpy(centres.lengths)
        gf, gl = gen.chunk(0, min(v, gallery))
        result["agreement"] = {"real": agreement(model, aq, real, real_len),
                               "generated": agreement(model, aq, torch.from_numpy(gf), torch.from_numpy(gl))}
        result["build"] = {"seconds": meta["build_seconds"], **{f"{k}_s": v for k, v in
                                                                meta.get("build_seconds_parts", {}).items()},
                           "first_stage": meta["videos"]["first_stage"]}
        gc.collect()
        rss0 = _rss()
        index = SearchIndex.open(index_dir, model=model.to(dev), device=dev, check_model=False)
        rss1 = _rss()
        g = np.random.default_rng([seed, 7])
        picks = g.choice(len(centres.captions), size=min(queries, len(centres.captions)), replace=False)
        text = gen.queries(picks)
        kw = dict(top=top, shortlist=shortlist, rerank=rerank, steps=steps, seed=seed, nprobe=nprobe)

        settings_used: dict[str, Any] = {}

        def one(i: int) -> tuple[float, dict, list[int]]:
            t0 = time.perf_counter()
            scoring.encode_queries(model, [centres.captions[picks[i]]], device=dev)  # the ViT-B/32 tower, timed
            t1 = time.perf_counter()
            [res] = index.search_features(type(text)(text.tokens[i:i + 1], text.cls[i:i + 1], text.mask[i:i + 1]), **kw)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t2 = time.perf_counter()
            stages = {"text_tower": (t1 - t0) * 1e3, **res["timing_ms"]}
            settings_used.update(res["settings"])
            return (t2 - t0) * 1e3, stages, [h["row"] for h in res["results"]]

        for i in range(min(5, len(picks))):  # warm-up: lazy inits, first page faults of the FAISS lists
            one(i)
        lat, stage_ms, got = [], {}, []
        for i in range(len(picks)):
            ms, stages, rows = one(i)
            lat.append(ms)
            got.append(rows)
            for k, v in stages.items():
                stage_ms.setdefault(k, []).append(v)
        rss2 = _rss()
        result["query"] = {"queries": len(picks), "p50_ms": _pct(lat, 50), "p95_ms": _pct(lat, 95),
                           "mean_ms": round(statistics.fmean(lat), 2),
                           "stages_p50_ms": {k: _pct(v, 50) for k, v in stage_ms.items()},
                           "settings": dict(settings_used)}
        # recall of the exhaustive top 10
        nr = min(recall_queries, len(picks))
        log(f"exhaustive scoring of {nr} queries over {gallery:,} videos for recall")
        sub = type(text)(text.tokens[:nr], text.cls[:nr], text.mask[:nr])
        key = hashlib.sha256(json.dumps([spec_args, picks[:nr].tolist(), top, rerank, steps, seed]).encode()).hexdigest()
        cache = work / f"exhaustive-{key[:16]}.json"  # the reference does not depend on the search settings
        if reuse and cache.is_file():
            exact, exact1 = json.loads(cache.read_text())
        else:
            exact, exact1 = exhaustive_results(index, sub, top=top, rerank=rerank, steps=steps, seed=seed)
            atomic_write_json(cache, [exact, exact1])
        hit = [len(set(a) & set(b)) / len(b) for a, b in zip(got[:nr], exact)]
        got1 = []
        if rerank > 0:  # the first stage + Eq. 10 alone, against Eq. 10 over the whole gallery
            for i in range(nr):
                one1 = type(text)(text.tokens[i:i + 1], text.cls[i:i + 1], text.mask[i:i + 1])
                [r1] = index.search_features(one1, **{**kw, "rerank": 0})
                got1.append([h["row"] for h in r1["results"]])
        hit1 = [len(set(a) & set(b)) / len(b) for a, b in zip(got1, exact1)] if got1 else []
        result["recall"] = {"queries": nr, "gallery": gallery, f"top{top}": round(float(np.mean(hit)), 4),
                            "min_per_query": round(float(np.min(hit)), 4),
                            **({f"stage1_top{top}": round(float(np.mean(hit1)), 4)} if hit1 else {}),
                            "reference": "token-wise similarity over the whole gallery, then the same re-ranking"}
        # bytes
        files = {p.name: p.stat().st_size for p in (index_dir / "videos").iterdir() if p.is_file()}
        disk = sum(files.values())
        fs_bytes = files.get(FIRST_STAGE_FILE, 0)
        row_bytes = frames * width * 2 + frames * 4 + 2
        result["bytes_per_video"] = {
            "disk": round(disk / gallery, 1),
            "disk_by_file": {k: round(v / gallery, 1) for k, v in sorted(files.items())},
            "memory_first_stage": round(fs_bytes / gallery, 1),
            "memory_rss_after_open": round((rss1.get("VmRSS", 0) - rss0.get("VmRSS", 0)) / gallery, 1),
            "memory_rss_anon_after_queries": round((rss2.get("RssAnon", 0) - rss0.get("RssAnon", 0)) / gallery, 1),
            "read_per_query_bytes": result["query"]["settings"]["shortlist"] * row_bytes,
        }
        if cold:  # the features' pages dropped from the page cache: the first queries after a boot
            del index
            gc.collect()
            dropped = _drop_page_cache(index_dir)
            index = SearchIndex.open(index_dir, model=model, device=dev, check_model=False)
            cold_lat = []
            for i in range(min(20, len(picks))):
                if dropped:
                    _drop_page_cache(index_dir)
                ms, _, _ = one(i)
                cold_lat.append(ms)
            result["query_cold_cache"] = {"queries": len(cold_lat), "p50_ms": _pct(cold_lat, 50),
                                          "p95_ms": _pct(cold_lat, 95), "page_cache_dropped": dropped}
        result["machine_after"] = _machine()
        result["notes"] = ("features synthetic (drawn around a trained model's features of `synthetic`); "
                           "text tower timed at ViT-B/32 shapes with random weights")
        return result
    finally:
        if own_tmp and not keep:
            shutil.rmtree(work, ignore_errors=True)
