"""The public plugin SDK (``diffret_cli.sdk``): complete, a plain re-export, and light.

Complete means a plugin like any built-in one can be written with it alone: every
diffret class a built-in plugin derives from is exported. Plain re-export means each
name is the object of the module that defines it (no copies, no wrappers).
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

import diffret_cli.sdk as sdk
from diffret_cli.registry import Registry

KINDS_WITH_BASES = ("datasets", "encoders", "denoisers", "samplers", "schedules")


def test_all_lists_each_public_name_once_and_nothing_else():
    assert len(sdk.__all__) == len(set(sdk.__all__))
    missing = [n for n in sdk.__all__ if not hasattr(sdk, n)]
    assert not missing, missing
    star: dict = {}
    exec("from diffret_cli.sdk import *", star)  # noqa: S102 - what a plugin author would do
    assert sorted(k for k in star if k != "__builtins__") == sorted(sdk.__all__)


def test_names_are_the_defining_modules_objects():
    """Re-exports, not definitions: each class and function lives in its own module."""
    for name in sdk.__all__:
        obj = getattr(sdk, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__module__ != "diffret_cli.sdk", name
            assert getattr(sys.modules[obj.__module__], obj.__name__) is obj, name


def test_every_diffret_base_of_a_builtin_plugin_is_exported():
    """A third party can subclass whatever the built-ins subclass."""
    exported = {id(getattr(sdk, n)) for n in sdk.__all__}
    reg = Registry()
    checked = 0
    for kind in KINDS_WITH_BASES:
        for entry in reg.entries(kind):
            if not entry.builtin:
                continue
            cls = reg.get(kind, entry.name)
            for base in cls.__mro__[1:]:
                if base.__module__.startswith("diffret_cli.") and id(base) not in exported:
                    raise AssertionError(f"{kind} plugin {entry.name!r} derives from {base.__module__}."
                                         f"{base.__qualname__}, which diffret_cli.sdk does not export")
            checked += 1
    assert checked >= 10, checked


def test_sdk_exports_one_base_per_plugin_kind_and_the_errors():
    assert issubclass(sdk.FullSampler, sdk.Sampler) and issubclass(sdk.AnnotatedDataset, sdk.DatasetPlugin)
    for base in (sdk.Encoder, sdk.Denoiser, sdk.NoiseSchedule, sdk.Sampler, sdk.DatasetPlugin):
        assert issubclass(base, sdk.ConfigurablePlugin) and base.example_args() is None
    for err in (sdk.PluginError, sdk.ConfigError, sdk.CheckpointError, sdk.AnnotationError, sdk.DecodeError,
                sdk.OfflineError):
        assert issubclass(err, sdk.DiffretError)


def test_layers_import_nothing_above_them():
    """data -> model/plugins -> training/eval -> API -> CLI, in a fresh interpreter: the
    dataset plugin interface and readers load without the model layer (or torch), and the
    SDK loads no plugin, no CLI and no open_clip."""
    probe = ("import json, sys\n"
             "def loaded(*prefixes): return sorted(m for m in sys.modules if m.startswith(prefixes))\n"
             "import diffret_cli.data.plugin, diffret_cli.data.readers\n"
             "data = loaded('diffret_cli.interfaces', 'diffret_cli.sdk', 'torch')\n"
             "import diffret_cli.sdk\n"
             "print(json.dumps([data, loaded('diffret_plugins', 'diffret_cli.cli', 'click', 'open_clip')]))\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    above_data, above_sdk = json.loads(proc.stdout)
    assert above_data == [] and above_sdk == []
