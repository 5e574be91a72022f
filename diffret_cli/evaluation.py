"""Evaluation as a library: a model on a prepared split, a run on its recipe's targets.

Rows of a result: ``stage1`` (the dual encoder's scores), ``diffusion`` (the family's
generative scores: DiffusionRet re-ranks each query's top K), and with QB-Norm
``stage1+qbnorm`` / ``diffusion+qbnorm`` in rows of their own (never replacing the raw
numbers). ``diffret eval`` and the end of ``diffret train`` build an
:class:`EvalSettings`, call :func:`evaluate_run` or :func:`evaluate_dataset`, and print.
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from diffret_cli.diagnostics import rerank_diagnostics
from diffret_cli.errors import ConfigError, PluginError
from diffret_cli.features import SplitTexts, encode_texts, encode_videos, resolve_device, resolve_precision
from diffret_cli.fileio import atomic_write_json
from diffret_cli.metrics import retrieval_metrics


@dataclass(frozen=True)
class EvalTarget:
    """One evaluation: a dataset's split, in-domain (the training dataset) or not."""

    dataset: str
    split: str = "test"
    options: dict | None = None
    role: str = "in-domain"  # or "out-of-domain"


@dataclass(frozen=True)
class EvalSettings:
    """Every setting of an evaluation; :meth:`from_recipe` reads a recipe's ``eval`` and
    ``train`` sections (each of their evaluation keys is honoured here)."""

    steps: int | None = None  # sampler steps (None: the model's default)
    topk_t2v: int | None = None  # candidates re-ranked per caption (None: model.rerank)
    topk_v2t: int | None = None  # candidates re-ranked per video
    rerank: bool = True  # the generative rows
    qb_norm: bool = False
    qb_norm_beta: float = 20.0
    qb_norm_k: int = 1
    qb_bank_size: int = 5000  # training captions sampled as the QB-Norm query bank
    batch_size: int = 64
    seed: int = 0  # of the diffusion noise
    device: str = "auto"
    precision: str = "auto"
    num_workers: int = 0  # frame-loading processes
    splits: tuple[str, ...] = ("test",)
    out_domain: tuple[EvalTarget, ...] = field(default_factory=tuple)
    #: sampler arguments that override the model's at inference (e.g. ``{"eta": 0.5}``)
    sampler_args: dict = field(default_factory=dict)

    @classmethod
    def from_recipe(cls, recipe: dict) -> "EvalSettings":
        ev, tr = recipe.get("eval", {}), recipe.get("train", {})
        out = []
        for d in ev.get("out_domain") or []:
            d = {"name": d} if isinstance(d, str) else d
            out.append(EvalTarget(d["name"], d.get("split", "test"), d.get("options") or None, "out-of-domain"))
        return cls(steps=ev.get("steps"), topk_t2v=ev.get("topk_t2v"), topk_v2t=ev.get("topk_v2t"),
                   qb_norm=bool(ev.get("qb_norm", False)), qb_norm_beta=float(ev.get("qb_norm_beta", 20.0)),
                   qb_norm_k=int(ev.get("qb_norm_k", 1)), qb_bank_size=int(ev.get("qb_norm_bank_size", 5000)),
                   batch_size=int(ev.get("batch_size", 64)), seed=int(tr.get("seed", 0)),
                   device=tr.get("device", "auto"), precision=tr.get("precision", "auto"),
                   num_workers=int(tr.get("num_workers", 0)), splits=tuple(ev.get("splits") or ("test",)),
                   out_domain=tuple(out))

    def with_overrides(self, **changes) -> "EvalSettings":
        """A copy with the given settings changed; None values leave a setting as it is."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


@dataclass
class EncodedSplit:
    """A split's captions and videos through the (frozen) stage-1 model."""

    texts: SplitTexts
    text: Any  # TextFeatures
    video: Any  # VideoFeatures
    seconds: float


