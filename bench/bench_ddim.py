"""DDIM re-ranking cost: does a denoiser step recompute what is constant across steps?

DiffusionRet runs 50 DDIM steps per chunk of queries over the same features. The
official forward recomputes, at every step, the text-frame pooling (paper Eq. 4) and
the candidate projections ``Wk(v + cond)``, ``Wv(v + cond)`` and the decoder's first
layer on ``[h; v]``. diffret's denoisers split that work into ``prepare`` (once per
chunk) and ``step`` (per step), by linearity: ``Wk(v + c) = Wk v + Wk c``.

This script times, at the real inference shapes (B=32 queries, K=32 candidates, T=12
frames, D=512, 50 steps), for both directions:

  (a) fast 50: prepare once + 50 steps          (what diffret's re-ranker runs)
  (b) fast 1:  prepare + 1 step
  (c) naive 50: :func:`naive_forward` (the official order, everything every step) x 50

and reports "fast 50 / fast 1" (well under 50 when a step is cheap next to prepare)
and "naive 50 / fast 50" (the speed-up). It asserts that both paths agree up to float32
rounding. The naive reference lives here, not in the library: it is the baseline.

    python bench/bench_ddim.py                       # CPU, and CUDA when available
    python bench/bench_ddim.py --device cpu --repeats 5 --threads 1
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import torch

from diffret_cli.registry import create


# ------------------------------------------------------------------ naive reference
def naive_forward(den, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor, video: torch.Tensor,
                  video_mask: torch.Tensor) -> torch.Tensor:
    """The official forward order, nothing cached (DIFFUSIONRET.md section 3).

    t2v: text [B,D], video [B,K,T,D], mask [B,K,T]; v2t: text [B,K,D], video [B,T,D],
    mask [B,T]. Uses the denoiser's parameters, not its methods (except the fixed
    sinusoidal table), so it is an independent implementation of the same math.
    """
    assert not den.renormalize_frames and not den.scale_logits, "reference implements the official quirks"
    emb = den.embed_timestep
    cond = emb.time_embed(emb.pe[t])  # [B,D]
    mask = video_mask.to(video.dtype)
    if den.direction == "t2v":
        # Eq. 4: softmax over frames of <text, frame>, mask multiplied AFTER the softmax
        attn = torch.softmax(torch.einsum("bd,bktd->bkt", text, video) / den.temp, dim=-1) * mask
        cand = torch.einsum("bkt,bktd->bkd", attn, video)  # pooled candidate videos
        q = den.q_proj(text + cond)  # [B,D]
        k = den.k_proj(cand + cond[:, None])
        val = den.v_proj(cand + cond[:, None])
        logits = torch.einsum("bd,bkd->bk", q, k)
    else:
        attn = torch.softmax(torch.einsum("bkd,btd->bkt", text, video) / den.temp, dim=-1) * mask[:, None]
        pooled = torch.einsum("bkt,btd->bkd", attn, video)  # query video pooled per candidate text
        cand = text
        q = den.q_proj(pooled + cond[:, None])  # [B,K,D]
        k = den.k_proj(cand + cond[:, None])
        val = den.v_proj(cand + cond[:, None])
        logits = (q * k).sum(-1)
    # Eq. 5-6: candidate weights (no 1/sqrt(D)), plus the noisy scores
    weight = torch.softmax(logits + x_t, dim=-1)
    h = den.proj(torch.einsum("bk,bkd->bd", weight, val))
    dec_in = torch.cat([h[:, None].expand(-1, cand.shape[1], -1), cand], dim=-1)
    return den.decoder(dec_in).squeeze(-1) + weight


# ------------------------------------------------------------------------- harness
def make_inputs(direction: str, *, b: int, k: int, t: int, d: int, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, t + 1, (b, k) if direction == "t2v" else (b,), generator=g)
    if direction == "t2v":
        text = 0.3 * torch.randn(b, d, generator=g)
        video = 0.3 * torch.randn(b, k, t, d, generator=g)
    else:
        text = 0.3 * torch.randn(b, k, d, generator=g)
        video = 0.3 * torch.randn(b, t, d, generator=g)
    mask = (torch.arange(t) < lengths[..., None]).long()
    noise = torch.randn(b, k, generator=g)
    return [x.to(device) for x in (text, video, mask, noise)]


def timed(fn: Callable[[], object], *, device: str, repeats: int) -> float:
    """Fastest wall time in ms over ``repeats`` runs after one warm-up run (the minimum is
    the least disturbed by other processes on a shared machine)."""
    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return min(times)


@torch.inference_mode()
def bench_direction(direction: str, *, device: str, b: int, k: int, t: int, d: int, steps: int,
                    repeats: int) -> dict:
    torch.manual_seed(0)
    den = create("denoisers", direction, width=d).eval().to(device)
    sampler = create("samplers", "ddim", schedule="cosine", num_steps=steps)
    text, video, mask, noise = make_inputs(direction, b=b, k=k, t=t, d=d, device=device)
    t_first = torch.full((b,), steps - 1, dtype=torch.long, device=device)

    def fast_all():
        ctx = den.prepare(text, video, mask)
        return sampler.sample(lambda x, s: den.step(x, s, ctx), noise).sample

    def fast_one():
        return den.step(noise, t_first, den.prepare(text, video, mask))

    def naive_all():
        return sampler.sample(lambda x, s: naive_forward(den, x, s, text, video, mask), noise).sample

    def naive_one():
        return naive_forward(den, noise, t_first, text, video, mask)

    # agreement: one model call, and the whole 50-step loop
    one_fast, one_naive = fast_one(), naive_one()
    step_diff = float((one_fast - one_naive).abs().max())
    step_tol = 1e-5 * float(one_naive.abs().max()) + 1e-6
    sample_fast, sample_naive = fast_all(), naive_all()
    sample_diff = float((sample_fast - sample_naive).abs().max())
    assert step_diff <= step_tol, f"{direction}: fast step differs from the naive forward by {step_diff:.2e}"
    assert sample_diff <= 1e-4, f"{direction}: fast and naive DDIM samples differ by {sample_diff:.2e}"

    row = {
        "direction": direction, "device": device,
        "fast50_ms": timed(fast_all, device=device, repeats=repeats),
        "fast1_ms": timed(fast_one, device=device, repeats=repeats),
        "naive50_ms": timed(naive_all, device=device, repeats=repeats),
        "naive1_ms": timed(naive_one, device=device, repeats=repeats),
        "step_diff": step_diff, "sample_diff": sample_diff,
    }
    row["ratio_50_over_1"] = row["fast50_ms"] / row["fast1_ms"]
    row["speedup"] = row["naive50_ms"] / row["fast50_ms"]
    return row


def print_table(rows: list[dict], *, steps: int) -> None:
    head = (f"{'dir':<4} {'device':<6} {'fast 1':>9} {'fast ' + str(steps):>9} {'naive 1':>9} "
            f"{'naive ' + str(steps):>9} {str(steps) + '/1':>7} {'naive/fast':>10} {'max|diff|':>10}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['direction']:<4} {r['device']:<6} {r['fast1_ms']:>8.2f}m {r['fast50_ms']:>8.2f}m "
              f"{r['naive1_ms']:>8.2f}m {r['naive50_ms']:>8.2f}m {r['ratio_50_over_1']:>7.2f} "
              f"{r['speedup']:>9.2f}x {r['sample_diff']:>10.1e}")
    print("(times: fastest of --repeats runs, ms; max|diff|: fast vs naive final DDIM sample)")


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", action="append", help="cpu / cuda (repeatable; default: cpu and cuda if present)")
    p.add_argument("--batch", type=int, default=32, help="queries per chunk (B)")
    p.add_argument("--candidates", type=int, default=32, help="candidates per query (K)")
    p.add_argument("--frames", type=int, default=12, help="frames per video (T)")
    p.add_argument("--width", type=int, default=512, help="feature width (D)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (fastest kept)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: torch's; 1 gives stable numbers on a busy machine)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.device or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    print(f"B={args.batch} K={args.candidates} T={args.frames} D={args.width} steps={args.steps} "
          f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    rows = []
    for device in devices:
        for direction in ("t2v", "v2t"):
            rows.append(bench_direction(direction, device=device, b=args.batch, k=args.candidates,
                                        t=args.frames, d=args.width, steps=args.steps,
                                        repeats=args.repeats))
    print_table(rows, steps=args.steps)
    for r in rows:  # timing is reported, not asserted: a busy machine skews it
        verdict = "ok" if r["ratio_50_over_1"] < args.steps / 4 else "CHECK: steps are not cheap next to prepare()"
        print(f"{r['direction']} {r['device']}: {args.steps} steps = {r['ratio_50_over_1']:.1f} x one step "
              f"(naive: {args.steps}); {r['speedup']:.1f}x faster than the naive loop -- {verdict}")
    return rows


if __name__ == "__main__":
    main()
