"""The parity fixtures' weight formula (../shared/parity/README.md), implemented once.

Every official parameter is a deterministic function of (set seed, official name, shape,
kind): a Weyl sequence with a per-name offset from sha256, in float64, rounded to
float32. The fixture READMEs list each name's kind and shape, overrides and copies, and
a sha256 digest per tensor that :func:`official_state_dict` checks.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import torch

GOLDEN = 0.6180339887498949
FAN_IN_KINDS = {"weight": 1.0, "weight_text_projection": 0.1, "weight_denoiser_qk": 0.05}
FIXED = {"bias": (0.05, 0.0), "ln_weight": (0.1, 1.0), "ln_bias": (0.02, 0.0),
         "pos_embedding": (0.02, 0.0), "class_embedding": (0.02, 0.0)}


def formula_tensor(seed: int, name: str, shape: list[int], kind: str) -> np.ndarray:
    shape = tuple(shape)
    if kind == "logit_scale":
        return np.full(shape, math.log(1 / 0.07), dtype=np.float32)
    h = int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode("utf-8")).digest()[:8], "big")
    c = float(h % 1000003) * 1e-6
    n = int(np.prod(shape)) if shape else 1
    s = c + np.arange(n, dtype=np.float64) * GOLDEN
    u = s - np.floor(s)
    if kind in FAN_IN_KINDS:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        scale, offset = FAN_IN_KINDS[kind] * (1.0 / math.sqrt(float(fan_in))), 0.0
    else:
        scale, offset = FIXED[kind]
    v = scale * (2.0 * u - 1.0) + offset
    return v.astype(np.float32).reshape(shape)


def digest16(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr, dtype="<f4").tobytes()).hexdigest()[:16]


def official_state_dict(readme: dict | Path, *, check_digests: bool = True) -> dict[str, torch.Tensor]:
    """Every parameter named in a fixture README's weights section (pe buffers skipped)."""
    if not isinstance(readme, dict):
        readme = json.loads(Path(readme).read_text())
    w = readme["weights"]
    seed = w["seed"]
    out: dict[str, np.ndarray] = {}
    for name, shape in w["shapes"].items():
        kind = w["kinds"].get(name)
        if kind == "pe_buffer" or name in w.get("copies", {}):
            continue
        if name in w.get("overrides", {}):
            out[name] = np.full(tuple(shape), w["overrides"][name], dtype=np.float32)
        else:
            out[name] = formula_tensor(seed, name, shape, kind)
    for dst, src in w.get("copies", {}).items():
        out[dst] = out[src].copy()
    if check_digests:
        bad = [n for n, d in w.get("sha256_16_float32", {}).items() if n in out and digest16(out[n]) != d]
        assert not bad, f"weight formula does not reproduce the digests of {bad[:5]}"
    return {k: torch.from_numpy(v) for k, v in out.items()}
