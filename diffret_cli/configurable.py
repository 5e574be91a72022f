"""What every plugin class shares, whatever its kind and layer.

A plugin takes keyword-only constructor arguments and returns them from ``config()``,
so ``type(p)(**p.config())`` rebuilds it (checkpoints store the config as JSON). It may
also say how to build a small instance of itself for the contract tests
(:meth:`ConfigurablePlugin.example_args`), so that a new plugin, built in or third
party, is tested without editing diffret's tests.

This module sits below both the data layer (dataset plugins) and the model layer
(encoders, denoisers, schedules, samplers); it imports nothing from diffret.
"""

from __future__ import annotations

from typing import Any


class ConfigurablePlugin:
    """Keyword-only constructor arguments round-trip through ``config()``."""

    def config(self) -> dict[str, Any]:  # pragma: no cover - every plugin overrides
        raise NotImplementedError

    @classmethod
    def example_args(cls) -> list[dict[str, Any]] | None:
        """Constructor arguments of small instances for the contract tests, or None.

        Each dict builds one instance (``cls(**args)``) that must be cheap (well under a
        second on one CPU thread), offline (no downloads, no files) and deterministic;
        ``tests/test_contracts.py`` runs the contract of the plugin's kind on each one.
        None (the default) means the default constructor, ``cls()``.
        """
        return None