@torch.no_grad()
def encode_split(model, split, settings: EvalSettings) -> EncodedSplit:
    device = resolve_device(settings.device)
    precision = resolve_precision(settings.precision, device)
    model.eval()
    texts = SplitTexts.from_split(split)
    t0 = time.perf_counter()
    tf = encode_texts(model, texts.captions, batch_size=settings.batch_size, device=device, precision=precision)
    vf = encode_videos(model, split, batch_size=max(1, settings.batch_size // 4), device=device,
                       precision=precision, num_workers=settings.num_workers)
    return EncodedSplit(texts, tf, vf, time.perf_counter() - t0)


@torch.no_grad()
def evaluate_split(model, split, settings: EvalSettings | None = None, *, encoded: EncodedSplit | None = None,
                   qb_bank: list[str] | None = None, record: dict | None = None) -> dict[str, Any]:
    """Metrics of ``model`` on a prepared ``split``. ``encoded`` reuses features from
    :func:`encode_split` (a frozen encoder's features never change); ``qb_bank`` holds the
    QB-Norm query-bank captions; ``record`` receives the re-ranking's per-chunk
    candidates and samples."""
    settings = settings or EvalSettings()
    device = resolve_device(settings.device)
    precision = resolve_precision(settings.precision, device)
    model.eval()
    if settings.rerank and settings.steps is not None:  # a --steps out of range fails before encoding
        with sampler_overrides(model, settings.sampler_args):
            model.make_sampler(sample_steps=settings.steps)
    if encoded is None:
        encoded = encode_split(model, split, settings)
    texts, tf, vf = encoded.texts, encoded.text, encoded.video
    sim = model.similarity_matrix(tf, vf)
    rows: dict[str, Any] = {"stage1": retrieval_metrics(sim, sim.t(), texts.caption_video)}
    t_rerank, fused = 0.0, None
    if settings.rerank:
        t1 = time.perf_counter()
        g = torch.Generator(device=device).manual_seed(settings.seed)
        record = {} if record is None else record  # the diagnostics read the candidates and samples
        with sampler_overrides(model, settings.sampler_args):
            fused = model.rerank(sim, tf, vf, steps=settings.steps, topk_t2v=settings.topk_t2v,
                                 topk_v2t=settings.topk_v2t, generator=g, record=record)
        rows["diffusion"] = retrieval_metrics(fused[0], fused[1], texts.caption_video)
        t_rerank = time.perf_counter() - t1
    if qb_bank:
        from diffret_cli.qbnorm import qb_norm

        bank = encode_texts(model, qb_bank, batch_size=settings.batch_size, device=device, precision=precision)
        bank_t2v = model.similarity_matrix(bank, vf)  # [B, V]
        # the query bank holds captions, so QB-Norm applies to text-to-video only
        qb = dict(beta=settings.qb_norm_beta, k=settings.qb_norm_k)
        rows["stage1+qbnorm"] = retrieval_metrics(qb_norm(sim, bank_t2v, **qb), None, texts.caption_video)
        if fused is not None:
            rows["diffusion+qbnorm"] = retrieval_metrics(qb_norm(fused[0], bank_t2v, **qb), None,
                                                         texts.caption_video)
    rr = model.config.get("rerank", {})
    return {
        "rows": rows,
        "diagnostics": (rerank_diagnostics(sim, fused, texts.caption_video, record=record)
                        if fused is not None else None),
        "num_captions": len(texts.captions),
        "num_videos": len(split.videos),
        # videos the prepared split could not decode are left out of the gallery: the
        # numbers are then not comparable with the published protocol
        "num_videos_unavailable": len(getattr(split, "skipped", []) or []),
        "timing_s": {"encode": round(encoded.seconds, 3), "rerank": round(t_rerank, 3)},
        "settings": {"steps": settings.steps if settings.steps is not None else model.default_steps(),
                     "sampler_args": dict(settings.sampler_args),
                     "topk_t2v": settings.topk_t2v or rr.get("topk_t2v"),
                     "topk_v2t": settings.topk_v2t or rr.get("topk_v2t"),
                     "seed": settings.seed, "precision": precision,
                     "qb_norm": {"beta": settings.qb_norm_beta, "k": settings.qb_norm_k} if qb_bank else None},
    }


@contextlib.contextmanager
def sampler_overrides(model, args: dict):
    """The model's sampler built with ``args`` on top of its own arguments, for the
    duration of the block (any family: models build their sampler from
    ``config["sampler"]``)."""
    if not args:
        yield
        return
    saved = copy.deepcopy(model.config["sampler"])
    model.config["sampler"] = {**saved, "args": {**saved.get("args", {}), **args}}
    try:
        try:
            model.make_sampler()  # a bad argument fails here, naming the sampler
        except (TypeError, PluginError) as exc:
            raise ConfigError(f"sampler {saved['name']!r} rejects the arguments {args}: "
                              f"{getattr(exc, 'message', exc)}",
                              hint=f"sweep a setting ({', '.join(SWEEP_SETTINGS)}) or an argument the "
                              "sampler takes (`diffret plugins list --kind samplers`)") from exc
        yield
    finally:
        model.config["sampler"] = saved


#: EvalSettings fields a sweep can vary; any other key is a sampler argument
SWEEP_SETTINGS = ("steps", "topk", "topk_t2v", "topk_v2t", "seed")


def parse_sweep(text: str) -> tuple[str, list]:
    """``"steps=0,1,5"`` -> ("steps", [0, 1, 5]); values are YAML scalars."""
    key, sep, values = text.partition("=")
    if not sep or not key.strip() or not values.strip():
        raise ConfigError(f"--sweep {text!r} is not KEY=V1,V2,...",
                          hint="e.g. --sweep steps=0,1,5,10,20 or --sweep eta=0,0.5,1")
    return key.strip(), [yaml.safe_load(v.strip()) for v in values.split(",")]


def sweep_settings(settings: EvalSettings, key: str, value) -> EvalSettings:
    """``settings`` with one swept setting (or sampler argument) set to ``value``."""
    if key == "topk":
        return replace(settings, topk_t2v=value, topk_v2t=value)
    if key in SWEEP_SETTINGS:
        return replace(settings, **{key: value})
    return replace(settings, sampler_args={**settings.sampler_args, key: value})


def evaluate_sweep(run_dir: Path, key: str, values: list, *, settings: EvalSettings | None = None,
                   targets: list[EvalTarget] | None = None, data_root: Path | None = None
                   ) -> list[tuple[object, list[dict[str, Any]]]]:
    """One evaluation per value of ``key`` (an EvalSettings field such as ``steps``, or
    any argument of the model's sampler), the model loaded once: [(value, results)]."""
    from diffret_cli.checkpoint import load_model, resolve_checkpoint_dir

    recipe = load_run_recipe(Path(run_dir)) or {}
    settings = settings or EvalSettings.from_recipe(recipe)
    model = load_model(resolve_checkpoint_dir(Path(run_dir)))
    return [(v, evaluate_run(run_dir, settings=sweep_settings(settings, key, v), targets=targets,
                             data_root=data_root, model=model, save=False)) for v in values]


def evaluate_dataset(model, target: EvalTarget, settings: EvalSettings, *, data_root: Path | None = None,
                     data_cfg: dict | None = None) -> dict[str, Any]:
    """Metrics of ``model`` on a target's prepared split (a generated dataset is
    prepared on the spot); QB-Norm's query bank is the target's training captions."""
    from diffret_cli.data.ensure import ensure_prepared

    data = ensure_prepared(target.dataset, data_root, data_cfg=data_cfg, options=target.options)
    if target.split not in data.splits:
        raise ConfigError(f"{target.dataset} has no prepared split {target.split!r}",
                          hint=f"available: {', '.join(data.splits)}; prepare it with "
                          f"`diffret data prepare {target.dataset} --split {target.split}`")
    model = model.to(resolve_device(settings.device))
    bank = None
    if settings.qb_norm:
        if "train" not in data.splits:
            raise ConfigError(f"QB-Norm needs {target.dataset}'s training captions as its query bank",
                              hint=f"prepare the train split: `diffret data prepare {target.dataset}`")
        bank = caption_bank(data.split("train"), limit=settings.qb_bank_size, seed=settings.seed)
    res = evaluate_split(model, data.split(target.split), settings, qb_bank=bank)
    res.update({"dataset": target.dataset, "split": target.split, "protocol": data.protocol, "role": target.role})
    return res


def run_targets(recipe: dict, settings: EvalSettings) -> list[EvalTarget]:
    """A recipe's evaluations: its dataset's ``eval.splits``, then ``eval.out_domain``."""
    ds = recipe["dataset"]
    own = [EvalTarget(ds["name"], s, ds.get("options") or None, "in-domain") for s in settings.splits]
    return own + list(settings.out_domain)


def load_run_recipe(run_dir: Path) -> dict | None:
    path = Path(run_dir) / "recipe.yaml"
    if not path.is_file():
        return None
    try:
        recipe = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}",
                          hint="restore the run's recipe.yaml (recipe-history/ holds earlier ones)") from exc
    if not isinstance(recipe, dict):  # e.g. emptied: not the same as a checkpoint without a run
        raise ConfigError(f"{path} holds no recipe",
                          hint="restore the run's recipe.yaml (recipe-history/ holds earlier ones), or evaluate "
                          "its checkpoint folder: `diffret eval RUN/checkpoints/best --dataset NAME`")
    return recipe


