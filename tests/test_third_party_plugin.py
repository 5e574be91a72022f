"""A third-party package adds a sampler and a schedule without touching diffret.

``tests/third_party_plugin`` is a real installable package (``diffret-example-plugin``)
that registers ``dpm-2m`` (DPM-Solver++(2M)) under ``diffret.samplers`` and ``sqrt``
(Diffusion-LM's schedule) under ``diffret.schedules``, importing nothing from diffret
but :mod:`diffret_cli.sdk`. The test pip-installs it into this interpreter's
environment, sees it in ``diffret plugins list`` with its distribution and version,
runs diffret's own contract tests on it with the example arguments it ships, samples
with it through the registry, and uninstalls it.
"""

from __future__ import annotations

import importlib
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import diffret_cli.registry as registry_mod

PACKAGE = Path(__file__).parent / "third_party_plugin"
DIST, VERSION = "diffret-example-plugin", "0.1.0"
MODULES = ("diffret_example_dpm", "diffret_example_sqrt")


def pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    # build from a copy, so the build leaves no build/ or egg-info in the source tree
    src = tmp_path_factory.mktemp("pkg") / "third_party_plugin"
    shutil.copytree(PACKAGE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    res = pip("install", "--no-deps", "--no-build-isolation", "--no-index", "--quiet", str(src))
    assert res.returncode == 0, f"pip install failed:\n{res.stdout}\n{res.stderr}"
    importlib.invalidate_caches()
    try:
        yield
    finally:
        res = pip("uninstall", "--yes", "--quiet", DIST)
        importlib.invalidate_caches()
        for mod in MODULES:
            sys.modules.pop(mod, None)
        assert res.returncode == 0, f"pip uninstall failed:\n{res.stderr}"


@pytest.fixture
def fresh_registry(monkeypatch):
    """The process-wide registry, rediscovered (restored afterwards)."""
    monkeypatch.setattr(registry_mod, "_REGISTRY", None)
    return registry_mod.registry()


def test_listed_by_diffret_plugins_list(installed):
    env = {**os.environ, "COLUMNS": "250"}
    res = subprocess.run([sys.executable, "-m", "diffret_cli.cli.main", "plugins", "list", "--load"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr
    rows = {line.split("│")[2].strip(): line for line in res.stdout.splitlines() if line.count("│") >= 5}
    for name in ("dpm-2m", "sqrt"):
        assert name in rows, res.stdout
        assert DIST in rows[name] and VERSION in rows[name] and "loaded" in rows[name], rows[name]
    assert "diffret " in rows["ddim"], "built-ins are still there, from diffret"


@pytest.mark.slow  # a second pytest process: about 5 s alone, more on a busy machine
def test_contract_tests_cover_the_plugin_with_its_example_args(installed):
    """``tests/test_contracts.py`` knows nothing of this package: it finds the plugins in
    the registry and builds one case per example the package ships (``example_args``:
    two each), and they pass."""
    contracts = Path(__file__).parent / "test_contracts.py"
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", str(contracts),
                          "-k", "dpm-2m or sqrt"], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).parent.parent)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    passed = {line.split("::", 1)[1] for line in res.stdout.splitlines() if line.startswith("PASSED ")}
    expected = {f"{test}[dpm-2m-ex{i}]" for i in (0, 1) for test in (
        "test_sampler_contract", "test_sampler_seeded_determinism_and_dtype", "test_sampler_config_round_trip")}
    expected |= {f"test_schedule_contract[{steps}-sqrt-ex{i}]" for i in (0, 1) for steps in (8, 50, 1000)}
    assert passed == expected, res.stdout[-4000:]


def test_sampling_with_the_plugin(installed, fresh_registry):
    """Used like a built-in: created by name, and better than DDIM as a 2nd-order solver.

    Toy problem with a known answer: data x0 ~ N(0, s^2 I) has the exact denoiser
    E[x0 | x_t] = sqrt(abar) s^2 / (abar s^2 + 1 - abar) x_t, and the probability-flow
    ODE maps x_T to x_t0 = x_T std(t0) / std(T), std(t)^2 = abar_t s^2 + 1 - abar_t.
    """
    reg = fresh_registry
    assert {"dpm-2m"} <= set(reg.names("samplers")) and {"sqrt"} <= set(reg.names("schedules"))
    s0 = 0.5
    errors = {}
    for name in ("dpm-2m", "ddim"):
        sampler = reg.create("samplers", name, schedule="sqrt", num_steps=50, sample_steps=10,
                             clip_denoised=False)
        c = sampler.coef

        def model(x, t, sampler=sampler, c=c):
            ab = float(c.alphas_cumprod[sampler.timestep_map.index(int(t[0]))])
            return math.sqrt(ab) * s0 ** 2 / (ab * s0 ** 2 + 1 - ab) * x

        g = torch.Generator().manual_seed(0)
        x_t = sampler.start(shape=(4, 8), generator=g)
        attrs = dict(vars(sampler))
        out = sampler.sample(model, x_t, generator=g, record=True)
        # the multistep memory lived in the chain's state dict: the sampler is unchanged,
        # and a second chain from the same start gives the same sample
        assert vars(sampler).keys() == attrs.keys() and all(vars(sampler)[k] is v for k, v in attrs.items())
        assert torch.equal(sampler.sample(model, x_t, generator=g).sample, out.sample)
        assert len(out.trajectory) == 10 and sampler.timesteps()[0] == 49
        ab_T, ab_0 = float(c.alphas_cumprod[-1]), float(c.alphas_cumprod[0])
        std_T, std_0 = math.sqrt(ab_T * s0 ** 2 + 1 - ab_T), math.sqrt(ab_0 * s0 ** 2 + 1 - ab_0)
        exact = x_t * (std_0 / std_T) * math.sqrt(ab_0) * s0 ** 2 / std_0 ** 2
        errors[name] = float((out.sample - exact).abs().max())
    assert errors["dpm-2m"] < 0.5 * errors["ddim"], errors
    assert errors["dpm-2m"] < 0.03, errors
    sched = reg.create("schedules", "sqrt", num_steps=50)
    assert type(sched).__module__ == "diffret_example_sqrt"
    assert reg.entries("schedules")[[e.name for e in reg.entries("schedules")].index("sqrt")].distribution == DIST
