"""Linear noise schedule (Ho et al. 2020), rescaled to the number of steps."""

from __future__ import annotations

import numpy as np

from diffret_cli.sdk import NoiseSchedule


class LinearSchedule(NoiseSchedule):
    """beta from 1e-4 to 0.02 at T = 1000, scaled by ``beta_scale * 1000 / T`` so that a
    shorter schedule reaches the same total noise (the official ``scale_betas``)."""

    def __init__(self, *, num_steps: int = 50, beta_scale: float = 1.0,
                 beta_start: float = 1e-4, beta_end: float = 0.02):
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        self.num_steps = int(num_steps)
        self.beta_scale = float(beta_scale)
        self.beta_start = float(beta_start)
        self.beta_end = float(beta_end)
        top = self.beta_scale * 1000 / self.num_steps * self.beta_end
        if not 0 < top < 1:
            # the rescaling keeps the total noise of a 1000-step schedule; with too few
            # steps that needs beta >= 1, which is no diffusion at all
            fewest = int(self.beta_scale * 1000 * self.beta_end) + 1
            raise ValueError(f"the linear schedule with num_steps={self.num_steps} and beta_scale="
                             f"{self.beta_scale} needs beta_T = {top:.3g} >= 1; use num_steps >= {fewest} "
                             "or the cosine schedule")

    def config(self) -> dict:
        return {"num_steps": self.num_steps, "beta_scale": self.beta_scale,
                "beta_start": self.beta_start, "beta_end": self.beta_end}

    @classmethod
    def example_args(cls) -> list[dict]:
        # the official scale, and half the total noise
        return [{}, {"beta_scale": 0.5}]

    def betas(self) -> np.ndarray:
        scale = self.beta_scale * 1000 / self.num_steps
        return np.linspace(scale * self.beta_start, scale * self.beta_end, self.num_steps,
                           dtype=np.float64)
