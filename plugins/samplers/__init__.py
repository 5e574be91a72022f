"""Built-in samplers. ``FullSampler`` (schedule, respacing, x0/eps handling) is the base
to subclass for a new noise-to-sample sampler; see ``tests/third_party_plugin``."""

from diffret_plugins.samplers.base import FullSampler, respaced_coefficients, space_timesteps

__all__ = ["FullSampler", "respaced_coefficients", "space_timesteps"]
