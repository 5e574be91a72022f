"""The machinery of full (noise-to-sample) samplers: schedule, respacing, the reverse chain.

A new sampler that starts from Gaussian noise subclasses :class:`FullSampler` and writes
one method, :meth:`FullSampler.update` (x_{t-1} from x_t and the model's x0 at t); the
built-in ``ddpm`` and ``ddim`` and the example ``dpm-2m`` in ``tests/third_party_plugin``
do exactly that. Third parties import it from :mod:`diffret_cli.sdk`.

Respacing follows guided-diffusion (Nichol & Dhariwal 2021, section 4): a chain over a
subset S of the training steps keeps alpha_bar at the steps it uses and re-derives
beta_i = 1 - alpha_bar_{S_i} / alpha_bar_{S_{i-1}}; the model still sees the original
step index. A one-step chain uses the last training step T-1 (guided-diffusion's
respacing would take step 0, pairing pure noise x_T with the step of almost clean data):
its sample is the clamped x0 of one model call at t = T-1 (DDIM, Song et al. Eq. 12
with alpha_bar_{t-1} = 1).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from diffret_cli.diffusion import DiffusionCoefficients
from diffret_cli.errors import ConfigError
from diffret_cli.interfaces import ModelFn, SampleResult, Sampler
from diffret_cli.registry import create


def space_timesteps(num_steps: int, sample_steps: int) -> list[int]:
    """Evenly spaced subset of ``range(num_steps)`` with ``sample_steps`` entries, first
    and last included (guided-diffusion's respacing with one section); one step is the
    last step, ``[num_steps - 1]``, where the chain starts from pure noise."""
    if not 1 <= sample_steps <= num_steps:
        raise ValueError(f"sample_steps must be in [1, {num_steps}], got {sample_steps}")
    if sample_steps == num_steps:
        return list(range(num_steps))
    if sample_steps == 1:
        return [num_steps - 1]
    stride = (num_steps - 1) / (sample_steps - 1)
    return sorted({round(i * stride) for i in range(sample_steps)})


def respaced_coefficients(raw_betas: np.ndarray, use: list[int]) -> DiffusionCoefficients:
    """Coefficients of the diffusion restricted to the steps ``use`` (same alpha_bar there)."""
    acp = np.cumprod(1.0 - np.asarray(raw_betas, dtype=np.float64))
    betas, last = [], 1.0
    for i in use:
        betas.append(1 - acp[i] / last)
        last = acp[i]
    return DiffusionCoefficients.from_betas(np.array(betas))


class FullSampler(Sampler):
    """Starts from x_T ~ N(0, I); the model predicts x0 (DiffusionRet) or eps.

    ``schedule`` names a registered noise schedule built with ``num_steps`` and
    ``beta_scale``; ``sample_steps`` (default: all) respaces the chain; the x0
    prediction is clamped to ``[-clip_range, clip_range]`` when ``clip_denoised``.
    Respaced coefficients are in ``self.coef`` (indexed by the respaced step) and the
    original step of each respaced one in ``self.timestep_map``.
    """

    truncated = False

    def __init__(self, *, schedule: str = "cosine", num_steps: int = 50, beta_scale: float = 1.0,
                 sample_steps: int | None = None, clip_denoised: bool = True,
                 clip_range: float = 1.0, prediction: str = "x0"):
        if prediction not in ("x0", "eps"):
            raise ValueError(f"prediction must be 'x0' or 'eps', got {prediction!r}")
        self.schedule = schedule
        self.num_steps = int(num_steps)
        self.beta_scale = float(beta_scale)
        self.sample_steps = self.num_steps if sample_steps is None else int(sample_steps)
        if self.num_steps < 1:
            raise ConfigError(f"num_steps={num_steps} is not allowed: a noise schedule needs at least 1 step",
                              hint="set model.schedule.args.num_steps to an integer >= 1 (DiffusionRet: 50)")
        if not 1 <= self.sample_steps <= self.num_steps:
            raise ConfigError(f"sample_steps={sample_steps} is outside the allowed range 1..{self.num_steps} "
                              f"(the {self.num_steps} steps of the model's {schedule} schedule)",
                              hint=f"pass --steps between 1 and {self.num_steps} (recipe: eval.steps or "
                              "model.sampler.args.sample_steps); fewer steps are faster, "
                              f"{self.num_steps} runs the whole chain")
        self.clip_denoised = bool(clip_denoised)
        self.clip_range = float(clip_range)
        self.prediction = prediction
        raw = create("schedules", schedule, num_steps=self.num_steps, beta_scale=self.beta_scale).betas()
        self.timestep_map = space_timesteps(self.num_steps, self.sample_steps)
        self.coef = respaced_coefficients(raw, self.timestep_map)

    def base_config(self) -> dict[str, Any]:
        """The arguments of :class:`FullSampler` itself (a subclass adds its own)."""
        return {"schedule": self.schedule, "num_steps": self.num_steps,
                "beta_scale": self.beta_scale, "sample_steps": self.sample_steps,
                "clip_denoised": self.clip_denoised, "clip_range": self.clip_range,
                "prediction": self.prediction}

    def timesteps(self) -> list[int]:
        return list(reversed(self.timestep_map))

    def start(self, *, shape, anchor=None, generator=None, device=None, dtype=torch.float32):
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)

    def predict_x0(self, model_fn: ModelFn, x: torch.Tensor, i: int
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(respaced step tensor t [B], raw model output, processed x0) at respaced step ``i``:
        x0 is the output itself or, for an eps-model, sqrt(1/abar) x_t - sqrt(1/abar - 1) eps
        (Ho et al. Eq. 4 inverted), then clamped if ``clip_denoised``.

        Every row of a chain is at the same step, so both step tensors are one element
        expanded to B rows (stride 0): :func:`~diffret_cli.interfaces.uniform_step` reads
        the step from them without a gather. They are read-only (a write to one row would
        change every row); a model that needs to modify ``t`` clones it."""
        b = x.shape[0]
        t = torch.full((1,), i, dtype=torch.long, device=x.device).expand(b)
        # the model sees original indices
        model_t = torch.full((1,), self.timestep_map[i], dtype=torch.long, device=x.device).expand(b)
        out = model_fn(x, model_t)
        x0 = out if self.prediction == "x0" else self.coef.predict_x0_from_eps(x, t, out)
        if self.clip_denoised:
            x0 = x0.clamp(-self.clip_range, self.clip_range)
        return t, out, x0

    @torch.no_grad()
    def sample(self, model_fn, x_start, *, generator=None, record=False) -> SampleResult:
        """The reverse chain: at each step ask the model for x0, then :meth:`update`.

        ``state`` is a fresh dict for this chain, passed to every ``update``: a sampler
        that carries something from step to step keeps it there, not on ``self``.
        """
        x = x_start
        traj = [] if record else None
        state: dict[str, Any] = {}
        for i in reversed(range(len(self.timestep_map))):
            t, out, x0 = self.predict_x0(model_fn, x, i)
            if traj is not None:
                traj.append({"x_t": x, "t": t, "model_output": out, "pred_x0": x0})
            x = self.update(x, x0, t, last=(i == 0), generator=generator, state=state)
        return SampleResult(sample=x, trajectory=traj)

    def update(self, x: torch.Tensor, x0: torch.Tensor, t: torch.Tensor, *, last: bool,
               generator: torch.Generator | None, state: dict[str, Any]) -> torch.Tensor:
        """x_{t-1} from x_t and the (processed) x0 prediction at respaced step ``t`` [B].

        ``last`` is True at the final step (t = 0); ``generator`` draws any noise;
        ``state`` is this chain's own dict (empty at its first step).
        """
        raise NotImplementedError
