"""Re-ranking a whole gallery: diffret's batched path against the official per-query loop.

The official evaluation re-ranks text by text: for each query it gathers its top-K
candidates in Python, runs the DDIM loop on that one query, and scatters the bonus back
entry by entry. diffret gathers and scatters with tensor indexing per chunk of queries
and runs the sampler once per chunk (with the denoiser's step-invariant work done once).
Both are run here, in the same process, on the same random features and the same noise;
the fused score matrices must agree to float32 rounding.

    python bench/bench_rerank.py                 # N=256 texts and videos, K=32, 50 steps
    python bench/bench_rerank.py --n 1000 --device cuda
"""

from __future__ import annotations

import argparse
import time

import torch

from diffret_cli.registry import create
from diffret_cli.rerank import rerank_direction


def per_query_loop(scores, *, denoiser, sampler, text_cls, video_frames, video_mask, topk, noise):
    """The official structure: one query at a time, Python gather/scatter, forward() per step."""
    out = scores.clone()
    for q in range(scores.shape[0]):
        base, cand = scores[q].topk(topk, sorted=True)
        video = torch.stack([video_frames[int(c)] for c in cand])[None]
        mask = torch.stack([video_mask[int(c)] for c in cand])[None]
        text = text_cls[q:q + 1]
        sample = sampler.sample(lambda x, t: denoiser(x, t, text, video, mask), noise[q:q + 1]).sample[0]
        bonus = torch.softmax(sample, dim=-1)
        for j, c in enumerate(cand.tolist()):
            out[q, c] = base[j] + bonus[j]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=256, help="texts = videos in the gallery")
    ap.add_argument("--topk", type=int, default=32)
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    n, d, t, k = args.n, args.width, args.frames, args.topk
    text_cls = (0.3 * torch.randn(n, d, generator=g)).to(dev)
    frames = (0.3 * torch.randn(n, t, d, generator=g)).to(dev)
    mask = torch.ones(n, t, dtype=torch.long)
    mask[:, t // 2:] = (torch.rand(n, t - t // 2, generator=g) > 0.5).long()
    mask = mask.to(dev)
    scores = torch.rand(n, n, generator=g).to(dev)
    noise = torch.randn(n, k, generator=g).to(dev)
    torch.manual_seed(0)
    denoiser = create("denoisers", "t2v", width=d).to(dev).eval()
    sampler = create("samplers", "ddim", num_steps=args.steps)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    with torch.no_grad():
        sync()
        t0 = time.perf_counter()
        fast = rerank_direction(scores, direction="t2v", denoiser=denoiser, sampler=sampler, text_cls=text_cls,
                                video_frames=frames, video_mask=mask, topk=k, chunk_size=args.chunk,
                                noise_fn=lambda _d, i, shape: noise[i * args.chunk:i * args.chunk + shape[0]])
        sync()
        t_fast = time.perf_counter() - t0
        t0 = time.perf_counter()
        slow = per_query_loop(scores, denoiser=denoiser, sampler=sampler, text_cls=text_cls, video_frames=frames,
                              video_mask=mask, topk=k, noise=noise)
        sync()
        t_slow = time.perf_counter() - t0
    diff = (fast - slow).abs().max().item()
    print(f"gallery {n} x {n}, top-{k}, {args.steps} DDIM steps, D={d}, T={t}, device {dev}, "
          f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}")
    print(f"{'method':<28}{'seconds':>10}{'queries/s':>12}{'ratio':>8}")
    print(f"{'per-query loop (official)':<28}{t_slow:>10.2f}{n / t_slow:>12.1f}{1.0:>8.2f}")
    print(f"{'diffret batched':<28}{t_fast:>10.2f}{n / t_fast:>12.1f}{t_slow / t_fast:>8.2f}")
    print(f"max |fused difference| = {diff:.2e}")
    if diff > 1e-4:
        raise SystemExit("the two paths disagree")


if __name__ == "__main__":
    main()
