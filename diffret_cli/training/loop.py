"""The training loop of one stage, for any model family.

Read top to bottom: build the optimiser over what the stage trains, then for each epoch
take this rank's share of every global batch, step, log, save resume points; validate at
the end of an epoch and keep the best checkpoint. What differs between stages (what
trains, what a batch is, the loss) comes from the :class:`~.stage.Stage`.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from diffret_cli.checkpoint import save_model
from diffret_cli.distributed import barrier
from diffret_cli.features import autocast_for
from diffret_cli.training.batches import check_global_batch, epoch_batches, total_steps
from diffret_cli.training.context import Interrupted, RunContext
from diffret_cli.training.ema import EMA
from diffret_cli.training.optim import build_optimizer, optimizer_step, warmup_cosine
from diffret_cli.training.stage import Stage
from diffret_cli.training.state import rng_state, save_training_state, set_rng_state
from diffret_cli.training.validation import validate


def run_stage(ctx: RunContext, model: nn.Module, stage: Stage) -> None:
    cfg, tr = ctx.recipe[stage.section], ctx.recipe["train"]
    resume = ctx.resume_state if ctx.resume_state and ctx.resume_state["stage"] == stage.number else None
    stage.begin(ctx, model, resumed=resume is not None)
    data = stage.data(ctx, model)
    check_global_batch(len(data), cfg["batch_size"], ctx.dist, section=stage.section)
    steps_per_epoch = len(data) // cfg["batch_size"]
    total = total_steps(steps_per_epoch, cfg["epochs"], tr.get("max_steps"))

    named = stage.trainable(model)
    trainable = {n: p for n, p in named if p.requires_grad}
    opt = build_optimizer(model, named, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(total, cfg["warmup"]))
    step_fn = wrap_ddp(stage.step_module(ctx, model), ctx)
    ema = EMA(trainable, tr["ema"]) if tr.get("ema") else None
    scaler = torch.amp.GradScaler("cuda", enabled=ctx.precision == "fp16")
    gen = stage.generator(ctx)

    start_epoch, start_batch, best = 0, 0, -float("inf")
    if resume is not None:
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        if ema and resume.get("ema"):
            ema.shadow = resume["ema"]
        set_rng_state(resume["rng"], gen)
        start_epoch, start_batch, best = resume["epoch"], resume["batch"], resume["best"]

    def save_resume_point(epoch: int, batch: int) -> None:
        if ctx.dist.is_main:
            save_training_state(ctx.run_dir, model, {
                "stage": stage.number, "epoch": epoch, "batch": batch, "best": best,
                "global_step": ctx.global_step, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "ema": ema.shadow if ema else None, "rng": rng_state(gen)})

    for epoch in range(start_epoch, cfg["epochs"]):
        model.train()
        batches = epoch_batches(len(data), cfg["batch_size"], seed=tr["seed"], stage=stage.number, epoch=epoch,
                                dist=ctx.dist)
        first = start_batch if epoch == start_epoch else 0
        task = None if ctx.progress is None else ctx.progress.add_task(
            f"stage {stage.number} epoch {epoch + 1}/{cfg['epochs']}", total=len(batches), completed=first,
            loss=float("nan"), lr=0.0, rate=0.0)
        capped = False
        t0 = time.perf_counter()
        for b, batch in enumerate(data.batches(ctx, batches[first:]), start=first):
            with autocast_for(ctx.device, ctx.precision):
                loss, extras = step_fn(batch, gen)
            optimizer_step(loss, opt, sched, scaler, trainable.values(), cfg.get("grad_clip"))
            if ema:
                ema.update(trainable)
            ctx.steps_done += 1
            ctx.global_step += 1
            loss_value, lr = loss.item(), sched.get_last_lr()[0]
            rate = (b + 1 - first) * cfg["batch_size"] / (time.perf_counter() - t0)
            if task is not None:
                ctx.progress.update(task, advance=1, loss=loss_value, lr=lr, rate=rate)
            if (b + 1) % tr["log_every"] == 0 or b == 0:
                ctx.log({"stage": stage.number, "epoch": epoch, "step": b + 1, "global_step": ctx.global_step,
                         "loss": loss_value, "lr": lr, "pairs_per_s": rate,
                         **{k: float(v) for k, v in extras.items()}})
            every = tr.get("checkpoint_every")
            if every and (b + 1) % every == 0 and b + 1 < len(batches):
                save_resume_point(epoch, b + 1)
            if ctx.stop_after_steps is not None and ctx.steps_done >= ctx.stop_after_steps:
                raise Interrupted(f"stopped after {ctx.steps_done} steps (testing hook)")
            if epoch * steps_per_epoch + b + 1 >= total:
                capped = True
                break

        done = capped or epoch + 1 == cfg["epochs"]
        every = tr["val_every_epochs"]
        if done or (every and (epoch + 1) % every == 0):
            best = end_of_epoch_validation(ctx, model, stage, epoch, best, ema, trainable, last=done)
        save_resume_point(cfg["epochs"] if done else epoch + 1, 0)
        if done:
            break


def end_of_epoch_validation(ctx: RunContext, model: nn.Module, stage: Stage, epoch: int, best: float,
                            ema: EMA | None, trainable: dict, *, last: bool) -> float:
    """Validate (the EMA weights when enabled); a better score saves
    ``checkpoints/stage<N>/best``. Without a validation split the last epoch is kept."""
    best_dir = ctx.run_dir / "checkpoints" / stage.section / "best"
    if not ctx.recipe["dataset"].get("val_split"):  # e.g. ActivityNet, whose val is its test
        if last and ctx.dist.is_main:
            save_model(model, best_dir, extra={"val": {"note": "no validation split; last epoch kept"}})
        return best
    if ema:
        ema.swap(trainable)
    result, score = validate(ctx, model, stage)
    ctx.log({"stage": stage.number, "epoch": epoch, "val": result["rows"], "val_score": score})
    if score > best:
        best = score
        if ctx.dist.is_main:
            save_model(model, best_dir, extra={"val": result})
    if ema:
        ema.swap(trainable)
    barrier(ctx.dist)
    return best


def wrap_ddp(module: nn.Module, ctx: RunContext) -> nn.Module:
    """DDP around a stage's step module when several processes train together."""
    if not ctx.dist.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.dist.local_rank] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)
