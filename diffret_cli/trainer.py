"""Two-stage training of DiffusionRet, one readable loop per stage.

Stage 1 (discrimination): the dual encoder learns with symmetric InfoNCE over the global
batch (features gathered across ranks, paper Eq. 11). Stage 2 (generation): stage 1 is
frozen; its features are extracted once into a cache, and only the two denoisers learn to
generate the one-hot distribution over the positive and its hardest negatives from noise.

A run directory holds everything (never the working directory itself)::

    recipe.yaml                  the resolved recipe
    metrics.jsonl                every logged metric, one JSON object a line
    checkpoints/last/            model + config + training_state.pt (resume point)
    checkpoints/stage1/best/     best stage-1 model on the validation split
    checkpoints/stage2/best/     best stage-2 model on the validation split
    checkpoints/best/            the final best model (what `diffret eval RUN` loads)
    features/                    stage-2 feature cache
    eval/                        evaluation results (JSON)

Resuming (``--resume``) restarts from ``checkpoints/last`` with the same data order and
random state, so a killed run ends where an uninterrupted one would.
"""

from __future__ import annotations

import io
import json
import math
import random
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from diffret_cli.checkpoint import save_model
from diffret_cli.distributed import DistInfo, barrier, gather_no_grad, gather_with_grad
from diffret_cli.evaluate import encode_split, evaluate_split, selection_score
from diffret_cli.features import (ModelFrames, SplitTexts, autocast_for, encode_texts, encode_videos,
                                  load_features, save_features)
from diffret_cli.fileio import atomic_write_bytes, replace_dir
from diffret_cli.losses import generation_loss, hard_negative_candidates, symmetric_infonce
from diffret_cli.model.diffusionret import DiffusionRet, TextFeatures, VideoFeatures

STATE_FILE = "training_state.pt"


# ----------------------------------------------------------------------------- data
class PairDataset(Dataset):
    """(caption, video) training pairs of a prepared split; captions pre-tokenised."""

    def __init__(self, split, model: DiffusionRet):
        texts = SplitTexts.from_split(split)
        self.videos = split.videos
        self.caption_video = texts.caption_video
        self.ids, self.mask = model.encoder.tokenize(texts.captions, model.config["max_words"])
        enc = model.encoder
        self.load = ModelFrames(split, max_frames=model.config["max_frames"], image_size=enc.image_size,
                                mean=enc.image_mean, std=enc.image_std)

    def __len__(self) -> int:
        return len(self.caption_video)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        v = int(self.caption_video[i])
        x, m = self.load(self.videos[v].video_id)
        return {"ids": self.ids[i], "mask": self.mask[i], "frames": x, "frame_mask": m,
                "video": torch.tensor(v), "index": torch.tensor(i)}


