"""The plugin registry: entry-point discovery, lazy import, clashes, failures, switches.

Fake third-party distributions are written to ``tmp_path`` (a ``<name>.dist-info``
folder with METADATA and entry_points.txt, which importlib.metadata finds on sys.path,
plus the plugin module) and seen by a fresh :class:`Registry`.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

import diffret_cli.registry as registry_mod
from diffret_cli.cli.main import cli
from diffret_cli.errors import PluginError
from diffret_cli.registry import AUTOLOAD_ENV, BLOCK_ENV, Registry

SAMPLER_SRC = '''
from diffret_plugins.samplers.ddim import DDIMSampler


class {cls}(DDIMSampler):
    """A DDIM sampler under another name (registry tests)."""
'''


def make_dist(site: Path, dist: str, version: str, entries: dict[str, dict[str, str]],
              modules: dict[str, str]) -> None:
    """Write an installed-looking distribution: dist-info metadata plus its modules."""
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = []
    for group, eps in entries.items():
        lines.append(f"[{group}]")
        lines.extend(f"{name} = {target}" for name, target in eps.items())
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for mod, src in modules.items():
        (site / f"{mod}.py").write_text(textwrap.dedent(src))


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A fresh sys.path entry for fake distributions; their modules are forgotten after."""
    path = tmp_path / "site"
    path.mkdir()
    monkeypatch.syspath_prepend(str(path))
    before = set(sys.modules)
    yield path
    for name in set(sys.modules) - before:
        if name.startswith("fake_"):
            del sys.modules[name]


@pytest.fixture
def cli_registry(monkeypatch):
    """Make the CLI's process-wide registry a fresh one (restored afterwards)."""
    monkeypatch.setattr(registry_mod, "_REGISTRY", None)
    monkeypatch.setenv("COLUMNS", "300")  # rich wraps tables at the terminal width


def entry(reg: Registry, kind: str, name: str):
    return next(e for e in reg.entries(kind) if e.name == name)


# ----------------------------------------------------------------------- discovery
def test_names_are_read_without_importing(site):
    make_dist(site, "fake-lazy", "1.2.3", {"diffret.samplers": {"lazy": "fake_lazy_mod:LazySampler"}},
              {"fake_lazy_mod": SAMPLER_SRC.format(cls="LazySampler")})
    reg = Registry()
    assert "lazy" in reg.names("samplers") and "ddim" in reg.names("samplers")
    e = entry(reg, "samplers", "lazy")
    assert (e.distribution, e.version, e.target, e.status) == ("fake-lazy", "1.2.3", "fake_lazy_mod:LazySampler",
                                                                "available")
    assert "fake_lazy_mod" not in sys.modules, "names()/entries() must not import plugins"
    cls = reg.get("samplers", "lazy")
    assert "fake_lazy_mod" in sys.modules and cls.__name__ == "LazySampler"
    assert entry(reg, "samplers", "lazy").status == "loaded"
    assert reg.get("samplers", "lazy") is cls
    assert reg.create("samplers", "lazy", num_steps=10).timesteps() == list(range(9, -1, -1))


