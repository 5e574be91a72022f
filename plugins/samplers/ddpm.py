"""Ancestral DDPM sampler (Ho et al. 2020) with the "fixed small" posterior variance."""

from __future__ import annotations

import torch

from diffret_cli.sdk import FullSampler, extract


class DDPMSampler(FullSampler):
    """x_{t-1} = mu~(x0_hat, x_t) + exp(log sigma~_t^2 / 2) z, z = 0 at t = 0 (Ho et al. Eq. 6-7),
    with x0_hat = clamp(model(x_t, t), -1, 1)."""

    def config(self) -> dict:
        return self.base_config()

    @classmethod
    def example_args(cls) -> list[dict]:
        # the full chain, and a respaced one on the linear schedule with an eps-model
        return [{"num_steps": 50},
                {"schedule": "linear", "num_steps": 100, "sample_steps": 10, "prediction": "eps"}]

    def update(self, x, x0, t, *, last, generator, state):
        mean = self.coef.q_posterior_mean(x0, x, t)
        if last:
            return mean
        std = torch.exp(0.5 * extract(self.coef.posterior_log_variance_clipped, t, x.dim()))
        return mean + std * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
