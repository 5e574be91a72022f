"""Shared by tests/test_train.py, tests/test_distributed.py and tests/test_eval_protocol.py:
a tiny CPU recipe and a small prepared synthetic dataset, so training tests run in seconds."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def tiny_model_config(*, max_frames: int = 4, max_words: int = 16) -> dict[str, Any]:
    from diffret_plugins.encoders.open_clip_encoder import tiny_config

    cfg = tiny_config()
    cfg["embed_dim"] = 32
    cfg["vision_cfg"].update(image_size=32, layers=1, width=32, patch_size=16, head_width=16)
    cfg["text_cfg"].update(width=32, heads=2, layers=1, vocab_size=1024, context_length=max_words)
    return {"encoder": {"name": "open_clip", "args": {"model": "custom", "model_config": cfg,
                                                      "pretrained": None, "tokenizer": "words"}},
            "temporal": {"layers": 1}, "schedule": {"name": "cosine", "args": {"num_steps": 10}},
            "sampler": {"name": "ddim", "args": {}},
            "rerank": {"topk_t2v": 4, "topk_v2t": 4}, "max_words": max_words, "max_frames": max_frames}


def tiny_recipe(*, epochs1: int = 1, epochs2: int = 1, batch_size: int = 16, checkpoint_every: int = 100,
                stages: tuple[int, ...] = (1, 2)) -> dict[str, Any]:
    """A complete recipe dict (the shape diffret_cli.training.train expects) for a tiny CPU run."""
    return copy.deepcopy({
        "name": "tiny", "dataset": {"name": "synthetic", "options": {}, "train_split": "train",
                                    "val_split": "val", "test_split": "test"},
        "model": tiny_model_config(),
        "stage1": {"epochs": epochs1, "batch_size": batch_size, "lr": 1e-3, "encoder_lr": 1e-3, "weight_decay": 0.2,
                   "warmup": 0.1, "grad_clip": 1.0, "betas": [0.9, 0.98], "eps": 1e-6, "freeze_encoder": False},
        "stage2": {"epochs": epochs2, "batch_size": batch_size, "lr": 1e-3, "weight_decay": 0.2, "warmup": 0.1,
                   "grad_clip": 1.0, "num_candidates": 8, "loss": "kl", "loss_temp": 100.0,
                   "negative_value": 0.0, "feature_dtype": "float16"},
        "train": {"seed": 0, "device": "cpu", "precision": "auto", "num_workers": 0, "log_every": 1,
                  "checkpoint_every": checkpoint_every, "ema": None, "stages": list(stages),
                  "val_every_epochs": 1, "max_steps": None},
        "eval": {"splits": ["test"], "steps": None, "batch_size": 16, "qb_norm": False},
    })


def prepare_synthetic(root: Path, *, num_train: int = 16, num_val: int = 8, num_test: int = 8) -> Path:
    """Prepare the built-in synthetic dataset under ``root`` (4 captions a video)."""
    cmd = [sys.executable, "-m", "diffret_cli.cli.main", "data", "prepare", "synthetic", "--data-root", str(root),
           "--option", f"num_train={num_train}", "--option", f"num_val={num_val}",
           "--option", f"num_test={num_test}", "--short-side", "64", "--workers", "1"]
    subprocess.run(cmd, check=True, cwd=REPO, capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    return root
