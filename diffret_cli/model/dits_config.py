"""The DITS model config: plain data, no torch import (recipes read it without loading models).

Every component appears by name and keyword arguments, so a checkpoint's ``config.json``
alone rebuilds the model. Defaults are the paper's (Wang et al., NeurIPS 2024) where it
states them; where it is silent (marked OPEN in ``DITS.md``) the default is documented
next to the key.
"""

from __future__ import annotations

from typing import Any

from diffret_cli.model.config import FORMAT

DITS_DEFAULT_CONFIG: dict[str, Any] = {
    "format": FORMAT,
    "family": "dits",
    "encoder": {"name": "open_clip", "args": {}},
    # optional temporal transformer over frames before pooling; X-Pool (and so DITS) has
    # none (layers: 0)
    "temporal": {"layers": 0, "heads": None, "max_frames": None, "init_from_text": False},
    # "xpool": text-conditioned attention pooling (DITS is built on X-Pool; dropout 0.3 is
    # the paper's); "mean": the mean of frames
    "pooling": {"name": "xpool", "args": {"heads": 1, "dropout": 0.3, "chunk_size": 128}},
    # the step network eps(v_k, k): width comes from the encoder's embedding width
    "denoiser": {"name": "dits_step", "args": {}},
    # T = 10 linear betas 0.1 -> 0.99; T' = sample_steps = 10 (DiDeMo: 5)
    "sampler": {"name": "dits", "args": {"num_steps": 10, "sample_steps": 10}},
    # OPEN: whether training draws the lambda_k z noise of each step. The paper's step
    # has it; taken literally it is far larger than a step, so off by default (as at
    # inference, where the sampler's own `noise` argument decides).
    "train_noise": False,
    # OPEN: which text conditions the pooling of a video for the generative score:
    # "text" (the query caption, as X-Pool) or "v0" (the sampler's output)
    "pool_with": "text",
    # texts per step-network call when computing v_0 for a whole split
    "query_chunk_size": 4096,
    "max_words": 32,
    "max_frames": 12,
}

POOL_WITH = ("text", "v0")
