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
    "family": "diffusionret",
    "encoder": {"name": "open_clip", "args": {}},
    "temporal": {"layers": 4, "heads": None, "max_frames": None, "init_from_text": True},
    "similarity": {"chunk_size": 256},
    "denoisers": {"t2v": {"name": "t2v", "args": {}}, "v2t": {"name": "v2t", "args": {}}},
    # the forward process, used by training (q_sample) and by the sampler at inference
    "schedule": {"name": "cosine", "args": {"num_steps": 50, "beta_scale": 1.0}},
    "sampler": {"name": "ddim", "args": {}},
    "rerank": {"topk_t2v": 32, "topk_v2t": 32, "alpha_t2v": 1.0, "alpha_v2t": 1.0,
               "tau_t2v": 1.0, "tau_v2t": 1.0, "chunk_size": 64},
    "max_words": 32,
    "max_frames": 12,
}


#: sampler arguments that describe the forward process: the ``schedule`` key's now
SCHEDULE_ARGS = {"schedule": "name", "num_steps": "num_steps", "beta_scale": "beta_scale"}


def split_schedule_args(config: dict | None) -> dict | None:
    """A config whose sampler arguments still name the noise schedule (``schedule``,
    ``num_steps``, ``beta_scale``: the layout before the schedule had a key of its own,
    which checkpoints and converted weights may carry) with those arguments moved to
    ``schedule``. Other configs are returned unchanged."""
    if not config or not isinstance(config.get("sampler"), dict):
        return config
    args = dict(config["sampler"].get("args") or {})
    moved = {k: args.pop(k) for k in list(args) if k in SCHEDULE_ARGS}
    if not moved:
        return config
    out = copy.deepcopy(config)
    out["sampler"] = {**out["sampler"], "args": args}
    sched = copy.deepcopy(out.get("schedule") or {})
    sched.setdefault("args", {})
    if "schedule" in moved:
        sched["name"] = moved.pop("schedule")
    sched["args"].update(moved)
    out["schedule"] = sched
    return out


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