def evaluate_run(run_dir: Path, *, settings: EvalSettings | None = None, targets: list[EvalTarget] | None = None,
                 data_root: Path | None = None, model=None, save: bool = True) -> list[dict[str, Any]]:
    """Evaluate a run's best checkpoint on its recipe's targets (or ``targets``), saving
    each result to ``RUN/eval/<dataset>-<split>.json``. Settings default to the recipe's."""
    from diffret_cli.checkpoint import load_model, resolve_checkpoint_dir

    run_dir = Path(run_dir)
    recipe = load_run_recipe(run_dir) or {}
    settings = settings or EvalSettings.from_recipe(recipe)
    if targets is None:
        if not recipe:
            raise ConfigError(f"{run_dir} has no recipe.yaml, so its datasets are unknown",
                              hint="name the dataset to evaluate on (`diffret eval CKPT --dataset NAME`)")
        targets = run_targets(recipe, settings)
    ckpt = resolve_checkpoint_dir(run_dir)
    model = model if model is not None else load_model(ckpt)
    results = []
    for target in targets:
        res = evaluate_dataset(model, target, settings, data_root=data_root, data_cfg=recipe.get("data"))
        res["checkpoint"] = str(ckpt)
        if save:
            out_dir = run_dir if recipe else ckpt
            atomic_write_json(out_dir / "eval" / f"{target.dataset}-{target.split}.json", res)
        results.append(res)
    return results


