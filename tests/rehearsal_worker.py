"""One mode of the full-size rehearsal (tests/test_rehearsal.py): the diffusionret-msrvtt
recipe at its real sizes with only the encoder shrunk, phase by phase, with each phase's
time and peak memory.

    python tests/rehearsal_worker.py DATA_ROOT RUN_DIR OUT_DIR --phases stage1,cache,stage2,eval
    torchrun --nproc_per_node 2 tests/rehearsal_worker.py ... --phases stage1
    torchrun --nproc_per_node 2 tests/rehearsal_worker.py ... --phases cache,stage2,eval

Phases are the library calls ``diffret train`` makes (:func:`diffret_cli.training.train`
for a stage, :func:`diffret_cli.evaluation.evaluate_run` for the final evaluation), with
the stage-2 feature cache built on its own first (``cache``: what stage 2 does when it
starts) so its peak is measured apart from training; stage 2 then finds the cache and
reuses it. Under torchrun ``stage1`` must be a launch of its own: ``train`` ends by
destroying the process group, which cannot be created twice in one torchrun process.
Each rank writes ``OUT_DIR/rank<r>.json``.

Memory: the peak resident set size of each phase (Linux ``VmHWM``, reset between phases
through ``/proc/self/clear_refs``), and the resident size when the phase started.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import re
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

#: train.max_steps: a few optimiser steps of each stage
MAX_STEPS = 3


def tiny_encoder() -> dict:
    """The only shrunk part: an open_clip model of width 32 with one text and one vision
    layer, 32-pixel frames, a hashed-word vocabulary of 1024, a 32-token context."""
    from diffret_plugins.encoders.open_clip_encoder import tiny_config

    cfg = tiny_config(embed_dim=32, width=32, heads=2, layers=1, vision_width=32, vision_layers=1, patch_size=16,
                      image_size=32, vocab_size=1024, context_length=32)
    return {"model": "custom", "model_config": cfg, "pretrained": None, "tokenizer": "words"}


def rehearsal_recipe() -> dict:
    """diffusionret-msrvtt as shipped (batch 128, K = 128, 32 words, 12 frames, 4 temporal
    layers, 50-step DDIM re-ranking of the top 32), on CPU, with a few steps a stage."""
    from diffret_cli.recipes import load_recipe

    overrides = [
        f"model.encoder.args={json.dumps(tiny_encoder())}",
        # the temporal transformer (4 layers, as shipped) cannot copy its weights from a
        # one-layer text tower; it starts from random weights instead
        "model.temporal.init_from_text=false",
        f"train.max_steps={MAX_STEPS}", "train.device=cpu", "train.precision=fp32", "train.num_workers=0",
        "train.log_every=1",
    ]
    return load_recipe("diffusionret-msrvtt", overrides)


class PhasePeak:
    """Peak resident memory of a block (Linux): ``VmHWM`` reset on entry and read on exit;
    and, sampled every 20 ms by a thread, the peak of ``RssFile`` (file-backed pages:
    what a memory-mapped file such as the feature cache adds when it is read)."""

    def __init__(self):
        self.start_mb = self.peak_mb = self.file_start_mb = self.file_peak_mb = 0.0
        self._stop = threading.Event()

    @staticmethod
    def _status(key: str) -> float:
        text = Path("/proc/self/status").read_text()
        return int(re.search(rf"^{key}:\s+(\d+) kB", text, re.M).group(1)) / 1024

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.file_peak_mb = max(self.file_peak_mb, self._status("RssFile"))

    def __enter__(self):
        gc.collect()
        try:  # hand memory freed by earlier phases back to the OS, so it is not reused unseen
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM <- VmRSS
        self.start_mb = self._status("VmRSS")
        self.file_start_mb = self.file_peak_mb = self._status("RssFile")
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.peak_mb = self._status("VmHWM")
        self._stop.set()
        self._thread.join()
        return False


def cache_phase(recipe: dict, run_dir: Path, data_root: Path, dist) -> dict:
    """What stage 2 does first: the stage-1 best weights, then the feature cache."""
    import torch

    from diffret_cli.data.manifest import PreparedDataset
    from diffret_cli.families import build_model
    from diffret_cli.training.context import RunContext
    from diffret_cli.training.feature_cache import train_features
    from diffret_cli.training.generation import load_best_stage1
    from diffret_cli.training.reporting import jsonl_logger

    model = build_model(recipe["model"], load_pretrained=False)
    load_best_stage1(run_dir, model)
    ctx = RunContext(run_dir=run_dir, recipe=recipe, data=PreparedDataset.open(data_root, recipe["dataset"]["name"]),
                     device=torch.device("cpu"), precision="fp32", dist=dist,
                     log=jsonl_logger(run_dir / "metrics.jsonl", dist))
    cache = train_features(ctx, model)
    return {"captions": len(cache), "videos": int(cache.video.frames.shape[0]),
            "file_bytes": cache.path.stat().st_size, "path": str(cache.path)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data_root", type=Path)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--phases", default="stage1,cache,stage2,eval")
    args = ap.parse_args()

    import torch

    # one intra-op thread per process (tests/conftest.py says why); the imports every
    # phase needs happen here, so no phase's peak counts a library being loaded
    torch.set_num_threads(1)
    import datasets  # noqa: F401
    import open_clip  # noqa: F401

    from diffret_cli import evaluation  # noqa: F401
    from diffret_cli.distributed import init_distributed
    from diffret_cli.families import build_model
    from diffret_cli.training import train

    recipe = rehearsal_recipe()
    build_model(recipe["model"], load_pretrained=False)  # builds (and imports) what a phase builds
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    report = {"rank": rank, "world_size": world, "phases": {}}
    for phase in args.phases.split(","):
        t0, c0 = time.perf_counter(), time.process_time()
        with PhasePeak() as mem:
            if phase == "stage1":
                train(recipe, run_dir=args.run_dir, data_root=args.data_root, stages=[1], progress=False)
                info = {}
            elif phase == "cache":
                info = cache_phase(recipe, args.run_dir, args.data_root, init_distributed("cpu"))
            elif phase == "stage2":  # finds the cache and reuses it; ends the process group
                train(recipe, run_dir=args.run_dir, data_root=args.data_root, stages=[2], progress=False)
                info = {}
            elif phase == "eval":
                if rank != 0:  # as `diffret train`: rank 0 evaluates
                    continue
                from diffret_cli.evaluation import evaluate_run

                res = evaluate_run(args.run_dir, data_root=args.data_root)[0]
                info = {"num_captions": res["num_captions"], "num_videos": res["num_videos"],
                        "rows": res["rows"], "timing_s": res["timing_s"]}
            else:
                raise SystemExit(f"unknown phase {phase!r}")
        report["phases"][phase] = {"seconds": round(time.perf_counter() - t0, 2),
                                   "cpu_seconds": round(time.process_time() - c0, 2),
                                   "rss_start_mb": round(mem.start_mb, 1),
                                   "peak_mb": round(mem.peak_mb, 1),
                                   "peak_over_start_mb": round(mem.peak_mb - mem.start_mb, 1),
                                   "file_backed_peak_over_start_mb": round(mem.file_peak_mb - mem.file_start_mb, 1),
                                   **info}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    name = f"rank{rank}" if world > 1 else "single"
    existing = args.out_dir / f"{name}.json"
    if existing.is_file():  # a second launch of the same mode adds its phases
        prev = json.loads(existing.read_text())
        report["phases"] = {**prev["phases"], **report["phases"]}
    existing.write_text(json.dumps(report, indent=1, default=float))


if __name__ == "__main__":
    main()
