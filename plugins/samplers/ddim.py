"""DDIM sampler (Song et al. 2021), as DiffusionRet runs it at inference."""

from __future__ import annotations

import torch

from diffret_cli.sdk import FullSampler, extract


class DDIMSampler(FullSampler):
    """Deterministic for ``eta = 0`` (the official setting): the only randomness is x_T.

    One step, with abar = alpha_bar_t and abar' = alpha_bar_{t-1} (Song et al. Eq. 12):

    1. x0_hat = clamp(model(x_t, t), -1, 1)
    2. eps_hat = (sqrt(1/abar) x_t - x0_hat) / sqrt(1/abar - 1)
    3. sigma = eta sqrt((1 - abar') / (1 - abar)) sqrt(1 - abar / abar')
    4. x_{t-1} = sqrt(abar') x0_hat + sqrt(1 - abar' - sigma^2) eps_hat + sigma z   (z = 0 at t = 0)

    At t = 0, abar' = 1, so the sample is the last clamped x0_hat.
    """

    def __init__(self, *, eta: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.eta = float(eta)

    def config(self) -> dict:
        return {**self.base_config(), "eta": self.eta}

    @classmethod
    def example_args(cls) -> list[dict]:
        # the official setting, a respaced stochastic chain on the linear schedule, and
        # an eps-model without clamping
        return [{"num_steps": 50},
                {"schedule": "linear", "num_steps": 100, "sample_steps": 10, "eta": 1.0},
                {"num_steps": 20, "prediction": "eps", "clip_denoised": False}]

    def update(self, x, x0, t, *, last, generator, state):
        c = self.coef
        eps = c.predict_eps_from_x0(x, t, x0)
        ab = extract(c.alphas_cumprod, t, x.dim())
        ab_prev = extract(c.alphas_cumprod_prev, t, x.dim())
        sigma = self.eta * torch.sqrt((1 - ab_prev) / (1 - ab)) * torch.sqrt(1 - ab / ab_prev)
        x = x0 * torch.sqrt(ab_prev) + torch.sqrt(1 - ab_prev - sigma ** 2) * eps
        if self.eta > 0 and not last:
            x = x + sigma * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return x