def find_run_for(dataset: str, base: Path = Path("runs")) -> Path:
    """The most recent run under ``base`` trained on ``dataset`` that has a best checkpoint."""
    candidates = []
    for recipe_file in base.glob("*/recipe.yaml"):
        try:
            r = yaml.safe_load(recipe_file.read_text())
        except yaml.YAMLError:
            continue
        if (r or {}).get("dataset", {}).get("name") == dataset and (recipe_file.parent / "checkpoints" / "best").is_dir():
            candidates.append(recipe_file.parent)
    if not candidates:
        raise ConfigError(f"no finished run trained on {dataset!r} under {base}/",
                          hint=f"train one (`diffret train --recipe diffusionret-{dataset}`) or pass RUN_OR_CHECKPOINT")
    return max(candidates, key=lambda p: p.stat().st_mtime)


def selection_score(result: dict) -> float:
    """Model selection on validation: text-to-video Rsum of the best row available."""
    rows = result["rows"]
    row = rows.get("diffusion", rows["stage1"])
    return float(row["t2v"]["Rsum"])


def caption_bank(split, limit: int | None = None, seed: int = 0) -> list[str]:
    """Up to ``limit`` captions of ``split`` (a seeded sample), QB-Norm's query bank."""
    caps = [c for v in split.videos for c in v.captions]
    if limit and len(caps) > limit:
        rng = np.random.default_rng(seed)
        caps = [caps[i] for i in sorted(rng.choice(len(caps), limit, replace=False))]
    return caps
