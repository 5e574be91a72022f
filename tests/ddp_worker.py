"""One stage-1 step on a fixed global batch of 8 pairs, for tests/test_distributed.py.

Run under ``torchrun --nproc_per_node 2`` (gloo on CPU) each rank takes 4 of the 8 pairs;
run as a plain function (world 1) it takes all 8. Writes the loss and a few parameter
gradients to ``OUT/rank{r}.pt``.
"""

from __future__ import annotations

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


def run_step(dist_info) -> dict:
    """Loss and selected gradients of one stage-1 step on this rank's share of the batch."""
    from diffret_cli.model.diffusionret import DiffusionRet
    from diffret_cli.training.context import RunContext
    from diffret_cli.training.contrastive import ContrastiveStep
    from diffret_cli.training.loop import wrap_ddp

    torch.manual_seed(0)
    model = DiffusionRet(tiny_model_config(), load_pretrained=False)
    model.train()
    batch = global_batch(model)
    per = GLOBAL_BATCH // dist_info.world_size
    local = {k: v[dist_info.rank * per:(dist_info.rank + 1) * per] for k, v in batch.items()}
    ctx = RunContext(run_dir=Path("."), recipe={}, data=None, device=torch.device("cpu"), precision="fp32",
                     dist=dist_info, log=lambda r: None)
    module = wrap_ddp(ContrastiveStep(model, dist_info), ctx)
    loss, _ = module(local)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()
             if p.grad is not None and n.startswith(PARAMS)}
    return {"loss": loss.detach().item(), "grads": grads, "world_size": dist_info.world_size}


def main(out_dir: str) -> None:
    from diffret_cli.distributed import cleanup, init_distributed

    torch.set_num_threads(1)
    info = init_distributed("cpu")
    result = run_step(info)
    torch.save(result, Path(out_dir) / f"rank{info.rank}.pt")
    cleanup(info)


if __name__ == "__main__":
    main(sys.argv[1])
