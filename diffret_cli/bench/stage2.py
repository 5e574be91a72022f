"""``diffret bench train-stage2``: samples/s of the stage-2 training step.

The step from cached features (the frozen encoder is never run; DIFFUSIONRET.md section
1), at the official shapes: B captions with their videos, K = B candidates per query
(the positive, then the K-1 hardest negatives by the stage-1 similarity), both
denoisers' losses, backward, gradient clipping at 1.0 and an AdamW step.

Phases: ``similarity`` (S over the batch from the cached, already weighted token
features), ``candidates`` (hard negatives), ``forward_loss``, ``backward``,
``optimizer``. ``indexed=True`` (the default) runs the denoisers on the batch's unique
features plus candidate indices (:meth:`forward_indexed`); ``indexed=False`` gathers
[B,K,T,D] and runs ``forward``, as diffret did before (kept to measure the difference).
"""

from __future__ import annotations

import torch

from diffret_cli.bench.synthetic import OFFICIAL, official_shape_features
from diffret_cli.bench.timing import PeakMemory, PhaseTimer, environment, resolve_device
from diffret_cli.diffusion import DiffusionCoefficients
from diffret_cli.losses import generation_loss, generation_loss_indexed, hard_negative_candidates
from diffret_cli.model.similarity import TokenWiseSimilarity, wti_scores
from diffret_cli.registry import create

#: official stage-2 optimiser settings (DIFFUSIONRET.md section 1)
LR, BETAS, EPS, WEIGHT_DECAY, GRAD_CLIP = 1e-4, (0.9, 0.98), 1e-6, 0.2, 1.0


def adamw_for(modules: list[torch.nn.Module]) -> torch.optim.AdamW:
    """AdamW with weight decay on weight matrices only (not on biases or norms)."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    keep = [p for p in params if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": keep, "weight_decay": 0.0}],
                             lr=LR, betas=BETAS, eps=EPS)


class Stage2Step:
    """One optimiser step of both denoisers on a batch of cached features."""

    def __init__(self, *, batch: int, device: torch.device, width: int = OFFICIAL["width"], seed: int = 0,
                 indexed: bool = True, num_candidates: int | None = None):
        torch.manual_seed(seed)
        self.device, self.indexed = device, indexed
        self.k = num_candidates or batch
        feats = official_shape_features(batch, width=width, seed=seed).to(device)
        sim = TokenWiseSimilarity(width=width).to(device).eval().requires_grad_(False)
        with torch.no_grad():  # frozen after stage 1: cached with the features
            self.t, self.tw = sim.prepare_text(feats.tokens, feats.text_mask)
            self.v, self.vw = sim.prepare_video(feats.frames, feats.frame_mask)
        self.feats, self.similarity = feats, sim
        self.video_ids = torch.arange(batch, device=device)  # caption i shows video i
        self.t2v = create("denoisers", "t2v", width=width).to(device).train()
        self.v2t = create("denoisers", "v2t", width=width).to(device).train()
        self.opt = adamw_for([self.t2v, self.v2t])
        self.coef = DiffusionCoefficients.from_betas(create("schedules", "cosine", num_steps=50).betas())
        self.gen = torch.Generator().manual_seed(seed)

    def losses(self, cand_v: torch.Tensor, cand_t: torch.Tensor, t: torch.Tensor, n1: torch.Tensor,
               n2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f, rows = self.feats, torch.arange(cand_v.shape[0], device=self.device)
        if self.indexed:
            common = dict(text=f.cls, video=f.frames, video_mask=f.frame_mask, query_index=rows, t=t)
            l1, _ = generation_loss_indexed(self.t2v, self.coef, cand_index=cand_v, noise=n1, **common)
            l2, _ = generation_loss_indexed(self.v2t, self.coef, cand_index=cand_t, noise=n2, **common)
        else:
            l1, _ = generation_loss(self.t2v, self.coef, text=f.cls[rows], video=f.frames[cand_v],
                                    video_mask=f.frame_mask[cand_v], t=t, noise=n1)
            l2, _ = generation_loss(self.v2t, self.coef, text=f.cls[cand_t], video=f.frames[rows],
                                    video_mask=f.frame_mask[rows], t=t, noise=n2)
        return l1, l2

    def __call__(self, timer: PhaseTimer) -> float:
        f, dev = self.feats, self.device
        with timer.phase("similarity"), torch.no_grad():
            sim = wti_scores(self.t, self.tw, f.text_mask, self.v, self.vw)  # [B,B] texts x videos
        with timer.phase("candidates"):
            same = self.video_ids[:, None] == self.video_ids[None, :]
            cand_v = hard_negative_candidates(sim, self.k, same).index
            cand_t = hard_negative_candidates(sim.t(), self.k, same).index
        with timer.phase("forward_loss"):
            b = cand_v.shape[0]
            t = torch.randint(0, self.coef.num_steps, (b,), generator=self.gen).to(dev)
            n1 = torch.randn((b, self.k), generator=self.gen).to(dev)
            n2 = torch.randn((b, self.k), generator=self.gen).to(dev)
            l1, l2 = self.losses(cand_v, cand_t, t, n1, n2)
            loss = l1 + l2  # paper section 3.4: CE_t2v + CE_v2t
        with timer.phase("backward"):
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
        with timer.phase("optimizer"):
            params = [p for g in self.opt.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
            self.opt.step()
        return float(loss.detach())


def bench_train_stage2(*, batch: int = 128, device: str = "cpu", steps: int = 3, warmup: int = 1,
                       indexed: bool = True, seed: int = 0, width: int = OFFICIAL["width"]) -> dict:
    """Samples per second of the full stage-2 step (K = ``batch`` candidates), timed over
    ``steps`` steps after ``warmup`` untimed ones. Phases are seconds per step."""
    if batch < 2 or steps < 1:
        raise ValueError(f"batch must be >= 2 and steps >= 1, got {batch}, {steps}")
    dev = resolve_device(device)
    step = Stage2Step(batch=batch, device=dev, width=width, seed=seed, indexed=indexed)
    for _ in range(warmup):
        step(PhaseTimer(dev))
    timer = PhaseTimer(dev)
    with PeakMemory(dev) as mem:
        losses = [step(timer) for _ in range(steps)]
    res = timer.as_dict()
    per_step = {k: round(v / steps, 4) for k, v in res["phases"].items()}
    cpu_per_step = {k: round(v / steps, 4) for k, v in res["cpu_phases"].items()}
    total = sum(timer.wall.values()) / steps
    return {"benchmark": "train-stage2", "batch": batch, "candidates": batch, "indexed": indexed, "steps": steps,
            "width": width, "phases": per_step, "cpu_phases": cpu_per_step, "total": round(total, 4),
            "cpu_total": round(sum(timer.cpu.values()) / steps, 4), "samples_per_s": round(batch / total, 2),
            "last_loss": round(losses[-1], 4), "peak_memory_mb": round(mem.megabytes, 1),
            "memory_kind": mem.kind, "environment": environment(dev)}
