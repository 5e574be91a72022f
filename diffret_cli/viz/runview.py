"""What every figure needs from a run: its model, recipe, data and one split's scores.

A split is encoded once and scored the way ``diffret eval`` scores it (the same sampler,
step count, top K and seeded noise), so a figure shows the numbers the metric tables
report. Re-ranking goes through :func:`diffret_cli.rerank.rerank` (DiffusionRet) or the
model's own ``rerank`` (other families) with ``record=`` on, which gives each query's
candidates and generated sample; a thin sampler wrapper also keeps every chain's states
(x_T .. x_0) for the denoising figure (paper Figure 5).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from diffret_cli.errors import ConfigError
from diffret_cli.interfaces import SampleResult, Sampler

RECIPE_FILE = "recipe.yaml"


class TrajectoryRecorder(Sampler):
    """A sampler that samples exactly like ``inner`` (same calls, same random draws) and
    keeps every chain's states on the CPU: ``chains[i]`` is [steps + 1, B, ...] for the
    i-th call of :meth:`sample`, from the start state x_T to the sample x_0."""

    def __init__(self, inner: Sampler):
        self.inner = inner
        self.prediction = inner.prediction
        self.truncated = inner.truncated
        self.chains: list[torch.Tensor] = []

    def config(self) -> dict:
        return self.inner.config()

    def timesteps(self) -> list[int]:
        return self.inner.timesteps()

    def start(self, **kwargs) -> torch.Tensor:
        return self.inner.start(**kwargs)

    def sample(self, model_fn, x_start, *, generator=None, record=False) -> SampleResult:
        res = self.inner.sample(model_fn, x_start, generator=generator, record=True)
        states = [s["x_t"] for s in res.trajectory or []] + [res.sample]
        self.chains.append(torch.stack([s.detach().float().cpu() for s in states]))
        return res if record else SampleResult(sample=res.sample, trajectory=None)


@dataclass
class SplitScores:
    """One split through the model: features, stage-1 and re-ranked scores, the record."""

    dataset: str
    split_name: str
    split: Any  # diffret_cli.data.manifest.PreparedSplit
    captions: list[str]
    caption_video: np.ndarray  # [C] video index of each caption
    video_ids: list[str]
    text: Any  # TextFeatures
    video: Any  # VideoFeatures
    stage1: torch.Tensor  # [C, V]
    t2v: torch.Tensor | None = None  # [C, V] re-ranked
    v2t: torch.Tensor | None = None  # [V, C] re-ranked
    record: dict | None = None  # rerank(..., record=...): per direction, per chunk rows/candidates/sample
    #: per direction, per chunk: [steps + 1, B, K] states x_T .. x_0 (full samplers)
    chains: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    #: labels of the chain states, x_T first ("x_50", ..., "x_1", "x_0")
    step_labels: list[str] = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    @property
    def reranked(self) -> bool:
        return self.t2v is not None

    def chain_of(self, direction: str, query: int) -> tuple[np.ndarray, np.ndarray]:
        """(states [steps + 1, K], candidates [K]) of one query's denoising chain."""
        if not self.chains.get(direction):
            raise ConfigError("this split was scored without keeping the denoising chains",
                              hint="score it with keep_chains=True")
        for chunk, states in zip(self.record[direction], self.chains[direction]):
            hit = (chunk["rows"] == query).nonzero()
            if len(hit):
                i = int(hit[0, 0])
                return states[:, i].numpy(), chunk["candidates"][i].cpu().numpy()
        raise ConfigError(f"query {query} is not in the {direction} record")


@dataclass
class RunView:
    """A run directory opened for figures and reports: the model, the recipe, the
    evaluation settings ``diffret eval RUN`` would use, and a cache of scored splits."""

    run_dir: Path
    recipe: dict
    model: Any
    settings: Any  # diffret_cli.evaluation.EvalSettings
    data_root: Path | None
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def dataset_name(self) -> str:
        return self.recipe.get("dataset", {}).get("name", "")

    @property
    def device(self) -> torch.device:
        from diffret_cli.features import resolve_device

        return resolve_device(self.settings.device)

    def targets(self) -> list:
        """The recipe's evaluations (:class:`diffret_cli.evaluation.EvalTarget`): its own
        test split(s), then the out-of-domain ones."""
        from diffret_cli.evaluation import run_targets

        return run_targets(self.recipe, self.settings)

    def out_domain(self) -> list[tuple[str, str]]:
        """(dataset, split) of the recipe's out-of-domain targets."""
        return [(t.dataset, t.split) for t in self.settings.out_domain]

    def _options(self, name: str) -> dict | None:
        for t in self.targets():
            if t.dataset == name:
                return t.options
        return None

    def scores(self, dataset: str | None = None, split: str = "test", *, keep_chains: bool = False,
               rerank_scores: bool = True) -> "SplitScores":
        """``dataset``'s ``split`` scored as ``diffret eval`` scores it (cached)."""
        from diffret_cli.data.ensure import ensure_prepared

        dataset = dataset or self.dataset_name
        key = (dataset, split, keep_chains, rerank_scores)
        if key not in self._cache:
            # a split scored with more (chains, re-ranking) answers a request for less
            for (d, sp, chains, rr), cached in self._cache.items():
                if (d, sp) == (dataset, split) and chains >= keep_chains and rr >= rerank_scores:
                    return cached
            data = ensure_prepared(dataset, self.data_root, data_cfg=self.recipe.get("data"),
                                   options=self._options(dataset), progress=False)
            if split not in data.splits:
                raise ConfigError(f"{dataset} has no prepared split {split!r}",
                                  hint=f"available: {', '.join(data.splits)}")
            self._cache[key] = score_split(self.model, data.split(split), self.settings, dataset=dataset,
                                           split_name=split, keep_chains=keep_chains, rerank_scores=rerank_scores)
        return self._cache[key]


