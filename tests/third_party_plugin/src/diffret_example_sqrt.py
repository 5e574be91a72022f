"""The "sqrt" noise schedule of Diffusion-LM (Li et al. 2022, section 4.2).

alpha_bar(t) = 1 - sqrt(t/T + s), s = 1e-4: noise rises fast in the first steps and
slowly later, which the authors found better for discrete-ish targets (text). The betas
discretise alpha_bar (beta_i = 1 - alpha_bar((i+1)/T) / alpha_bar(i/T)), capped at
``max_beta`` as for the cosine schedule.
"""

from __future__ import annotations

import math

import numpy as np

from diffret_cli.sdk import NoiseSchedule


class SqrtSchedule(NoiseSchedule):
    def __init__(self, *, num_steps: int = 50, beta_scale: float = 1.0, offset: float = 1e-4,
                 max_beta: float = 0.999):
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        if beta_scale != 1.0:  # samplers pass it to every schedule; sqrt has none
            raise ValueError(f"the sqrt schedule has no beta scale; got beta_scale={beta_scale}, use 1.0")
        self.num_steps = int(num_steps)
        self.beta_scale = float(beta_scale)
        self.offset = float(offset)
        self.max_beta = float(max_beta)

    def config(self) -> dict:
        return {"num_steps": self.num_steps, "beta_scale": self.beta_scale, "offset": self.offset,
                "max_beta": self.max_beta}

    @classmethod
    def example_args(cls) -> list[dict]:
        # Diffusion-LM's setting, and a lower cap (it binds at the noisiest steps)
        return [{}, {"max_beta": 0.9}]

    def alpha_bar(self, u: float) -> float:
        """alpha_bar at continuous time u in [0, 1]."""
        return 1.0 - math.sqrt(u + self.offset)

    def betas(self) -> np.ndarray:
        n = self.num_steps
        out = [min(1.0 - self.alpha_bar((i + 1) / n) / self.alpha_bar(i / n), self.max_beta) for i in range(n)]
        return np.array(out, dtype=np.float64)
