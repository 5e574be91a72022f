"""User-facing errors.

Every error diffret raises on bad input is a :class:`DiffretError`: it names what was
wrong (the file, the item, the value) and says what to do next. The CLI prints these
without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class DiffretError(Exception):
    """An error caused by input or environment, with a hint for the user."""

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:  # the hint travels with the message everywhere
        if self.hint:
            return f"{self.message}\n  fix: {self.hint}"
        return self.message


class PluginError(DiffretError):
    """A plugin could not be found, loaded or configured."""


class ConfigError(DiffretError):
    """A recipe, override or checkpoint config is invalid."""


class CheckpointError(DiffretError):
    """A checkpoint is missing, incomplete or does not match the model."""


class AnnotationError(DiffretError):
    """An annotation file is malformed (names the file, line or key, and what was expected)."""


class DecodeError(DiffretError):
    """A video could not be decoded."""


class OfflineError(DiffretError):
    """Something needed the network and the network is not reachable."""
