"""Ancestral DDPM sampler (Ho et al. 2020) with the "fixed small" posterior variance."""

from __future__ import annotations

import torch

from diffret_cli.diffusion import extract
from diffret_cli.interfaces import SampleResult
from diffret_plugins.samplers.base import FullSampler


class DDPMSampler(FullSampler):
    """x_{t-1} = mu~(x0_hat, x_t) + exp(log sigma~_t^2 / 2) z, z = 0 at t = 0 (Ho et al. Eq. 6-7),
    with x0_hat = clamp(model(x_t, t), -1, 1)."""

    def config(self) -> dict:
        return self.base_config()

    @torch.no_grad()
    def sample(self, model_fn, x_start, *, generator=None, record=False) -> SampleResult:
        x = x_start
        traj = [] if record else None
        c = self.coef
        for i in reversed(range(len(self.timestep_map))):
            t, out, x0 = self._x0(model_fn, x, i)
            self._record(traj, x, t, out, x0)
            mean = c.q_posterior_mean(x0, x, t)
            if i > 0:
                std = torch.exp(0.5 * extract(c.posterior_log_variance_clipped, t, x.dim()))
                x = mean + std * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            else:
                x = mean
        return SampleResult(sample=x, trajectory=traj)
