"""Import rules that keep the layers apart, checked on the source (AST, nothing imported).

1. No module imports another module's private names (``from a.b import _name``) or a
   private module (``import a._b``, ``from a._b import x``): a name another module needs
   is public in its own module.
2. Library code (everything but ``diffret_cli/cli/``) never imports ``diffret_cli.cli``:
   the CLI sits on top of the library, not the other way round.
3. The example third-party plugin imports only the public SDK, ``diffret_cli.sdk``.

Each rule reports every offending line at once, with file and line number.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCANNED = ("diffret_cli", "plugins", "recipes", "bench", "tests")
FIRST_PARTY = {"diffret_cli", "diffret_plugins", "diffret_recipes"}
THIRD_PARTY_PLUGIN = REPO / "tests" / "third_party_plugin"


def _py_files(*roots: str) -> list[Path]:
    return sorted(p for r in roots for p in (REPO / r).rglob("*.py") if ".venv" not in p.parts)


def _local_modules() -> set[str]:
    """Top-level names of the repo's script-style modules (test helpers, bench, example plugin)."""
    return {p.stem for p in _py_files("tests", "bench")}


def _is_private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def _imports(tree: ast.AST):
    """(line, module, names) for every import; ``module`` "." -prefixed for relative ones."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            yield node.lineno, "." * node.level + (node.module or ""), [a.name for a in node.names]


def private_import_violations(source: str, *, local: set[str] = frozenset()) -> list[tuple[int, str]]:
    """Rule 1 on one module's source: (line, description) per offending import."""
    out = []
    for line, module, names in _imports(ast.parse(source)):
        top = module.lstrip(".").split(".")[0]
        if not (module.startswith(".") or top in FIRST_PARTY or top in local):
            continue  # third-party libraries are not ours to police
        parts = [p for p in module.lstrip(".").split(".") if p]
        if any(_is_private(p) for p in parts):
            out.append((line, f"imports the private module {module}"))
        for name in names:
            if _is_private(name):
                out.append((line, f"imports the private name {name} from {module}"))
    return out


def cli_import_violations(source: str) -> list[tuple[int, str]]:
    """Rule 2 on one library module's source."""
    out = []
    for line, module, names in _imports(ast.parse(source)):
        if module == "diffret_cli.cli" or module.startswith("diffret_cli.cli."):
            out.append((line, f"imports {module}"))
        elif module == "diffret_cli" and "cli" in names:
            out.append((line, "imports diffret_cli.cli"))
    return out


def sdk_only_violations(source: str) -> list[tuple[int, str]]:
    """Rule 3 on one module of the example third-party plugin."""
    out = []
    for line, module, names in _imports(ast.parse(source)):
        top = module.split(".")[0]
        if top not in FIRST_PARTY:
            continue
        if module == "diffret_cli.sdk" or (module == "diffret_cli" and names == ["sdk"]):
            continue
        out.append((line, f"imports {module}" + (f" ({', '.join(names)})" if names else "")))
    return out


def _report(violations: dict[Path, list[tuple[int, str]]]) -> str:
    return "\n".join(f"{path.relative_to(REPO)}:{line}: {what}"
                     for path, items in violations.items() for line, what in items)


# ------------------------------------------------------------------ the checkers work
def test_checkers_catch_each_form():
    local = {"prepare_helpers"}
    bad = ("from diffret_cli.recipe_schema import _is_free\n"
           "import diffret_plugins.datasets._common\n"
           "from diffret_plugins.datasets._common import read_csv\n"
           "from diffret_plugins.datasets import _render\n"
           "from prepare_helpers import _make\n"
           "from . import _sibling\n"
           "def f():\n    from diffret_cli.trainer import _wrap_ddp\n")
    lines = [line for line, _ in private_import_violations(bad, local=local)]
    assert lines == [1, 2, 3, 4, 5, 6, 8]
    ok = ("from __future__ import annotations\nimport torch._dynamo\nfrom diffret_cli.fileio import "
          "atomic_write_json\nfrom diffret_cli import __version__\n")
    assert private_import_violations(ok, local=local) == []

    assert [line for line, _ in cli_import_violations(
        "from diffret_cli.cli.cmd_eval import run\nimport diffret_cli.cli.main\n"
        "from diffret_cli import cli\nfrom diffret_cli import api\n")] == [1, 2, 3]
    assert [line for line, _ in sdk_only_violations(
        "from diffret_cli.sdk import Sampler\nfrom diffret_cli import sdk\nimport diffret_cli.sdk\n"
        "from diffret_cli.interfaces import SampleResult\nfrom diffret_plugins.samplers.base import X\n"
        "import torch\n")] == [4, 5]


# ------------------------------------------------------------------------ the rules
def test_no_private_imports_across_modules():
    local = _local_modules()
    found = {p: v for p in _py_files(*SCANNED)
             if (v := private_import_violations(p.read_text(encoding="utf-8"), local=local))}
    assert not found, "private names imported across modules (make them public in their own module):\n" + \
        _report(found)


def test_library_never_imports_the_cli():
    files = [p for p in _py_files("diffret_cli", "plugins", "recipes", "bench")
             if (REPO / "diffret_cli" / "cli") not in p.parents]
    found = {p: v for p in files if (v := cli_import_violations(p.read_text(encoding="utf-8")))}
    assert not found, "library modules importing the CLI (move the logic into the library):\n" + _report(found)


def test_third_party_plugin_imports_only_the_sdk():
    files = sorted(THIRD_PARTY_PLUGIN.rglob("*.py"))
    if not files:
        pytest.fail(f"no example plugin sources under {THIRD_PARTY_PLUGIN}")
    found = {p: v for p in files if (v := sdk_only_violations(p.read_text(encoding="utf-8")))}
    assert not found, "the example third-party plugin must import only diffret_cli.sdk:\n" + _report(found)
