"""DPM-Solver++(2M): a second-order multistep ODE sampler (Lu et al. 2022, Algorithm 2).

Why: DDIM (eta = 0) is the first-order solver of the diffusion probability-flow ODE; a
second-order multistep solver reuses the previous x0 prediction to be more accurate at
the same number of model calls, so fewer steps suffice.

Notation (per step, from level s to the next, less noisy level t): alpha = sqrt(abar),
sigma = sqrt(1 - abar), lambda = log(alpha / sigma), h = lambda_t - lambda_s.

1. x0_s = clamp(model(x_s, s))                       (or from eps, for eps-models)
2. D = x0_s on the first step; otherwise, with r = h_prev / h,
   D = (1 + 1/(2r)) x0_s - 1/(2r) x0_prev            (Eq. 3.3 of DPM-Solver++)
3. x_t = (sigma_t / sigma_s) x_s - alpha_t (exp(-h) - 1) D
At the last step (abar_t = 1) the sample is x0_s, as for DDIM. With D = x0_s throughout
this is exactly DDIM.
"""

from __future__ import annotations

import math

from diffret_cli.sdk import FullSampler


class DPMSolver2MSampler(FullSampler):
    """Deterministic: the only randomness is x_T. Options as for ``ddim`` (schedule,
    num_steps, sample_steps, clip_denoised, clip_range, prediction)."""

    def config(self) -> dict:
        return self.base_config()

    @classmethod
    def example_args(cls) -> list[dict]:
        # what diffret's contract tests build this sampler with: on this package's own
        # schedule, respaced, and on a built-in one as an eps-model
        return [{"schedule": "sqrt", "num_steps": 50, "sample_steps": 10},
                {"schedule": "cosine", "num_steps": 20, "prediction": "eps", "clip_denoised": False}]

    def update(self, x, x0, t, *, last, generator, state):
        # ``state`` is this chain's own dict (fresh for every ``sample`` call): the
        # multistep memory (previous x0 and step size) lives there, not on ``self``
        i = int(t[0])
        ab_s = float(self.coef.alphas_cumprod[i])
        ab_t = float(self.coef.alphas_cumprod_prev[i])
        if ab_t >= 1.0:  # the clean end: sigma_t = 0
            return x0
        lam_s = 0.5 * math.log(ab_s / (1.0 - ab_s))
        lam_t = 0.5 * math.log(ab_t / (1.0 - ab_t))
        h = lam_t - lam_s
        if "x0_prev" not in state:
            d = x0
        else:
            r = state["h_prev"] / h
            d = (1.0 + 0.5 / r) * x0 - (0.5 / r) * state["x0_prev"]
        state["x0_prev"], state["h_prev"] = x0, h
        return math.sqrt((1.0 - ab_t) / (1.0 - ab_s)) * x - math.sqrt(ab_t) * math.expm1(-h) * d
