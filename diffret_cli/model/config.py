"""The model config: plain data, no torch import (recipes read it without loading models).

Every plugin appears by its registered name and keyword arguments, so a checkpoint's
``config.json`` alone rebuilds the model.
"""

from __future__ import annotations

import copy
from typing import Any

from diffret_cli.errors import ConfigError

FORMAT = "diffret-model/1"

DEFAULT_CONFIG: dict[str, Any] = {
    "format": FORMAT,
    "encoder": {"name": "open_clip", "args": {}},
    "temporal": {"layers": 4, "heads": None, "max_frames": None, "init_from_text": True},
    "similarity": {"chunk_size": 256},
    "denoisers": {"t2v": {"name": "t2v", "args": {}}, "v2t": {"name": "v2t", "args": {}}},
    "sampler": {"name": "ddim", "args": {"schedule": "cosine", "num_steps": 50}},
    "rerank": {"topk_t2v": 32, "topk_v2t": 32, "alpha_t2v": 1.0, "alpha_v2t": 1.0,
               "tau_t2v": 1.0, "tau_v2t": 1.0, "chunk_size": 64},
    "max_words": 32,
    "max_frames": 12,
}


def merge_config(base: dict, override: dict | None, *, path: str = "") -> dict:
    """Recursive merge of ``override`` into ``base``. At the top level an unknown key is an
    error that lists the valid ones (a typo never silently does nothing)."""
    out = copy.deepcopy(base)
    for k, v in (override or {}).items():
        if not path and k not in base and k != "versions":
            raise ConfigError(f"unknown model config key {k!r}", hint=f"valid keys: {', '.join(base)}")
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge_config(out[k], v, path=f"{path}{k}.")
        else:
            out[k] = copy.deepcopy(v)
    return out


