"""Cosine noise schedule (Nichol & Dhariwal 2021, Eq. 17)."""

from __future__ import annotations

import math

import numpy as np

from diffret_cli.sdk import NoiseSchedule


def betas_for_alpha_bar(num_steps: int, alpha_bar, max_beta: float = 0.999) -> np.ndarray:
    """beta_t = min(1 - abar((t+1)/T) / abar(t/T), max_beta): discretise a continuous abar."""
    betas = []
    for i in range(num_steps):
        t1, t2 = i / num_steps, (i + 1) / num_steps
        betas.append(min(1 - alpha_bar(t2) / alpha_bar(t1), max_beta))
    return np.array(betas, dtype=np.float64)


class CosineSchedule(NoiseSchedule):
    """abar(t) = cos^2(((t/T) + s) / (1 + s) * pi/2), s = 0.008; betas capped at 0.999.

    ``beta_scale`` is accepted for interface parity with the linear schedule; as in the
    official code it does not change the cosine schedule and must be 1.0.
    """

    def __init__(self, *, num_steps: int = 50, beta_scale: float = 1.0, offset: float = 0.008,
                 max_beta: float = 0.999):
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        if beta_scale != 1.0:
            raise ValueError("the cosine schedule has no beta scale (official behaviour); use 1.0")
        self.num_steps = int(num_steps)
        self.beta_scale = float(beta_scale)
        self.offset = float(offset)
        self.max_beta = float(max_beta)

    def config(self) -> dict:
        return {"num_steps": self.num_steps, "beta_scale": self.beta_scale,
                "offset": self.offset, "max_beta": self.max_beta}

    @classmethod
    def example_args(cls) -> list[dict]:
        # the paper's schedule, and a lower cap that binds at the last steps
        return [{}, {"max_beta": 0.5}]

    def betas(self) -> np.ndarray:
        s = self.offset
        return betas_for_alpha_bar(
            self.num_steps, lambda t: math.cos((t + s) / (1 + s) * math.pi / 2) ** 2, self.max_beta)
