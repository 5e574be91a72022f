"""Evaluation from cached features: diffret against the official loops, same process.

Three paths over the same random features of the official shapes (32 word slots with
8-20 used, 12 frames, width 512), the same weights and the same DDIM start noise, N
texts x N videos, top K, both directions:

  official  the official evaluation's structure (bench/official_baseline.py): similarity
            in 32 x 32 blocks with the weight MLPs rerun per block over all 32 word
            slots; re-ranking per block of 32 queries with Python gathers and scatters and
            a denoiser that recomputes everything at every step;
  before    diffret before the fast paths: the all-slot similarity in 256 x 256 blocks,
            and re-ranking with ``prepare`` once per chunk and the explicit ``step``;
  diffret   what ``diffret eval`` runs now (:func:`diffret_cli.bench.run_eval`): the
            similarity over valid tokens only, the weight MLPs once per text/video, and
            folded DDIM steps (``prepare_gallery`` / ``prepare_chunk``).

The fused matrices of all three must agree to float32 rounding; the script prints
seconds per phase and the speed-ups, and fails if the paths disagree.

    python bench/bench_rerank.py                          # N=1000, K=32, 50 steps
    python bench/bench_rerank.py --n 256 --skip-official  # quick look
    python bench/bench_rerank.py --threads 1 --json out.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from diffret_cli.bench import EvalParts, PhaseTimer, official_shape_features, run_eval
from diffret_cli.bench.evaluation import make_sampler
from diffret_cli.rerank import rerank_direction
from official_baseline import official_rerank_direction, official_similarity


class Explicit(torch.nn.Module):
    """A denoiser seen without its gallery protocol: the re-ranker then gathers the
    candidates and runs ``prepare`` + the explicit ``step`` (diffret before #11)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.direction = inner, inner.direction

    def prepare(self, *args):
        return self.inner.prepare(*args)

    def step(self, *args):
        return self.inner.step(*args)

    def fuse(self, *args, **kwargs):
        return self.inner.fuse(*args, **kwargs)


def noise_for(noise: dict, chunk: int):
    return lambda direction, i, shape: noise[direction][i * chunk:i * chunk + shape[0]]


@torch.no_grad()
def run_before(f, parts, *, topk, steps, chunk, noise, timer):
    sim_mod = parts.similarity
    with timer.phase("similarity"):
        t, tw = sim_mod.prepare_text(f.tokens, f.text_mask)
        v, vw = sim_mod.prepare_video(f.frames, f.frame_mask)
        n = 256
        sim = torch.cat([torch.cat([sim_mod.combine(t[i:i + n], tw[i:i + n], v[j:j + n], vw[j:j + n])
                                    for j in range(0, v.shape[0], n)], dim=1) for i in range(0, t.shape[0], n)])
    sampler = make_sampler(steps)
    common = dict(sampler=sampler, text_cls=f.cls, video_frames=f.frames, video_mask=f.frame_mask, topk=topk,
                  chunk_size=chunk, noise_fn=noise_for(noise, chunk))
    with timer.phase("rerank"):
        t2v = rerank_direction(sim, direction="t2v", denoiser=Explicit(parts.denoiser_t2v), **common)
        v2t = rerank_direction(sim.t(), direction="v2t", denoiser=Explicit(parts.denoiser_v2t), **common)
    return {"sim": sim, "t2v": t2v, "v2t": v2t}


@torch.no_grad()
def run_official(f, parts, *, topk, steps, noise, timer):
    with timer.phase("similarity"):
        sim = official_similarity(parts.similarity, f.tokens, f.text_mask, f.frames, f.frame_mask)
    sampler = make_sampler(steps)
    common = dict(sampler=sampler, cls=f.cls, frames=f.frames, frame_mask=f.frame_mask, topk=topk)
    with timer.phase("rerank"):
        t2v = official_rerank_direction(sim, direction="t2v", denoiser=parts.denoiser_t2v, noise=noise["t2v"],
                                        **common)
        v2t = official_rerank_direction(sim.t(), direction="v2t", denoiser=parts.denoiser_v2t,
                                        noise=noise["v2t"], **common)
    return {"sim": sim, "t2v": t2v, "v2t": v2t}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="texts = videos in the gallery")
    ap.add_argument("--topk", type=int, default=32)
    ap.add_argument("--steps", type=int, default=50, help="DDIM steps")
    ap.add_argument("--chunk", type=int, default=64, help="queries per chunk (diffret paths)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--skip-official", action="store_true", help="only the two diffret paths")
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    f = official_shape_features(args.n, seed=0).to(dev)
    parts = EvalParts.random(seed=0).to(dev)
    g = torch.Generator().manual_seed(1)
    k = min(args.topk, args.n)
    noise = {d: torch.randn(args.n, k, generator=g).to(dev) for d in ("t2v", "v2t")}
    # warm-up on a small gallery (library set-up, first-call costs)
    small = official_shape_features(16, seed=2).to(dev)
    run_eval(small, parts, topk=4, steps=2, diffusion=True, chunk_size=8, timer=PhaseTimer(dev))

    results, outputs = {}, {}
    timer = PhaseTimer(dev)
    out = run_eval(f, parts, topk=k, steps=args.steps, diffusion=True, chunk_size=args.chunk, timer=timer,
                   noise_fn=noise_for(noise, args.chunk))
    w = timer.wall
    results["diffret"] = {"similarity": w["similarity_weights"] + w["similarity"],
                          "rerank": w["rerank_t2v"] + w["rerank_v2t"], "phases": dict(w),
                          "cpu": sum(timer.cpu.values())}
    outputs["diffret"] = out
    for name in ("before", "official"):
        if name == "official" and args.skip_official:
            continue
        timer = PhaseTimer(dev)
        if name == "before":
            outputs[name] = run_before(f, parts, topk=k, steps=args.steps, chunk=args.chunk, noise=noise, timer=timer)
        else:
            outputs[name] = run_official(f, parts, topk=k, steps=args.steps, noise=noise, timer=timer)
        results[name] = {**{p: s for p, s in timer.wall.items()}, "cpu": sum(timer.cpu.values())}
    for r in results.values():
        r["total"] = r["similarity"] + r["rerank"]

    print(f"gallery {args.n} x {args.n}, top-{k}, {args.steps} DDIM steps, both directions, device {dev}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'path':<10}{'total s':>9}{'similarity':>12}{'re-ranking':>12}{'cpu s':>9}{'speed-up':>10}")
    base = results.get("official", results["before"])
    for name in ("official", "before", "diffret"):
        if name in results:
            r = results[name]
            print(f"{name:<10}{r['total']:>9.2f}{r['similarity']:>12.2f}{r['rerank']:>12.2f}{r['cpu']:>9.2f}"
                  f"{base['total'] / r['total']:>9.1f}x")
    ratios = {f"{n}_over_diffret": results[n]["total"] / results["diffret"]["total"] for n in results if n != "diffret"}
    for n, v in ratios.items():
        print(f"{n.replace('_', ' ')}: {v:.1f}x (total wall time)")
    diffs = {}
    for name in outputs:
        if name == "diffret":
            continue
        for key in ("sim", "t2v", "v2t"):
            diffs[f"{name}.{key}"] = float((outputs[name][key] - outputs["diffret"][key]).abs().max())
    print("max |difference| from diffret: " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
    report = {"n": args.n, "topk": k, "steps": args.steps, "chunk": args.chunk, "device": str(dev),
              "threads": torch.get_num_threads(), "torch": torch.__version__, "results": results,
              "ratios": ratios, "max_abs_diff": diffs, "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)
    if any(v > 1e-4 for v in diffs.values()):
        raise SystemExit("the paths disagree")
    return report


if __name__ == "__main__":
    main()
