"""DITS: the diffusion-inspired truncated sampler (Wang et al., NeurIPS 2024).

Instead of generating a sample from Gaussian noise, DITS starts at the text embedding
and moves it, in T' steps, toward its video embedding; the accumulated steps model the
modality gap. Notation map (paper -> code)::

    T          num_steps        length of the linear beta schedule (paper: 10)
    T'         sample_steps     truncated steps actually taken (paper: 10; DiDeMo 5)
    beta_k     betas[k-1]       linear from beta_start (0.1) to beta_end (0.99)
    alpha_k    1 - beta_k       alpha_bar_k = prod_{s<=k} alpha_s
    chi_k      chi[k-1]         (1 - alpha_k) / sqrt(alpha_k - alpha_k alpha_bar_k)
    lambda_k   lam[k-1]         sqrt(beta_k)
    eps        model_fn         the step network: eps(v_k, k)

One step k = T'..1 (no 1/sqrt(alpha_k) rescale of v_k, unlike DDPM)::

    v_{k-1} = v_k - chi_k eps(v_k, k) + lambda_k z,   z ~ N(0, I) for k > 1, else 0

starting from v_{T'} = t, the text embedding (the *anchor*). The model is called with the
0-based index k - 1, like the other samplers.

Points the paper leaves open, each an option with a documented default:

- ``truncation`` (how the schedule is cut when T' != T): ``"linspace"`` (default) builds
  the linear schedule over T' steps, so T' = T is the paper's chain and any T' >= 0 is
  valid; ``"prefix"`` takes the first T' steps of the T-step schedule (needs T' <= T).
- ``noise`` (the lambda_k z term): off by default. Taken literally, lambda_k z in 512
  dimensions has norm about sqrt(512 beta_k), far larger than the step it perturbs, so the
  deterministic chain (z = 0) is the safe default; ``noise=True`` turns it on, scaled by
  ``noise_scale``.

``sample`` keeps the autograd graph (it is not wrapped in ``no_grad``): DITS trains through
every unrolled step. Callers that only evaluate wrap it in ``torch.no_grad()`` themselves.
"""

from __future__ import annotations

import numpy as np
import torch

from diffret_cli.sdk import SampleResult, Sampler

TRUNCATIONS = ("linspace", "prefix")


def dits_betas(beta_start: float, beta_end: float, num_steps: int) -> np.ndarray:
    """The linear schedule beta_1..beta_T (float64). T = 1 gives [beta_start]."""
    if num_steps == 1:
        return np.array([beta_start], dtype=np.float64)
    return np.linspace(beta_start, beta_end, num_steps, dtype=np.float64)


def dits_coefficients(betas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(chi, lambda) per step k = 1..len(betas), float64 (DITS step equation)."""
    alphas = 1.0 - betas
    alpha_bar = np.cumprod(alphas)
    chi = (1.0 - alphas) / np.sqrt(alphas - alphas * alpha_bar)
    return chi, np.sqrt(betas)


class DITSSampler(Sampler):
    """Truncated flow from the anchor (text embedding) toward the video embedding."""

    prediction = "eps"
    truncated = True

    def __init__(self, *, num_steps: int = 10, sample_steps: int | None = None, beta_start: float = 0.1,
                 beta_end: float = 0.99, truncation: str = "linspace", noise: bool = False,
                 noise_scale: float = 1.0):
        self.num_steps = int(num_steps)
        self.sample_steps = self.num_steps if sample_steps is None else int(sample_steps)
        self.beta_start, self.beta_end = float(beta_start), float(beta_end)
        self.truncation = truncation
        self.noise, self.noise_scale = bool(noise), float(noise_scale)
        if self.num_steps < 1:
            raise ValueError(f"num_steps (T) must be >= 1, got {num_steps}")
        if self.sample_steps < 0:
            raise ValueError(f"sample_steps (T') must be >= 0, got {sample_steps}")
        if not 0.0 < self.beta_start <= self.beta_end < 1.0:
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got beta_start={beta_start}, "
                             f"beta_end={beta_end} (the paper: 0.1 and 0.99)")
        if truncation not in TRUNCATIONS:
            raise ValueError(f"truncation must be one of {', '.join(TRUNCATIONS)}, got {truncation!r}")
        if truncation == "prefix" and self.sample_steps > self.num_steps:
            raise ValueError(f"truncation='prefix' takes the first T' steps of the T-step schedule, so "
                             f"sample_steps ({self.sample_steps}) must be <= num_steps ({self.num_steps}); "
                             "use truncation='linspace' for longer chains")
        if self.sample_steps == 0:
            betas = np.zeros(0)
        elif truncation == "linspace":
            betas = dits_betas(self.beta_start, self.beta_end, self.sample_steps)
        else:
            betas = dits_betas(self.beta_start, self.beta_end, self.num_steps)[: self.sample_steps]
        self.betas = betas
        self.chi, self.lam = dits_coefficients(betas) if len(betas) else (np.zeros(0), np.zeros(0))

    def config(self) -> dict:
        return {"num_steps": self.num_steps, "sample_steps": self.sample_steps,
                "beta_start": self.beta_start, "beta_end": self.beta_end, "truncation": self.truncation,
                "noise": self.noise, "noise_scale": self.noise_scale}

    @classmethod
    def example_args(cls) -> list[dict]:
        # the paper's chain, a cut one, and the noisy one (seeded, so still deterministic)
        return [{}, {"sample_steps": 3, "truncation": "prefix"}, {"sample_steps": 4, "noise": True}]

    def timesteps(self) -> list[int]:
        return list(range(self.sample_steps - 1, -1, -1))

    def start(self, *, shape, anchor=None, generator=None, device=None, dtype=torch.float32):
        if anchor is None:
            raise ValueError("the DITS sampler starts from an anchor (the text embedding) and got none; "
                             "pass anchor= (a denoiser's DenoiserContext.anchor)")
        if tuple(anchor.shape) != tuple(shape):
            raise ValueError(f"anchor shape {tuple(anchor.shape)} != requested state shape {tuple(shape)}")
        return anchor.to(device=device if device is not None else anchor.device, dtype=dtype)

    def sample(self, model_fn, x_start, *, generator=None, record=False) -> SampleResult:
        v = x_start
        traj = [] if record else None
        for i in self.timesteps():  # i = k - 1
            t = torch.full((v.shape[0],), i, dtype=torch.long, device=v.device)
            eps = model_fn(v, t)
            if traj is not None:
                traj.append({"x_t": v, "t": t, "model_output": eps})
            v = v - float(self.chi[i]) * eps
            if self.noise and i > 0:  # z = 0 at the last step (k = 1)
                # drawn where the generator lives (a CPU generator may drive a CUDA chain)
                z = torch.randn(v.shape, generator=generator, dtype=v.dtype,
                                device=generator.device if generator is not None else v.device).to(v.device)
                v = v + self.noise_scale * float(self.lam[i]) * z
        return SampleResult(sample=v, trajectory=traj)
