"""Workers for tests/test_distributed.py, run under ``torchrun --nproc_per_node 2`` (gloo
on CPU) or as plain functions (world 1):

- ``ddp_worker.py OUT``: one stage-1 step on a fixed global batch of 8 pairs (each rank
  takes 4); writes the loss and a few parameter gradients to ``OUT/rank{r}.pt``;
- ``ddp_worker.py dits OUT``: the same for one step of DITS's training stage (the
  unrolled truncated flow, X-Pool and the global InfoNCE);
- ``ddp_worker.py cache DATA_ROOT RUN_DIR``: the tiny recipe's stage-2 feature cache,
  every rank encoding its share;
- ``ddp_worker.py peak DATA_ROOT RUN_DIR OUT.json``: one process; the peak memory of
  building a cache, over what the process held when extraction started.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_helpers import tiny_model_config  # noqa: E402

GLOBAL_BATCH = 8
PARAMS = ("encoder", "temporal")  # prefixes of parameters whose gradients are compared


def global_batch(model) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    cfg = model.config
    words = cfg["max_words"]
    ids = torch.randint(1, 500, (GLOBAL_BATCH, words), generator=g)
    lengths = torch.randint(3, words + 1, (GLOBAL_BATCH,), generator=g)
    mask = (torch.arange(words)[None, :] < lengths[:, None]).long()
    ids = ids * mask
    size = model.encoder.image_size
    frames = torch.randn(GLOBAL_BATCH, cfg["max_frames"], 3, size, size, generator=g)
    nframes = torch.randint(1, cfg["max_frames"] + 1, (GLOBAL_BATCH,), generator=g)
    frame_mask = (torch.arange(cfg["max_frames"])[None, :] < nframes[:, None]).long()
    return {"ids": ids, "mask": mask, "frames": frames, "frame_mask": frame_mask}


def run_step(dist_info, family: str = "diffusionret") -> dict:
    """Loss and selected gradients of one training step on this rank's share of the batch:
    DiffusionRet's stage 1, or DITS's one stage (X-Pool without dropout, so that the
    ranks draw nothing the single process does not)."""
    from diffret_cli.families.dits_stage import DITSStep
    from diffret_cli.model.diffusionret import DiffusionRet
    from diffret_cli.model.dits import DITS
    from diffret_cli.training.context import RunContext
    from diffret_cli.training.contrastive import ContrastiveStep
    from diffret_cli.training.loop import wrap_ddp
    from dits_helpers import tiny_dits_config

    torch.manual_seed(0)
    if family == "dits":
        cfg = tiny_dits_config()
        cfg["pooling"]["args"]["dropout"] = 0.0
        model = DITS(cfg, load_pretrained=False)
        step = DITSStep(model, dist_info)
    else:
        model = DiffusionRet(tiny_model_config(), load_pretrained=False)
        step = ContrastiveStep(model, dist_info)
    model.train()
    batch = global_batch(model)
    per = GLOBAL_BATCH // dist_info.world_size
    local = {k: v[dist_info.rank * per:(dist_info.rank + 1) * per] for k, v in batch.items()}
    ctx = RunContext(run_dir=Path("."), recipe={}, data=None, device=torch.device("cpu"), precision="fp32",
                     dist=dist_info, log=lambda r: None)
    module = wrap_ddp(step, ctx)
    loss, _ = module(local)
    loss.backward()
    prefixes = PARAMS + (("pooling", "denoiser") if family == "dits" else ())
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()
             if p.grad is not None and n.startswith(prefixes)}
    return {"loss": loss.detach().item(), "grads": grads, "world_size": dist_info.world_size}


def cache_context(data_root: Path, run_dir: Path, dist_info, recipe: dict):
    """A RunContext for building the stage-2 feature cache of ``recipe`` on CPU."""
    from diffret_cli.data.manifest import PreparedDataset
    from diffret_cli.training.context import RunContext
    from diffret_cli.training.reporting import jsonl_logger

    run_dir.mkdir(parents=True, exist_ok=True)
    return RunContext(run_dir=run_dir, recipe=recipe, data=PreparedDataset.open(data_root, recipe["dataset"]["name"]),
                      device=torch.device("cpu"), precision="fp32", dist=dist_info,
                      log=jsonl_logger(run_dir / "metrics.jsonl", dist_info))


def build_cache(data_root: Path, run_dir: Path, dist_info):
    """The tiny recipe's stage-2 cache of the synthetic training split, from a model
    seeded the same way in every process."""
    from diffret_cli.model.diffusionret import DiffusionRet
    from diffret_cli.training.feature_cache import train_features
    from train_helpers import tiny_recipe

    torch.manual_seed(0)
    recipe = tiny_recipe()
    model = DiffusionRet(recipe["model"], load_pretrained=False)
    return train_features(cache_context(data_root, run_dir, dist_info, recipe), model)


def wide_token_model() -> dict:
    """A tiny model whose features are wide (128 dims from a width-32 text tower), so
    the features, not the model, dominate what extraction could hold."""
    from diffret_plugins.encoders.open_clip_encoder import tiny_config

    cfg = tiny_config(embed_dim=128, width=32, heads=2, layers=1, vision_width=32, vision_layers=1, patch_size=16,
                      image_size=32, vocab_size=1024, context_length=32)
    return {"encoder": {"name": "open_clip", "args": {"model": "custom", "model_config": cfg, "pretrained": None,
                                                      "tokenizer": "words"}},
            "temporal": {"layers": 1, "init_from_text": False}, "max_words": 32, "max_frames": 4}


def extraction_peak(data_root: Path, run_dir: Path) -> dict:
    """Peak memory of building the cache of ``data_root``'s ``peak`` dataset, in this
    process, over what it held when extraction started (model built, data opened)."""
    from diffret_cli.distributed import DistInfo
    from diffret_cli.model.diffusionret import DiffusionRet
    from diffret_cli.training.feature_cache import train_features
    from rehearsal_worker import PhasePeak
    from train_helpers import tiny_recipe

    recipe = tiny_recipe()
    recipe["model"] = wide_token_model()
    recipe["dataset"]["name"] = "peak"
    recipe["eval"]["batch_size"] = 64
    model = DiffusionRet(recipe["model"], load_pretrained=False)
    ctx = cache_context(data_root, run_dir, DistInfo(), recipe)
    with PhasePeak() as mem:
        train_features(ctx, model)
    return {"peak_over_start_mb": mem.peak_mb - mem.start_mb, "start_mb": mem.start_mb}


def main(argv: list[str]) -> None:
    from diffret_cli.distributed import cleanup, init_distributed

    torch.set_num_threads(1)
    if argv[0] == "peak":  # one process, no process group
        out = extraction_peak(Path(argv[1]), Path(argv[2]))
        Path(argv[3]).write_text(json.dumps(out))
        return
    info = init_distributed("cpu")
    if argv[0] == "cache":
        build_cache(Path(argv[1]), Path(argv[2]), info)
    elif argv[0] == "dits":
        result = run_step(info, "dits")
        torch.save(result, Path(argv[1]) / f"rank{info.rank}.pt")
    else:
        result = run_step(info)
        torch.save(result, Path(argv[0]) / f"rank{info.rank}.pt")
    cleanup(info)


if __name__ == "__main__":
    main(sys.argv[1:])
