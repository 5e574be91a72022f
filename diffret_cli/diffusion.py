"""Gaussian diffusion over a vector, as DiffusionRet's official code computes it.

All schedule arrays are float64 numpy (as in the guided-diffusion code the official
implementation builds on); a coefficient is indexed in float64 and cast to float32
(:func:`extract`) before it touches a tensor. Notation follows Ho et al. (2020):
``alpha_bar_t = prod_{s<=t} (1 - beta_s)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def extract(arr: np.ndarray, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """``arr[t]`` cast to float32 and shaped to broadcast against a tensor of ``ndim`` dims."""
    out = torch.from_numpy(arr).to(device=t.device)[t].float()
    return out.reshape(out.shape + (1,) * (ndim - out.dim()))


@dataclass(frozen=True)
class DiffusionCoefficients:
    """Everything derived from the betas of a schedule (float64, length T)."""

    betas: np.ndarray
    alphas_cumprod: np.ndarray
    alphas_cumprod_prev: np.ndarray
    sqrt_alphas_cumprod: np.ndarray
    sqrt_one_minus_alphas_cumprod: np.ndarray
    sqrt_recip_alphas_cumprod: np.ndarray
    sqrt_recipm1_alphas_cumprod: np.ndarray
    posterior_variance: np.ndarray
    posterior_log_variance_clipped: np.ndarray
    posterior_mean_coef1: np.ndarray
    posterior_mean_coef2: np.ndarray

    @property
    def num_steps(self) -> int:
        return len(self.betas)

    @classmethod
    def from_betas(cls, raw_betas: np.ndarray) -> "DiffusionCoefficients":
        raw_betas = np.asarray(raw_betas, dtype=np.float64)
        if raw_betas.ndim != 1 or not ((raw_betas > 0) & (raw_betas <= 1)).all():
            raise ValueError("betas must be a 1-D array in (0, 1]")
        # The official code wraps the diffusion in a "spaced" diffusion that keeps every
        # step and re-derives beta_t = 1 - abar_t / abar_{t-1}; reproduce that rounding.
        acp = np.cumprod(1.0 - raw_betas, axis=0)
        betas = []
        last = 1.0
        for a in acp:
            betas.append(1 - a / last)
            last = a
        betas = np.array(betas, dtype=np.float64)
        alphas = 1.0 - betas
        acp = np.cumprod(alphas, axis=0)
        acp_prev = np.append(1.0, acp[:-1])
        post_var = betas * (1.0 - acp_prev) / (1.0 - acp)
        return cls(
            betas=betas,
            alphas_cumprod=acp,
            alphas_cumprod_prev=acp_prev,
            sqrt_alphas_cumprod=np.sqrt(acp),
            sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - acp),
            sqrt_recip_alphas_cumprod=np.sqrt(1.0 / acp),
            sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / acp - 1),
            posterior_variance=post_var,
            # the posterior variance is 0 at t=0; clip the log by using step 1's value there
            # (a one-step chain has no step 1 and never adds noise: beta_0 keeps the log finite)
            posterior_log_variance_clipped=np.log(np.append(post_var[1] if len(post_var) > 1 else betas[0],
                                                            post_var[1:])),
            posterior_mean_coef1=betas * np.sqrt(acp_prev) / (1.0 - acp),
            posterior_mean_coef2=(1.0 - acp_prev) * np.sqrt(alphas) / (1.0 - acp),
        )

    # forward process -----------------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps  (Ho et al. Eq. 4)."""
        return (extract(self.sqrt_alphas_cumprod, t, x0.dim()) * x0
                + extract(self.sqrt_one_minus_alphas_cumprod, t, x0.dim()) * noise)

    # reverse-process helpers ---------------------------------------------------------
    def predict_eps_from_x0(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """eps = (sqrt(1/abar_t) x_t - x0) / sqrt(1/abar_t - 1)."""
        n = x_t.dim()
        return ((extract(self.sqrt_recip_alphas_cumprod, t, n) * x_t - x0)
                / extract(self.sqrt_recipm1_alphas_cumprod, t, n))

    def predict_x0_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        n = x_t.dim()
        return (extract(self.sqrt_recip_alphas_cumprod, t, n) * x_t
                - extract(self.sqrt_recipm1_alphas_cumprod, t, n) * eps)

    def q_posterior_mean(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Mean of q(x_{t-1} | x_t, x0) (Ho et al. Eq. 7)."""
        n = x_t.dim()
        return (extract(self.posterior_mean_coef1, t, n) * x0
                + extract(self.posterior_mean_coef2, t, n) * x_t)


def one_hot_target(batch: int, k: int, *, negative_value: float = 0.0, device=None) -> torch.Tensor:
    """DiffusionRet's x0: 1 for the positive (always index 0), ``negative_value`` elsewhere."""
    x0 = torch.full((batch, k), float(negative_value), device=device)
    x0[:, 0] = 1.0
    return x0
