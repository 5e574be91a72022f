"""The stage-2 training step: diffret against the official step, same process.

Three paths over the same cached features of the official shapes (B caption-video
pairs, 32 word slots with 8-20 used, 12 frames, width 512), the same weights, the same
steps t and noise, K = B candidates (the positive and the B-1 hardest negatives); the
frozen encoder is skipped in all three (features cached):

  official  the official step's own work (bench/official_baseline.py): the similarity
            over the batch with the weight MLPs rerun, the hard negatives chosen and
            stacked query by query in Python, each denoiser's forward on the gathered
            [B,K,T,D] / [B,K,D] candidates recomputing every projection per candidate;
  gathered  diffret before #11: similarity from cached weighted features, tensor top-K,
            then ``forward`` on gathered candidates (``prepare`` + ``step``);
  indexed   diffret now (:class:`diffret_cli.bench.Stage2Step`): ``forward_indexed`` on
            the batch's unique features plus candidate indices.

Each step also runs backward, gradient clipping and an AdamW step. Before timing, the
script checks on one batch that the three losses and the indexed/gathered gradients
agree to float32 rounding.

    python bench/bench_stage2.py                    # B = K = 128
    python bench/bench_stage2.py --batch 64 --steps 2 --threads 1 --clock cpu
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from diffret_cli.bench import PhaseTimer, Stage2Step
from diffret_cli.bench.stage2 import GRAD_CLIP
from official_baseline import official_stage2_loss

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def official_step(s: Stage2Step, t, n1, n2):
    f = s.feats
    loss, cand_v, cand_t = official_stage2_loss(s.similarity, s.t2v, s.v2t, s.coef, tokens=f.tokens, text_mask=f.text_mask,
                                                cls=f.cls, frames=f.frames, frame_mask=f.frame_mask,
                                                video_ids=s.video_ids, num=s.k - 1, t=t, noise_t2v=n1,
                                                noise_v2t=n2)
    return loss, cand_v, cand_t


def optimise(s: Stage2Step, loss) -> None:
    s.opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for g in s.opt.param_groups for p in g["params"]], GRAD_CLIP)
    s.opt.step()


def check_agreement(batch: int, device: torch.device) -> dict:
    """One batch, same t and noise: official, gathered and indexed losses; gradients of
    the gathered and indexed paths."""
    steps = {name: Stage2Step(batch=batch, device=device, indexed=(name == "indexed")) for name in ("gathered",
                                                                                                    "indexed")}
    s = steps["indexed"]
    g = torch.Generator().manual_seed(7)
    t = torch.randint(0, s.coef.num_steps, (batch,), generator=g).to(device)
    n1, n2 = (torch.randn(batch, batch, generator=g).to(device) for _ in range(2))
    off, cand_v, cand_t = official_step(s, t, n1, n2)
    out = {"official": float(off.detach())}
    grads = {}
    for name, st in steps.items():
        l1, l2 = st.losses(cand_v, cand_t, t, n1, n2)
        loss = l1 + l2
        out[name] = float(loss.detach())
        params = list(st.t2v.parameters()) + list(st.v2t.parameters())
        grads[name] = torch.autograd.grad(loss, params)
    norm = float(torch.sqrt(sum((x.double() ** 2).sum() for x in grads["gathered"])))
    out["grad_norm"] = norm
    out["grad_max_abs_diff"] = max(float((a - b).abs().max()) for a, b in zip(grads["indexed"], grads["gathered"]))
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=128, help="B = K")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per path (after one warm-up step)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    agree = check_agreement(args.batch, dev)
    now = CLOCKS[args.clock]

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    seconds = {}
    for name in ("official", "gathered", "indexed"):
        s = Stage2Step(batch=args.batch, device=dev, indexed=(name == "indexed"))
        if name == "official":
            def one():
                b = args.batch
                t = torch.randint(0, s.coef.num_steps, (b,), generator=s.gen).to(dev)
                n1, n2 = (torch.randn(b, b, generator=s.gen).to(dev) for _ in range(2))
                optimise(s, official_step(s, t, n1, n2)[0])
        else:
            def one():
                s(PhaseTimer(dev))
        one()  # warm-up
        sync()
        times = []
        for _ in range(args.steps):
            start = now()
            one()
            sync()
            times.append(now() - start)
        seconds[name] = min(times)
    rate = {k: args.batch / v for k, v in seconds.items()}
    print(f"stage-2 step, B = K = {args.batch}, official shapes, device {dev}, {torch.get_num_threads()} threads, "
          f"{args.clock} clock (fastest of {args.steps}), torch {torch.__version__}")
    print(f"{'path':<10}{'s/step':>9}{'samples/s':>11}{'vs official':>13}")
    for name in ("official", "gathered", "indexed"):
        print(f"{name:<10}{seconds[name]:>9.3f}{rate[name]:>11.1f}{seconds['official'] / seconds[name]:>12.2f}x")
    print(f"losses on one batch: official {agree['official']:.6f}, gathered {agree['gathered']:.6f}, "
          f"indexed {agree['indexed']:.6f}; gradients: max|indexed - gathered| {agree['grad_max_abs_diff']:.2e} "
          f"(norm {agree['grad_norm']:.3e})")
    report = {"batch": args.batch, "device": str(dev), "threads": torch.get_num_threads(), "clock": args.clock,
              "seconds_per_step": seconds, "samples_per_s": rate,
              "speedup_vs_official": {k: seconds["official"] / v for k, v in seconds.items()}, "agreement": agree,
              "torch": torch.__version__, "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)
    rel = max(abs(agree[k] - agree["official"]) for k in ("gathered", "indexed")) / abs(agree["official"])
    if rel > 1e-4 or agree["grad_max_abs_diff"] > 1e-4 * agree["grad_norm"]:
        raise SystemExit("the paths disagree")
    return report


if __name__ == "__main__":
    main()