def open_run(run: str | Path, *, data_root: str | Path | None = None, device: str | None = None) -> RunView:
    """Open a run directory (its best checkpoint and recipe.yaml) for figures; evaluation
    settings come from the recipe (:meth:`diffret_cli.evaluation.EvalSettings.from_recipe`),
    ``device`` overrides the recipe's."""
    from diffret_cli.checkpoint import load_model, resolve_checkpoint_dir
    from diffret_cli.evaluation import EvalSettings, load_run_recipe

    run = Path(run)
    recipe = load_run_recipe(run)
    if recipe is None:
        raise ConfigError(f"{run} is not a run directory (no {RECIPE_FILE})",
                          hint="pass a directory written by `diffret train` (runs/<name>-<time>)")
    settings = EvalSettings.from_recipe(recipe).with_overrides(device=device)
    from diffret_cli.features import resolve_device

    model = load_model(resolve_checkpoint_dir(run), map_location=resolve_device(settings.device)).eval()
    return RunView(run_dir=run, recipe=recipe, model=model, settings=settings,
                   data_root=Path(data_root) if data_root else None)


def _step_labels(sampler: Sampler) -> list[str]:
    """x_{t+1} for the state fed to the model at (original) step index t, then x_0: with 50
    steps, x_50 .. x_1, x_0 as the paper's Figure 5 labels them."""
    return [f"x_{t + 1}" for t in sampler.timesteps()] + ["x_0"]


@torch.no_grad()
def score_split(model, split, settings, *, dataset: str, split_name: str, keep_chains: bool = False,
                rerank_scores: bool = True) -> SplitScores:
    """Encode ``split`` and score it as :func:`diffret_cli.evaluation.evaluate_split` does
    with ``settings`` (an ``EvalSettings``): same features, same sampler, same noise."""
    from diffret_cli.evaluation import encode_split
    from diffret_cli.features import resolve_device

    model.eval()
    device = resolve_device(settings.device)
    enc = encode_split(model, split, settings)
    tf, vf = enc.text, enc.video
    sim = model.similarity_matrix(tf, vf).float()
    out = SplitScores(dataset=dataset, split_name=split_name, split=split, captions=list(enc.texts.captions),
                      caption_video=np.asarray(enc.texts.caption_video),
                      video_ids=[v.video_id for v in split.videos], text=tf, video=vf, stage1=sim,
                      settings={"steps": settings.steps, "topk_t2v": settings.topk_t2v,
                                "topk_v2t": settings.topk_v2t, "seed": settings.seed})
    if not rerank_scores:
        return out
    g = torch.Generator(device=device).manual_seed(settings.seed)
    record: dict = {}
    if keep_chains and hasattr(model, "denoiser_t2v"):
        # DiffusionRet.rerank's own call, through a sampler that keeps the chains
        from diffret_cli.rerank import rerank

        sampler = model.make_sampler(sample_steps=settings.steps) if settings.steps else model.make_sampler()
        rec = TrajectoryRecorder(sampler)
        t2v, v2t = rerank(sim, model=model, text_cls=tf.cls, video_frames=vf.frames, video_mask=vf.mask,
                          sampler=rec, topk_t2v=settings.topk_t2v, topk_v2t=settings.topk_v2t, generator=g,
                          record=record)
        n = len(record["t2v"])
        out.chains = {"t2v": rec.chains[:n], "v2t": rec.chains[n:]}
        out.step_labels = _step_labels(sampler)
    else:
        t2v, v2t = model.rerank(sim, tf, vf, steps=settings.steps, topk_t2v=settings.topk_t2v,
                                topk_v2t=settings.topk_v2t, generator=g, record=record)
    out.t2v, out.v2t, out.record = t2v.float(), v2t.float(), record
    return out