def epoch_batches(n: int, batch_size: int, *, seed: int, stage: int, epoch: int, dist: DistInfo) -> list[list[int]]:
    """This rank's share of every global batch of an epoch (drop_last), in a fixed order
    that depends only on (seed, stage, epoch): the same after a resume."""
    g = torch.Generator().manual_seed(seed * 1000003 + stage * 1009 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    per_rank = batch_size // dist.world_size
    out = []
    for b in range(n // batch_size):
        glob = order[b * batch_size:(b + 1) * batch_size]
        out.append(glob[dist.rank * per_rank:(dist.rank + 1) * per_rank])
    return out


# ------------------------------------------------------------------------ optimiser
def param_groups(named: list[tuple[str, nn.Parameter]], *, lr: float, weight_decay: float,
                 encoder_lr: float | None = None) -> list[dict]:
    """AdamW groups: no weight decay for biases, norms and scalars (ndim < 2); the
    pretrained encoder at its own (much lower) learning rate."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in named:
        if not p.requires_grad:
            continue
        is_enc = encoder_lr is not None and name.startswith("encoder.")
        groups.setdefault((is_enc, p.ndim >= 2), []).append(p)
    return [{"params": ps, "lr": encoder_lr if is_enc else lr, "weight_decay": weight_decay if decay else 0.0}
            for (is_enc, decay), ps in groups.items()]


def warmup_cosine(total_steps: int, warmup: float) -> Callable[[int], float]:
    """Linear warmup over ``warmup`` of the steps, then cosine decay to 0."""
    w = max(1, int(round(total_steps * warmup)))

    def f(step: int) -> float:
        if step < w:
            return (step + 1) / w
        progress = (step - w) / max(1, total_steps - w)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return f


class EMA:
    """Exponential moving average of trainable weights (evaluated and saved when enabled)."""

    def __init__(self, params: dict[str, nn.Parameter], decay: float):
        self.decay = decay
        self.shadow = {k: p.detach().clone() for k, p in params.items()}

    @torch.no_grad()
    def update(self, params: dict[str, nn.Parameter]) -> None:
        for k, p in params.items():
            self.shadow[k].lerp_(p.detach(), 1 - self.decay)

    def swap(self, params: dict[str, nn.Parameter]) -> None:
        for k, p in params.items():
            tmp = p.detach().clone()
            p.data.copy_(self.shadow[k])
            self.shadow[k].copy_(tmp)


# ---------------------------------------------------------------------- stage modules
class Stage1(nn.Module):
    """Wraps the stage-1 parts so DDP sees one forward that returns the loss."""

    def __init__(self, model: DiffusionRet, dist: DistInfo):
        super().__init__()
        self.encoder, self.temporal, self.similarity = model.encoder, model.temporal, model.similarity
        self.model, self.dist = [model], dist  # list: not registered as a submodule

    def forward(self, ids, mask, frames, frame_mask):
        m = self.model[0]
        text = m.encode_text(ids, mask)
        video = m.encode_video(frames, frame_mask)
        d = self.dist
        text = TextFeatures(gather_with_grad(text.tokens, d), gather_with_grad(text.cls, d), gather_no_grad(mask, d))
        video = VideoFeatures(gather_with_grad(video.frames, d), gather_no_grad(frame_mask, d))
        return symmetric_infonce(m.contrastive_logits(text, video))


class Stage2(nn.Module):
    """The two denoisers' loss on a batch of cached features (paper section 3.4).

    Local queries against candidates drawn from the global batch: the positive first,
    then the hardest negatives by stage-1 similarity, same-video entries excluded."""

    def __init__(self, model: DiffusionRet, coef, cfg: dict, dist: DistInfo):
        super().__init__()
        self.denoiser_t2v, self.denoiser_v2t = model.denoiser_t2v, model.denoiser_v2t
        self.model, self.coef, self.cfg, self.dist = [model], coef, cfg, dist

    def forward(self, tokens, cls, tmask, vframes, vmask, video_ids, generator):
        m, d, cfg = self.model[0], self.dist, self.cfg
        local = tokens.shape[0]
        g = lambda x: gather_no_grad(x, d)  # noqa: E731 - features are frozen
        tokens, cls, tmask, vframes, vmask, video_ids = map(g, (tokens, cls, tmask, vframes, vmask, video_ids))
        with torch.no_grad():
            sim = m.similarity(tokens, tmask, vframes, vmask)  # [B,B], texts x videos
        same = video_ids[:, None] == video_ids[None, :]
        rows = torch.arange(local, device=cls.device) + d.rank * local
        k = cfg["num_candidates"]
        cand_v = hard_negative_candidates(sim, k, same)[rows]
        cand_t = hard_negative_candidates(sim.t(), k, same)[rows]
        shape = (local, k)
        t = torch.randint(0, self.coef.num_steps, (local,), generator=generator).to(cls.device)
        n1 = torch.randn(shape, generator=generator).to(cls.device)
        n2 = torch.randn(shape, generator=generator).to(cls.device)
        common = dict(kind=cfg["loss"], temp=cfg["loss_temp"], negative_value=cfg["negative_value"], t=t)
        l_t2v, _ = generation_loss(self.denoiser_t2v, self.coef, text=cls[rows], video=vframes[cand_v],
                                   video_mask=vmask[cand_v], noise=n1, **common)
        l_v2t, _ = generation_loss(self.denoiser_v2t, self.coef, text=cls[cand_t], video=vframes[rows],
                                   video_mask=vmask[rows], noise=n2, **common)
        return l_t2v + l_v2t, l_t2v.detach(), l_v2t.detach()


# -------------------------------------------------------------------------- the run
@dataclass
class RunContext:
    run_dir: Path
    recipe: dict
    data: Any  # PreparedDataset
    device: torch.device
    precision: str
    dist: DistInfo
    log: Callable[[dict], None]
    progress: Any = None
    resume_state: dict | None = None
    stop_after_steps: int | None = None  # testing hook: simulate a kill after N optimizer steps
    steps_done: int = 0
    val_encoded: Any = None  # stage-2 validation features (the frozen encoder's)
    history: list = field(default_factory=list)


class Interrupted(RuntimeError):
    """Raised by the stop_after_steps testing hook (a simulated kill)."""


def _rng_state(gen: torch.Generator | None) -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "gen": gen.get_state() if gen is not None else None}


def _set_rng_state(s: dict, gen: torch.Generator | None) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])
    if gen is not None and s.get("gen") is not None:
        gen.set_state(s["gen"])


def save_training_state(ctx: RunContext, model: DiffusionRet, state: dict) -> None:
    """checkpoints/last: model + config + optimiser/scheduler/RNG state, all atomic."""
    if not ctx.dist.is_main:
        return
    last = ctx.run_dir / "checkpoints" / "last"
    save_model(model, last)
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(last / STATE_FILE, buf.getvalue())


def load_training_state(run_dir: Path) -> dict | None:
    path = run_dir / "checkpoints" / "last" / STATE_FILE
    if not path.is_file():
        return None
    return torch.load(str(path), map_location="cpu", weights_only=False)


def _save_best(ctx: RunContext, model: DiffusionRet, stage: int, result: dict) -> None:
    if ctx.dist.is_main:
        save_model(model, ctx.run_dir / "checkpoints" / f"stage{stage}" / "best", extra={"val": result})


def _validate(ctx: RunContext, model: DiffusionRet, stage: int) -> dict:
    split = ctx.data.split(ctx.recipe["dataset"]["val_split"])
    ev = ctx.recipe["eval"]
    encoded = None
    if stage == 2:  # stage 1 is frozen: encode the validation split once per run
        if ctx.val_encoded is None:
            ctx.val_encoded = encode_split(model, split, device=ctx.device, precision=ctx.precision,
                                           batch_size=ev["batch_size"])
        encoded = ctx.val_encoded
    return evaluate_split(model, split, device=ctx.device, precision=ctx.precision,
                          batch_size=ev["batch_size"], rerank_scores=(stage == 2),
                          seed=ctx.recipe["train"]["seed"], encoded=encoded)


@dataclass
class StageProgress:
    """What both stages do around each optimiser step and at the end of each epoch:
    EMA, logging, periodic resume checkpoints, the step cap, validation, best checkpoints."""

    ctx: RunContext
    model: DiffusionRet
    stage: int
    opt: Any
    sched: Any
    ema: EMA | None
    gen: torch.Generator | None
    trainable: dict
    steps_per_epoch: int
    total: int
    best: float

    def _save(self, epoch: int, batch: int) -> None:
        save_training_state(self.ctx, self.model, _state(self.stage, epoch, batch, self.best, self.opt,
                                                         self.sched, self.ema, self.gen))

    def after_batch(self, task, epoch: int, b: int, num_batches: int, loss: float, rate: float,
                    extra: dict | None = None) -> bool:
        """Book-keeping after optimiser step ``b``; True when the stage's step cap is reached."""
        if self.ema:
            self.ema.update(self.trainable)
        _after_step(self.ctx, task, self.stage, epoch, b, loss, self.sched.get_last_lr()[0], rate, extra)
        if (b + 1) % self.ctx.recipe["train"]["checkpoint_every"] == 0 and b + 1 < num_batches:
            self._save(epoch, b + 1)
        _maybe_interrupt(self.ctx)
        return epoch * self.steps_per_epoch + b + 1 >= self.total

    def end_epoch(self, epoch: int, num_batches: int) -> bool:
        """Validate (best checkpoint), save the resume point; True when the stage is done."""
        done = epoch * self.steps_per_epoch + num_batches >= self.total
        self.best = _end_of_epoch(self.ctx, self.model, self.stage, epoch, self.best, self.ema, self.trainable,
                                  last=done)
        epochs = self.ctx.recipe[f"stage{self.stage}"]["epochs"]
        self._save(epochs if done else epoch + 1, 0)
        return done


def run_stage1(ctx: RunContext, model: DiffusionRet) -> None:
    cfg, tr = ctx.recipe["stage1"], ctx.recipe["train"]
    stage, seed = 1, tr["seed"]
    if ctx.resume_state is None and ctx.dist.is_main:
        shutil.rmtree(ctx.run_dir / "features", ignore_errors=True)  # computed by the old stage 1
    train_split = ctx.data.split(ctx.recipe["dataset"]["train_split"])
    ds = PairDataset(train_split, model)
    if len(ds) < cfg["batch_size"]:
        raise ValueError(f"the training split has {len(ds)} pairs, fewer than one batch of {cfg['batch_size']}")
    steps_per_epoch = len(ds) // cfg["batch_size"]
    total = _total_steps(steps_per_epoch, cfg["epochs"], tr.get("max_steps"))
    for p in model.stage2_modules():
        p.requires_grad_(False)
    if cfg.get("freeze_encoder"):
        model.encoder.requires_grad_(False)
    named = [(n, p) for n, p in model.named_parameters() if not n.startswith("denoiser_")]
    opt = torch.optim.AdamW(param_groups(named, lr=cfg["lr"], weight_decay=cfg["weight_decay"],
                                         encoder_lr=cfg["encoder_lr"]),
                            betas=tuple(cfg["betas"]), eps=cfg["eps"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(total, cfg["warmup"]))
    step_module = Stage1(model, ctx.dist)
    ddp = _wrap_ddp(step_module, ctx)
    trainable = {n: p for n, p in named if p.requires_grad}
    ema = EMA(trainable, tr["ema"]) if tr.get("ema") else None
    scaler = torch.amp.GradScaler("cuda", enabled=ctx.precision == "fp16")
    start_epoch, start_batch, best = _restore(ctx.resume_state, stage, opt, sched, ema, None)
    run = StageProgress(ctx, model, stage, opt, sched, ema, None, trainable, steps_per_epoch, total, best)

    for epoch in range(start_epoch, cfg["epochs"]):
        model.train()
        batches = epoch_batches(len(ds), cfg["batch_size"], seed=seed, stage=stage, epoch=epoch, dist=ctx.dist)
        first = start_batch if epoch == start_epoch else 0
        loader = DataLoader(ds, batch_sampler=batches[first:], num_workers=tr["num_workers"],
                            pin_memory=ctx.device.type == "cuda")
        task = _progress_task(ctx, f"stage 1 epoch {epoch + 1}/{cfg['epochs']}", len(batches), first)
        t0 = time.perf_counter()
        for b, batch in enumerate(loader, start=first):
            batch = {k: v.to(ctx.device, non_blocking=True) for k, v in batch.items()}
            with autocast_for(ctx.device, ctx.precision):
                loss = ddp(batch["ids"], batch["mask"], batch["frames"], batch["frame_mask"])
            _optimizer_step(loss, opt, sched, scaler, trainable.values(), cfg["grad_clip"])
            rate = (b + 1 - first) * cfg["batch_size"] / (time.perf_counter() - t0)
            if run.after_batch(task, epoch, b, len(batches), loss.item(), rate):
                break
        if run.end_epoch(epoch, len(batches)):
            break


def run_stage2(ctx: RunContext, model: DiffusionRet) -> None:
    cfg, tr = ctx.recipe["stage2"], ctx.recipe["train"]
    stage, seed = 2, tr["seed"]
    model.requires_grad_(False)
    for m in model.stage2_modules():
        m.requires_grad_(True)
    text, video, caption_video = _train_features(ctx, model)
    n = len(caption_video)
    if n < cfg["batch_size"]:
        raise ValueError(f"the training split has {n} pairs, fewer than one batch of {cfg['batch_size']}")
    steps_per_epoch = n // cfg["batch_size"]
    total = _total_steps(steps_per_epoch, cfg["epochs"], tr.get("max_steps"))
    named = [(n_, p) for n_, p in model.named_parameters() if n_.startswith("denoiser_")]
    opt = torch.optim.AdamW(param_groups(named, lr=cfg["lr"], weight_decay=cfg["weight_decay"]),
                            betas=(0.9, 0.98), eps=1e-6)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(total, cfg["warmup"]))
    coef = training_coefficients(model)
    step_module = Stage2(model, coef, cfg, ctx.dist)
    ddp = _wrap_ddp(step_module, ctx)
    trainable = dict(named)
    ema = EMA(trainable, tr["ema"]) if tr.get("ema") else None
    scaler = torch.amp.GradScaler("cuda", enabled=ctx.precision == "fp16")
    gen = torch.Generator().manual_seed(seed + 7919 * (ctx.dist.rank + 1))
    start_epoch, start_batch, best = _restore(ctx.resume_state, stage, opt, sched, ema, gen)
    run = StageProgress(ctx, model, stage, opt, sched, ema, gen, trainable, steps_per_epoch, total, best)
    cv = torch.from_numpy(caption_video).to(ctx.device)

    for epoch in range(start_epoch, cfg["epochs"]):
        model.train()
        batches = epoch_batches(n, cfg["batch_size"], seed=seed, stage=stage, epoch=epoch, dist=ctx.dist)
        first = start_batch if epoch == start_epoch else 0
        task = _progress_task(ctx, f"stage 2 epoch {epoch + 1}/{cfg['epochs']}", len(batches), first)
        t0 = time.perf_counter()
        for b in range(first, len(batches)):
            idx = torch.tensor(batches[b], device=ctx.device)
            vid = cv[idx]
            with autocast_for(ctx.device, ctx.precision):
                loss, l1, l2 = ddp(text.tokens[idx].float(), text.cls[idx].float(), text.mask[idx],
                                   video.frames[vid].float(), video.mask[vid], vid, gen)
            _optimizer_step(loss, opt, sched, scaler, trainable.values(), cfg["grad_clip"])
            rate = (b + 1 - first) * cfg["batch_size"] / (time.perf_counter() - t0)
            if run.after_batch(task, epoch, b, len(batches), loss.item(), rate,
                               extra={"loss_t2v": l1.item(), "loss_v2t": l2.item()}):
                break
        if run.end_epoch(epoch, len(batches)):
            break


# ------------------------------------------------------------------------- helpers
def training_coefficients(model: DiffusionRet):
    """The forward-process coefficients over all training steps (no respacing)."""
    from diffret_cli.diffusion import DiffusionCoefficients
    from diffret_cli.registry import create

    a = model.config["sampler"]["args"]
    sched = create("schedules", a.get("schedule", "cosine"), num_steps=a.get("num_steps", 50),
                   beta_scale=a.get("beta_scale", 1.0))
    return DiffusionCoefficients.from_betas(sched.betas())


def _wrap_ddp(module: nn.Module, ctx: RunContext) -> nn.Module:
    if not ctx.dist.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.dist.local_rank] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def _optimizer_step(loss, opt, sched, scaler, params, clip: float) -> None:
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    if clip:
        torch.nn.utils.clip_grad_norm_(list(params), clip)
    scaler.step(opt)
    scaler.update()
    sched.step()


def _state(stage, epoch, batch, best, opt, sched, ema, gen) -> dict:
    return {"stage": stage, "epoch": epoch, "batch": batch, "best": best,
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "ema": ema.shadow if ema else None, "rng": _rng_state(gen)}


def _restore(rs: dict | None, stage: int, opt, sched, ema, gen) -> tuple[int, int, float]:
    """(epoch, batch, best score) to start from; restores optimiser, scheduler, EMA and
    RNG state when resuming inside this stage."""
    if not rs or rs["stage"] != stage:
        return 0, 0, -float("inf")
    opt.load_state_dict(rs["optimizer"])
    sched.load_state_dict(rs["scheduler"])
    if ema and rs.get("ema"):
        ema.shadow = rs["ema"]
    _set_rng_state(rs["rng"], gen)
    return rs["epoch"], rs["batch"], rs["best"]


def _progress_task(ctx: RunContext, desc: str, total: int, done: int):
    if ctx.progress is None:
        return None
    return ctx.progress.add_task(desc, total=total, completed=done, loss=float("nan"), lr=0.0, rate=0.0)


def _after_step(ctx, task, stage, epoch, batch, loss, lr, rate, extra=None) -> None:
    ctx.steps_done += 1
    if ctx.progress is not None and task is not None:
        ctx.progress.update(task, advance=1, loss=loss, lr=lr, rate=rate)
    every = ctx.recipe["train"]["log_every"]
    if (batch + 1) % every == 0 or batch == 0:
        ctx.log({"stage": stage, "epoch": epoch, "step": batch + 1, "global_step": ctx.steps_done,
                 "loss": loss, "lr": lr,
                 "pairs_per_s": rate, **(extra or {})})


def _maybe_interrupt(ctx: RunContext) -> None:
    if ctx.stop_after_steps is not None and ctx.steps_done >= ctx.stop_after_steps:
        raise Interrupted(f"stopped after {ctx.steps_done} steps (testing hook)")


def _total_steps(steps_per_epoch: int, epochs: int, max_steps: int | None) -> int:
    """Optimizer steps of a stage: all its epochs, or ``train.max_steps`` when smaller."""
    total = steps_per_epoch * epochs
    return min(total, int(max_steps)) if max_steps else total


def _end_of_epoch(ctx, model, stage, epoch, best, ema, trainable, *, last: bool) -> float:
    every = ctx.recipe["train"]["val_every_epochs"]
    if not (last or (every and (epoch + 1) % every == 0)):
        return best
    if not ctx.recipe["dataset"].get("val_split"):
        # no validation split (e.g. ActivityNet, whose val is its test): keep the last epoch
        if last:
            _save_best(ctx, model, stage, {"note": "no validation split; last epoch kept"})
        return best
    if ema:
        ema.swap(trainable)
    result = _validate(ctx, model, stage)
    score = selection_score(result)
    ctx.log({"stage": stage, "epoch": epoch, "val": result["rows"], "val_score": score})
    if score > best:
        best = score
        _save_best(ctx, model, stage, result)
    if ema:
        ema.swap(trainable)
    barrier(ctx.dist)
    return best


def _train_features(ctx: RunContext, model: DiffusionRet):
    """Stage-1 features of the training split, extracted once (rank 0 writes the cache)."""
    split_name = ctx.recipe["dataset"]["train_split"]
    path = ctx.run_dir / "features" / f"{split_name}.safetensors"
    if not path.is_file():
        if ctx.dist.is_main:
            split = ctx.data.split(split_name)
            model.eval()
            texts = SplitTexts.from_split(split)
            bs = ctx.recipe["eval"]["batch_size"]
            tf = encode_texts(model, texts.captions, batch_size=bs, device=ctx.device, precision=ctx.precision)
            vf = encode_videos(model, split, batch_size=max(1, bs // 4), device=ctx.device,
                               precision=ctx.precision, num_workers=ctx.recipe["train"]["num_workers"])
            dtype = getattr(torch, ctx.recipe["stage2"]["feature_dtype"])
            save_features(path, tf, vf, texts.caption_video, dtype=dtype)
        barrier(ctx.dist)
    return load_features(path, ctx.device)


def finalize_best(run_dir: Path, stages: list[int]) -> Path | None:
    """checkpoints/best <- the best checkpoint of the last stage that ran."""
    for stage in sorted(stages, reverse=True):
        src = run_dir / "checkpoints" / f"stage{stage}" / "best"
        if src.is_dir():
            dst = run_dir / "checkpoints" / "best"
            tmp = run_dir / "checkpoints" / ".tmp-best"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(src, tmp)
            replace_dir(tmp, dst)
            return dst
    return None


def load_best_stage1(run_dir: Path, model: DiffusionRet) -> None:
    """Before stage 2: continue from the best stage-1 weights, not the last ones."""
    from safetensors.torch import load_file

    path = run_dir / "checkpoints" / "stage1" / "best" / "model.safetensors"
    if not path.is_file():
        warnings.warn(f"no stage-1 checkpoint in {run_dir}: stage 2 trains on the initial "
                      "(pretrained) encoder's features", stacklevel=2)
        return
    if path.is_file():
        state = load_file(str(path))
        own = model.state_dict()
        own.update({k: v for k, v in state.items() if not k.startswith("denoiser_")})
        model.load_state_dict(own, strict=True)


def jsonl_logger(path: Path, dist: DistInfo, writer=None) -> Callable[[dict], None]:
    def log(record: dict) -> None:
        if not dist.is_main:
            return
        record = {"time": round(time.time(), 3), **record}
        with open(path, "a") as f:
            f.write(json.dumps(record, default=float) + "\n")
        if writer is not None and "loss" in record:
            step = record.get("global_step", record.get("step", 0))
            writer.add_scalar(f"stage{record['stage']}/loss", record["loss"], step)
            writer.add_scalar(f"stage{record['stage']}/lr", record["lr"], step)
    return log

