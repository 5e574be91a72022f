"""DDIM sampler (Song et al. 2021), as DiffusionRet runs it at inference."""

from __future__ import annotations

import numpy as np
import torch

from diffret_cli.sdk import FullSampler, uniform_step


class DDIMSampler(FullSampler):
    """Deterministic for ``eta = 0`` (the official setting): the only randomness is x_T.

    One step, with abar = alpha_bar_t and abar' = alpha_bar_{t-1} (Song et al. Eq. 12):

    1. x0_hat = clamp(model(x_t, t), -1, 1)
    2. eps_hat = (sqrt(1/abar) x_t - x0_hat) / sqrt(1/abar - 1)
    3. sigma = eta sqrt((1 - abar') / (1 - abar)) sqrt(1 - abar / abar')
    4. x_{t-1} = sqrt(abar') x0_hat + sqrt(1 - abar' - sigma^2) eps_hat + sigma z   (z = 0 at t = 0)

    At t = 0, abar' = 1, so the sample is the last clamped x0_hat.

    Steps 2 and 4 are linear in x_t and x0_hat with coefficients that depend on the step
    only: x_{t-1} = a_t x0_hat + b_t x_t + sigma_t z, with
    b_t = sqrt(1 - abar' - sigma^2) sqrt(1/abar) / sqrt(1/abar - 1) and
    a_t = sqrt(abar') - sqrt(1 - abar' - sigma^2) / sqrt(1/abar - 1), computed once in
    float64 (a chain of 50 steps would otherwise spend as long on these few [B,K] scalars
    as on the denoiser's step).
    """

    def __init__(self, *, eta: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.eta = float(eta)
        c = self.coef
        ab, ab_prev = c.alphas_cumprod, c.alphas_cumprod_prev
        sigma = self.eta * np.sqrt((1 - ab_prev) / (1 - ab)) * np.sqrt(1 - ab / ab_prev)
        to_eps = np.sqrt(1 - ab_prev - sigma ** 2)  # the coefficient of eps_hat
        self._step_coefficients = np.stack([
            np.sqrt(ab_prev) - to_eps / c.sqrt_recipm1_alphas_cumprod,  # a_t (x0_hat)
            to_eps * c.sqrt_recip_alphas_cumprod / c.sqrt_recipm1_alphas_cumprod,  # b_t (x_t)
            sigma,  # sigma_t (z)
        ], axis=1)  # [steps, 3]
        self._tables: dict = {}

    def config(self) -> dict:
        return {**self.base_config(), "eta": self.eta}

    @classmethod
    def example_args(cls) -> list[dict]:
        # the official setting, a respaced stochastic chain on the linear schedule, and
        # an eps-model without clamping
        return [{"num_steps": 50},
                {"schedule": "linear", "num_steps": 100, "sample_steps": 10, "eta": 1.0},
                {"num_steps": 20, "prediction": "eps", "clip_denoised": False}]

    def _coefficients(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """[B,3,1,...]: (a_t, b_t, sigma_t) per row, in ``like``'s dtype and device."""
        key = (like.device, like.dtype)
        table = self._tables.get(key)
        if table is None:
            table = self._tables[key] = torch.from_numpy(self._step_coefficients).to(like.device, like.dtype)
        return torch.index_select(table, 0, t).view(t.shape[0], 3, *([1] * (like.dim() - 1)))

    def update(self, x, x0, t, *, last, generator, state):
        s = uniform_step(t)
        if s is not None and 0 <= s < len(self._step_coefficients):
            # one step for the whole chain: its coefficients as Python floats
            a_t, b_t, sigma_t = (float(v) for v in self._step_coefficients[s])
            out = torch.add(x0 * a_t, x, alpha=b_t)
        else:  # a step per row (an index outside the chain fails there, as it should)
            coef = self._coefficients(t, x)
            a_t, b_t, sigma_t = coef[:, 0], coef[:, 1], coef[:, 2]
            out = torch.addcmul(x0 * a_t, x, b_t)
        if self.eta > 0 and not last:
            out = out + sigma_t * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return out
