"""AdamW over a stage's parameters, its warmup-cosine LR schedule and one optimiser step."""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from torch import nn


def param_groups(model: nn.Module, named: list[tuple[str, nn.Parameter]], *, lr: float, weight_decay: float,
                 encoder_lr: float | None = None) -> list[dict]:
    """AdamW groups: no weight decay for biases, norms and scalars (ndim < 2); the
    parameters the encoder calls pretrained (``Encoder.parameter_groups``) at their own,
    much lower, learning rate; the encoder's frozen ones not at all."""
    groups_of = model.encoder.parameter_groups()
    pretrained = {id(p) for p in groups_of.get("pretrained", [])}
    frozen = {id(p) for p in groups_of.get("frozen", [])}
    groups: dict[tuple[bool, bool], list] = {}
    for _, p in named:
        if not p.requires_grad or id(p) in frozen:
            continue
        is_enc = encoder_lr is not None and id(p) in pretrained
        groups.setdefault((is_enc, p.ndim >= 2), []).append(p)
    return [{"params": ps, "lr": encoder_lr if is_enc else lr, "weight_decay": weight_decay if decay else 0.0}
            for (is_enc, decay), ps in groups.items()]


def build_optimizer(model: nn.Module, named: list[tuple[str, nn.Parameter]], cfg: dict) -> torch.optim.AdamW:
    """AdamW from a stage's recipe section (``lr``, ``encoder_lr``, ``weight_decay``,
    ``betas``, ``eps``)."""
    groups = param_groups(model, named, lr=cfg["lr"], weight_decay=cfg["weight_decay"],
                          encoder_lr=cfg.get("encoder_lr"))
    return torch.optim.AdamW(groups, betas=tuple(cfg.get("betas", (0.9, 0.98))), eps=cfg.get("eps", 1e-6))


def warmup_cosine(total_steps: int, warmup: float) -> Callable[[int], float]:
    """Linear warmup over ``warmup`` of the steps, then cosine decay to 0."""
    w = max(1, int(round(total_steps * warmup)))

    def f(step: int) -> float:
        if step < w:
            return (step + 1) / w
        progress = (step - w) / max(1, total_steps - w)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return f


def optimizer_step(loss: torch.Tensor, opt, sched, scaler, params: Iterable[nn.Parameter],
                   clip: float | None) -> None:
    """Backward (scaled for fp16), clip the global gradient norm, step, advance the LR."""
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    if clip:
        torch.nn.utils.clip_grad_norm_(list(params), clip)
    scaler.step(opt)
    scaler.update()
    sched.step()
