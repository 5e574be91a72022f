"""Plugin registry over Python entry points.

Seven entry-point groups, one per plugin kind::

    diffret.datasets  diffret.encoders  diffret.denoisers  diffret.samplers
    diffret.schedules diffret.recipes   diffret.families

(``families``: model families such as DiffusionRet and DITS, each naming its stages.)

Built-in plugins register through the same groups a third party uses (see
``pyproject.toml``). Names are read from distribution metadata without importing
anything; a plugin is imported the first time it is used. Rules:

- a name registered by two distributions is an error that names both;
- a plugin that fails to import is reported with its error and distribution, and never
  breaks the CLI or other plugins;
- an unknown name lists the available names;
- ``DIFFRET_DISABLE_PLUGIN_AUTOLOAD=1`` loads only plugins shipped with diffret itself;
  ``DIFFRET_BLOCK_PLUGINS=kind:name,...`` hides chosen plugins.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from diffret_cli.errors import PluginError

KINDS = ("datasets", "encoders", "denoisers", "samplers", "schedules", "recipes", "families")
#: one plugin of a kind, for messages ("no sampler plugin named ...")
SINGULAR = {"datasets": "dataset", "encoders": "encoder", "denoisers": "denoiser", "samplers": "sampler",
            "schedules": "schedule", "recipes": "recipe", "families": "family"}
GROUP_PREFIX = "diffret."
BUILTIN_DISTRIBUTION = "diffret"
PLURAL = {v: k for k, v in SINGULAR.items()}
AUTOLOAD_ENV = "DIFFRET_DISABLE_PLUGIN_AUTOLOAD"
BLOCK_ENV = "DIFFRET_BLOCK_PLUGINS"


@dataclass
class PluginEntry:
    """One registered plugin: where it comes from, and (once loaded) what it is."""

    kind: str
    name: str
    target: str  # "module:attr" as written in the entry point
    distribution: str
    version: str
    _entry_point: Any = field(default=None, repr=False)
    _loaded: Any = field(default=None, repr=False)
    error: str | None = None  # one-line import error, once a load failed

    @property
    def builtin(self) -> bool:
        return self.distribution == BUILTIN_DISTRIBUTION

    @property
    def status(self) -> str:
        if self.error:
            return "error"
        return "loaded" if self._loaded is not None else "available"

    def load(self) -> Any:
        if self._loaded is not None:
            return self._loaded
        try:
            obj = self._entry_point.load()
        except Exception as exc:  # noqa: BLE001 - any import failure is reported, not raised raw
            self.error = f"{type(exc).__name__}: {exc}"
            self._traceback = traceback.format_exc()
            raise PluginError(
                f"{SINGULAR[self.kind]} plugin {self.name!r} from distribution "
                f"{self.distribution} {self.version} failed to import ({self.target}): {self.error}",
                hint=f"reinstall or fix {self.distribution}, or block it with "
                f"{BLOCK_ENV}={self.kind}:{self.name}",
            ) from exc
        self._loaded = obj
        return obj


def _autoload_disabled() -> bool:
    return os.environ.get(AUTOLOAD_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _blocked() -> set[tuple[str, str]]:
    out = set()
    for item in os.environ.get(BLOCK_ENV, "").split(","):
        item = item.strip()
        if ":" in item:
            kind, name = item.split(":", 1)
            kind = PLURAL.get(kind.strip(), kind.strip())
            out.add((kind, name.strip()))
    return out


class Registry:
    """Discovers entry points once; imports plugins lazily."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, PluginEntry]] | None = None
        self.conflicts: list[str] = []
        self._extra: dict[str, dict[str, Any]] = {k: {} for k in KINDS}

    # discovery ---------------------------------------------------------------------
    def _discover(self) -> dict[str, dict[str, PluginEntry]]:
        if self._entries is not None:
            return self._entries
        entries: dict[str, dict[str, PluginEntry]] = {k: {} for k in KINDS}
        clashes: dict[tuple[str, str], list[PluginEntry]] = {}
        blocked = _blocked()
        builtin_only = _autoload_disabled()
        seen_dists: set[tuple[str, str]] = set()
        for dist in metadata.distributions():
            dist_name = dist.metadata["Name"] or "?"
            key = (dist_name.lower().replace("_", "-"), dist.version)
            if key in seen_dists:  # the same distribution found twice on sys.path
                continue
            seen_dists.add(key)
            if builtin_only and dist_name != BUILTIN_DISTRIBUTION:
                continue
            for ep in dist.entry_points:
                if not ep.group.startswith(GROUP_PREFIX):
                    continue
                kind = ep.group[len(GROUP_PREFIX):]
                if kind not in entries or (kind, ep.name) in blocked:
                    continue
                entry = PluginEntry(kind, ep.name, ep.value, dist_name, dist.version, ep)
                if ep.name in entries[kind]:
                    clashes.setdefault((kind, ep.name), [entries[kind][ep.name]]).append(entry)
                    continue
                entries[kind][ep.name] = entry
        self.conflicts = []
        for (kind, name), group in clashes.items():
            owners = ", ".join(f"{e.distribution} {e.version} ({e.target})" for e in group)
            self.conflicts.append(f"{SINGULAR[kind]} {name!r} is registered by {owners}")
            entries[kind][name].error = "name clash: " + owners
        self._entries = entries
        return entries

    def refresh(self) -> None:
        self._entries = None

    # in-process registration (tests, notebooks) --------------------------------------
    def register(self, kind: str, name: str, obj: Any) -> None:
        """Register an object directly (no distribution). Clashes are errors too."""
        self._check_kind(kind)
        if name in self._discover()[kind] or name in self._extra[kind]:
            raise PluginError(f"{SINGULAR[kind]} {name!r} is already registered",
                              hint="choose another name or unregister the first one")
        self._extra[kind][name] = obj

    def unregister(self, kind: str, name: str) -> None:
        self._extra[kind].pop(name, None)

    # lookup --------------------------------------------------------------------------
    def _check_kind(self, kind: str) -> None:
        if kind not in KINDS:
            raise PluginError(f"unknown plugin kind {kind!r}", hint=f"use one of: {', '.join(KINDS)}")

    def names(self, kind: str) -> list[str]:
        self._check_kind(kind)
        return sorted(set(self._discover()[kind]) | set(self._extra[kind]))

    def entries(self, kind: str | None = None) -> list[PluginEntry]:
        kinds = [kind] if kind else list(KINDS)
        out = []
        for k in kinds:
            out.extend(self._discover()[k][n] for n in sorted(self._discover()[k]))
            out.extend(PluginEntry(k, n, repr(o), "(in-process)", "-", _loaded=o)
                       for n, o in sorted(self._extra[k].items()))
        return out

    def get(self, kind: str, name: str) -> Any:
        """Return the plugin object (class, or for recipes a module/package) named ``name``."""
        self._check_kind(kind)
        if name in self._extra[kind]:
            return self._extra[kind][name]
        entries = self._discover()[kind]
        if name not in entries:
            available = ", ".join(self.names(kind)) or "(none)"
            raise PluginError(
                f"no {SINGULAR[kind]} plugin named {name!r}; available: {available}",
                hint="check the spelling, or install the package that provides it "
                "(`diffret plugins list` shows what is installed)",
            )
        entry = entries[name]
        if entry.error and entry.error.startswith("name clash"):
            raise PluginError(f"{SINGULAR[kind]} {name!r}: {entry.error}",
                              hint="uninstall one of the distributions, or block one with "
                              f"{BLOCK_ENV}={kind}:{name}")
        return entry.load()

    def create(self, kind: str, name: str, **kwargs: Any) -> Any:
        cls = self.get(kind, name)
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise PluginError(f"{SINGULAR[kind]} {name!r} rejected its arguments {sorted(kwargs)}: {exc}",
                              hint="see `diffret plugins show` or the plugin's docs for its options") from exc


_REGISTRY: Registry | None = None


def registry() -> Registry:
    """The process-wide registry (discovery happens on first use, not at import)."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = Registry()
    return _REGISTRY


def get(kind: str, name: str) -> Any:
    return registry().get(kind, name)


def create(kind: str, name: str, **kwargs: Any) -> Any:
    return registry().create(kind, name, **kwargs)


def plugin_version(kind: str, name: str) -> str:
    for e in registry().entries(kind):
        if e.name == name:
            return e.version
    return "-"