def test_builtins_are_listed_without_importing_them():
    """In a fresh interpreter: listing imports no plugin module, and not even torch."""
    code = ("import sys; from diffret_cli.registry import registry; r = registry(); "
            "n = {k: r.names(k) for k in ('samplers', 'schedules', 'denoisers', 'encoders', 'datasets')}; "
            "r.entries(); assert all(n.values()), n; "
            "print(sorted(m for m in sys.modules if m.startswith('diffret_plugins') or m == 'torch'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_builtin_plugins_register_through_entry_points():
    reg = Registry()
    expected = {("samplers", "ddim"), ("samplers", "ddpm"), ("schedules", "cosine"), ("schedules", "linear"),
                ("denoisers", "t2v"), ("denoisers", "v2t"), ("encoders", "open_clip")}
    found = {(e.kind, e.name): e for e in reg.entries()}
    for key in expected:
        assert key in found, key
        assert found[key].distribution == "diffret" and found[key].builtin, key


def test_unknown_name_lists_available_names():
    with pytest.raises(PluginError) as err:
        Registry().get("samplers", "ddim2")
    msg = str(err.value)
    assert "'ddim2'" in msg and "ddim, ddpm" in msg
    with pytest.raises(PluginError, match="(?s)unknown plugin kind 'sampler'.*samplers"):
        Registry().names("sampler")


# -------------------------------------------------------------------------- failures
def test_failing_plugin_is_reported_and_isolated(site):
    make_dist(site, "fake-broken", "0.9", {"diffret.samplers": {"broken": "fake_broken_mod:Broken",
                                                                "fine": "fake_fine_mod:Fine"}},
              {"fake_broken_mod": "raise ImportError('needs the missing package zzz')\n",
               "fake_fine_mod": SAMPLER_SRC.format(cls="Fine")})
    reg = Registry()
    with pytest.raises(PluginError) as err:
        reg.get("samplers", "broken")
    msg = str(err.value)
    assert "fake-broken" in msg and "0.9" in msg and "ImportError" in msg and "zzz" in msg
    assert f"{BLOCK_ENV}=samplers:broken" in msg, "the hint says how to block it"
    e = entry(reg, "samplers", "broken")
    assert e.status == "error" and "zzz" in e.error
    # the same distribution's other plugin and the built-ins still work
    assert reg.get("samplers", "fine").__name__ == "Fine"
    assert reg.get("samplers", "ddim").__name__ == "DDIMSampler"
    assert "broken" in reg.names("samplers")


def test_plugins_list_survives_a_broken_plugin(site, cli_registry):
    make_dist(site, "fake-broken", "0.9", {"diffret.schedules": {"broken-sched": "fake_broken2:X"}},
              {"fake_broken2": "raise RuntimeError('boom at import')\n"})
    res = CliRunner().invoke(cli, ["plugins", "list", "--load"])
    assert res.exit_code == 0, res.output
    row = next(line for line in res.output.splitlines() if "broken-sched" in line)
    assert "fake-broken" in row and "0.9" in row and "error" in row and "boom at import" in row
    cosine = next(line for line in res.output.splitlines() if " cosine " in line)
    assert "diffret" in cosine and "loaded" in cosine


# ---------------------------------------------------------------------------- clashes
def test_name_registered_twice_is_an_error_naming_both(site, cli_registry):
    for dist in ("fake-one", "fake-two"):
        mod = f"fake_{dist[5:]}_mod"
        make_dist(site, dist, "1.0", {"diffret.samplers": {"dup": f"{mod}:Dup", f"only-{dist[5:]}": f"{mod}:Dup"}},
                  {mod: SAMPLER_SRC.format(cls="Dup")})
    reg = Registry()
    assert "dup" in reg.names("samplers")
    with pytest.raises(PluginError) as err:
        reg.get("samplers", "dup")
    msg = str(err.value)
    assert "fake-one" in msg and "fake-two" in msg and "fake_one_mod:Dup" in msg and "fake_two_mod:Dup" in msg
    assert any("fake-one" in c and "fake-two" in c for c in reg.conflicts)
    assert not any(m in sys.modules for m in ("fake_one_mod", "fake_two_mod")), "a clash imports neither side"
    # unaffected names of both distributions still load
    assert reg.get("samplers", "only-one") and reg.get("samplers", "only-two")
    res = CliRunner().invoke(cli, ["plugins", "list"])
    assert res.exit_code == 0 and "conflict" in res.output and "fake-two" in res.output


def test_clash_with_a_builtin_names_diffret(site):
    make_dist(site, "fake-shadow", "2.0", {"diffret.samplers": {"ddim": "fake_shadow_mod:Shadow"}},
              {"fake_shadow_mod": SAMPLER_SRC.format(cls="Shadow")})
    reg = Registry()
    with pytest.raises(PluginError) as err:
        reg.get("samplers", "ddim")
    assert "diffret" in str(err.value) and "fake-shadow" in str(err.value)


def test_in_process_registration_clash():
    reg = Registry()
    reg.register("samplers", "mine", object)
    assert "mine" in reg.names("samplers") and reg.get("samplers", "mine") is object
    with pytest.raises(PluginError, match="already registered"):
        reg.register("samplers", "ddim", object)
    reg.unregister("samplers", "mine")
    assert "mine" not in reg.names("samplers")


# --------------------------------------------------------------------------- switches
def test_disable_autoload_hides_third_party_plugins(site, monkeypatch):
    make_dist(site, "fake-extra", "1.0", {"diffret.schedules": {"extra": "fake_extra_mod:X"}},
              {"fake_extra_mod": "X = 1\n"})
    assert "extra" in Registry().names("schedules")
    monkeypatch.setenv(AUTOLOAD_ENV, "1")
    reg = Registry()
    assert "extra" not in reg.names("schedules")
    assert {"cosine", "linear"} <= set(reg.names("schedules")), "built-ins stay"
    monkeypatch.setenv(AUTOLOAD_ENV, "0")
    assert "extra" in Registry().names("schedules")


def test_block_plugins(site, monkeypatch):
    make_dist(site, "fake-extra", "1.0", {"diffret.schedules": {"extra": "fake_extra_mod:X"}},
              {"fake_extra_mod": "X = 1\n"})
    monkeypatch.setenv(BLOCK_ENV, "schedules:extra, sampler:ddpm")  # singular kind works too
    reg = Registry()
    assert "extra" not in reg.names("schedules") and "ddpm" not in reg.names("samplers")
    assert "ddim" in reg.names("samplers") and "cosine" in reg.names("schedules")
    with pytest.raises(PluginError, match="no sampler plugin named 'ddpm'"):
        reg.get("samplers", "ddpm")


def test_block_resolves_a_clash(site, monkeypatch):
    make_dist(site, "fake-shadow", "2.0", {"diffret.schedules": {"cosine": "fake_shadow_mod:X"}},
              {"fake_shadow_mod": "X = 1\n"})
    reg = Registry()
    reg.names("schedules")  # discovery is lazy; conflicts are known after it
    assert reg.conflicts and "fake-shadow" in reg.conflicts[0]
    # blocking hides the name from every distribution: the clash is gone
    monkeypatch.setenv(BLOCK_ENV, "schedules:cosine")
    reg = Registry()
    assert not reg.conflicts and "cosine" not in reg.names("schedules")


def test_cli_lists_builtins_with_distribution_and_version(cli_registry):
    from diffret_cli import __version__

    res = CliRunner().invoke(cli, ["plugins", "list", "--kind", "samplers"])
    assert res.exit_code == 0, res.output
    rows = [line for line in res.output.splitlines() if " ddim " in line or " ddpm " in line]
    assert len(rows) == 2 and all("diffret" in r and __version__ in r and "available" in r for r in rows)


# --------------------------------------------------------------------------- families
def test_families_is_a_plugin_kind(site, monkeypatch, cli_registry):
    """Model families register under diffret.families like any other kind; messages use
    the singular "family", and the blocking switch accepts it."""
    make_dist(site, "fake-family", "0.3", {"diffret.families": {"toy": "fake_family_mod:Toy"}},
              {"fake_family_mod": "class Toy:\n    stages = ('one',)\n"})
    reg = Registry()
    assert "toy" in reg.names("families")
    assert reg.get("families", "toy").stages == ("one",)
    with pytest.raises(PluginError, match="no family plugin named 'toi'; available: .*toy"):
        reg.get("families", "toi")
    res = CliRunner().invoke(cli, ["plugins", "list", "--kind", "families", "--load"])
    assert res.exit_code == 0, res.output
    row = next(line for line in res.output.splitlines() if " toy " in line)
    assert "families" in row and "fake-family" in row and "0.3" in row and "loaded" in row
    monkeypatch.setenv(BLOCK_ENV, "family:toy")
    assert "toy" not in Registry().names("families")


def test_plugins_list_names_the_groups_nothing_registers_under(cli_registry, monkeypatch):
    monkeypatch.setattr(Registry, "entries", lambda self, kind=None: [])
    res = CliRunner().invoke(cli, ["plugins", "list"])
    assert res.exit_code == 0, res.output
    assert ("no plugins registered under: diffret.datasets, diffret.encoders, diffret.denoisers, "
            "diffret.samplers, diffret.schedules, diffret.recipes, diffret.families") in res.output
    res = CliRunner().invoke(cli, ["plugins", "list", "--kind", "families"])
    assert res.exit_code == 0 and "no plugins registered under: diffret.families\n" in res.output
