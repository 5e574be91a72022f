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
    """A run directory (or a checkpoint with a recipe) opened for figures and reports."""

    run_dir: Path
    recipe: dict
    model: Any
    device: torch.device
    data_root: Path | None
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def dataset_name(self) -> str:
        return self.recipe.get("dataset", {}).get("name", "")

    def out_domain(self) -> list[tuple[str, str]]:
        """(dataset, split) of the recipe's out-of-domain targets."""
        out = []
        for d in (self.recipe.get("eval") or {}).get("out_domain") or []:
            d = {"name": d} if isinstance(d, str) else d
            out.append((d["name"], d.get("split", "test")))
        return out

    def eval_settings(self) -> dict:
        """Steps, top K and noise seed as ``diffret eval RUN`` uses them (recipe eval section,
        else the model's; the seed is the run's train.seed)."""
        ev = self.recipe.get("eval") or {}
        return {"steps": ev.get("steps"), "topk_t2v": ev.get("topk_t2v"), "topk_v2t": ev.get("topk_v2t"),
                "seed": int((self.recipe.get("train") or {}).get("seed", 0)), "batch_size": ev.get("batch_size", 64)}

    def prepared(self, name: str):
        from diffret_cli.data.manifest import PreparedDataset

        return PreparedDataset.open(self.data_root, name)

    def scores(self, dataset: str | None = None, split: str = "test", *, keep_chains: bool = False,
               rerank_scores: bool = True) -> SplitScores:
        dataset = dataset or self.dataset_name
        key = (dataset, split, keep_chains, rerank_scores)
        if key not in self._cache:
            data = self.prepared(dataset)
            if split not in data.splits:
                raise ConfigError(f"{dataset} has no prepared split {split!r}",
                                  hint=f"available: {', '.join(data.splits)}")
            self._cache[key] = score_split(self.model, data.split(split), dataset=dataset, split_name=split,
                                           device=self.device, keep_chains=keep_chains,
                                           rerank_scores=rerank_scores, **self.eval_settings())
        return self._cache[key]


def open_run(run: str | Path, *, data_root: str | Path | None = None, device: str = "auto") -> RunView:
    """Open a run directory (its best checkpoint and recipe.yaml) for figures."""
    from diffret_cli.checkpoint import load_model, resolve_checkpoint_dir
    from diffret_cli.features import resolve_device

    run = Path(run)
    recipe_file = run / RECIPE_FILE
    if not recipe_file.is_file():
        raise ConfigError(f"{run} is not a run directory (no {RECIPE_FILE})",
                          hint="pass a directory written by `diffret train` (runs/<name>-<time>)")
    recipe = yaml.safe_load(recipe_file.read_text()) or {}
    dev = resolve_device(device)
    model = load_model(resolve_checkpoint_dir(run), map_location=dev).eval()
    return RunView(run_dir=run, recipe=recipe, model=model, device=dev,
                   data_root=Path(data_root) if data_root else None)


def _step_labels(sampler: Sampler) -> list[str]:
    """x_{t+1} for the state fed to the model at (original) step index t, then x_0: with 50
    steps, x_50 .. x_1, x_0 as the paper's Figure 5 labels them."""
    return [f"x_{t + 1}" for t in sampler.timesteps()] + ["x_0"]


@torch.no_grad()
def score_split(model, split, *, dataset: str, split_name: str, device, steps: int | None = None,
                topk_t2v: int | None = None, topk_v2t: int | None = None, seed: int = 0,
                batch_size: int = 64, keep_chains: bool = False, rerank_scores: bool = True) -> SplitScores:
    """Encode ``split`` and score it as ``diffret eval`` does (see the module docstring)."""
    from diffret_cli.features import SplitTexts, encode_texts, encode_videos, resolve_precision

    model.eval()
    precision = resolve_precision("auto", device)
    texts = SplitTexts.from_split(split)
    tf = encode_texts(model, texts.captions, batch_size=batch_size, device=device, precision=precision)
    vf = encode_videos(model, split, batch_size=max(1, batch_size // 4), device=device, precision=precision)
    sim = model.similarity_matrix(tf, vf).float()
    out = SplitScores(dataset=dataset, split_name=split_name, split=split, captions=list(texts.captions),
                      caption_video=np.asarray(texts.caption_video), video_ids=[v.video_id for v in split.videos],
                      text=tf, video=vf, stage1=sim,
                      settings={"steps": steps, "topk_t2v": topk_t2v, "topk_v2t": topk_v2t, "seed": seed})
    if not rerank_scores:
        return out
    g = torch.Generator(device=device).manual_seed(seed)
    record: dict = {}
    if hasattr(model, "denoiser_t2v"):
        # DiffusionRet: the same call as evaluation, through a recording sampler
        from diffret_cli.rerank import rerank

        sampler = model.make_sampler(sample_steps=steps) if steps else model.make_sampler()
        rec = TrajectoryRecorder(sampler) if keep_chains else sampler
        t2v, v2t = rerank(sim, model=model, text_cls=tf.cls, video_frames=vf.frames, video_mask=vf.mask,
                          sampler=rec, topk_t2v=topk_t2v, topk_v2t=topk_v2t, generator=g, record=record)
        if keep_chains:
            n = len(record["t2v"])
            out.chains = {"t2v": rec.chains[:n], "v2t": rec.chains[n:]}
            out.step_labels = _step_labels(sampler)
    elif hasattr(model, "rerank"):
        t2v, v2t = model.rerank(sim, tf, vf, steps=steps, topk_t2v=topk_t2v, topk_v2t=topk_v2t, generator=g,
                                record=record)
    else:
        raise ConfigError(f"the model ({type(model).__name__}) has no generative re-ranking",
                          hint="score it with rerank_scores=False (stage-1 figures only)")
    out.t2v, out.v2t, out.record = t2v.float(), v2t.float(), record
    return out
