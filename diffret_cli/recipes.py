"""Recipes: a whole training + evaluation setup as one YAML data file.

A recipe names plugins by their registered name (never by import path) and holds every
setting that decides a result: the dataset, the model config, both training stages,
the evaluation and the frame sampling. Why data and not code: a recipe can be listed,
shown, validated and overridden (``stage1.lr=3e-5``) before anything is built, and a
checkpoint can record exactly the recipe it was trained with.

Where recipes come from: the ``diffret.recipes`` entry-point group. Each entry point
names a Python package (or module) whose directory holds ``*.yaml`` files; the file
stem is the recipe name. The built-in source is ``builtin = diffret_recipes``. A name
found in two sources is an error that names both. Wherever a recipe name is accepted,
a path to a ``.yaml`` file is accepted too.

Resolution (:func:`load_recipe`): :data:`DEFAULTS` <- the file <- ``key=value``
overrides, then :func:`validate_recipe`, which reports every problem at once. An
unknown key is always an error; only the free-form mappings in :data:`FREE_FORM`
(plugin arguments, dataset options, published numbers) take any key.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from diffret_cli.errors import ConfigError, DiffretError
from diffret_cli.registry import BLOCK_ENV, registry

__all__ = [
    "DEFAULTS", "FREE_FORM", "FIELD_TYPES", "LOSS_KINDS", "RecipeInfo", "RecipeCatalog",
    "apply_overrides", "check_recipe", "discover_recipes", "dump_recipe", "find_recipe", "list_recipes",
    "load_recipe", "parse_value", "validate_recipe",
]
from diffret_cli.recipe_schema import (DEFAULTS, FIELD_TYPES, FREE_FORM, LOSS_KINDS,  # noqa: F401 - re-exported
                                      OUT_DOMAIN_DEFAULT, RECIPE_SUFFIX, defaults_for, field_type, is_free_path,
                                      schema_at,
                                      validate_recipe)


# ------------------------------------------------------------------------------ YAML
class _Loader(yaml.SafeLoader):
    """Safe YAML, plus: ``1e-4`` is a float (YAML 1.1 wants ``1.0e-4``), and a key written
    twice in one mapping is an error instead of the last one silently winning."""

    def construct_mapping(self, node, deep=False):  # noqa: D102 - see class docstring
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found duplicate key {key!r}", key_node.start_mark)
            seen[key] = True
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


class _Dumper(yaml.SafeDumper):
    """Block style for mappings, flow style for short lists of scalars (``[0.9, 0.98]``)."""

    def ignore_aliases(self, data):  # never write &id001 anchors
        return True


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(not isinstance(x, (dict, list)) for x in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)
_Dumper.add_representer(tuple, _represent_list)


def parse_value(text: str) -> Any:
    """An override's value as YAML: ``3e-5`` -> float, ``true`` -> bool, ``[1, 2]`` -> list,
    ``null`` -> None, ``7k`` -> str. Unparseable text stays a string."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError:
        return text


def _read_yaml(path: Any, label: str) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read recipe {label}: {exc}", hint="check the path and its permissions") from exc
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{label}{where}: invalid YAML: {exc.problem or exc}",
                          hint="fix the YAML syntax there (indentation, a missing ':' or quote)") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{label}: invalid YAML: {exc}", hint="fix the YAML syntax") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: a recipe must be a mapping of sections (name, dataset, model, ...), "
                          f"got a {type(data).__name__}", hint="start the file with `name: ...` lines, not a list")
    return data


def dump_recipe(recipe: dict[str, Any]) -> str:
    """The recipe as YAML text (keys in schema order); :func:`load_recipe` reads it back
    to the same dict."""
    return yaml.dump(recipe, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True,
                     width=100)


# --------------------------------------------------------------------------- discovery
@dataclass(frozen=True)
class RecipeInfo:
    """One recipe file found in a source (not yet resolved or validated)."""

    name: str
    source: str  # "builtin (diffret 0.1.0)", "mine (in-process)", or "file"
    description: str
    path: Any  # a pathlib.Path, or an importlib.resources Traversable


@dataclass
class RecipeCatalog:
    """Everything discovery found: usable recipes, names defined twice, broken sources."""

    recipes: dict[str, RecipeInfo] = field(default_factory=dict)
    clashes: dict[str, list[RecipeInfo]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def clash_message(self, name: str) -> str:
        return f"recipe {name!r} is defined twice: " + " and ".join(
            f"{i.source} ({i.path})" for i in self.clashes[name])


def _source_dir(obj: Any) -> Any:
    """The directory a recipe source points at: a package, a module, or (in-process) a path."""
    from importlib import resources

    if isinstance(obj, types.ModuleType):
        if hasattr(obj, "__path__"):
            return resources.files(obj)
        if getattr(obj, "__file__", None):
            return Path(obj.__file__).parent
        raise ConfigError(f"module {obj.__name__} has no directory", hint="register a package or a folder")
    if isinstance(obj, (str, os.PathLike)):
        return Path(obj)
    if hasattr(obj, "iterdir") and hasattr(obj, "joinpath"):
        return obj
    raise ConfigError(f"a recipe source must be a package, a module or a folder, got {type(obj).__name__}",
                      hint="register e.g. `mine = my_package.recipes` in the diffret.recipes entry-point group")


def _description(path: Any) -> str:
    try:
        data = _read_yaml(path, str(path))
    except ConfigError as exc:
        return f"(unreadable: {exc.message})"
    desc = data.get("description", "")
    return " ".join(str(desc).split()) if desc else ""


def discover_recipes() -> RecipeCatalog:
    """Scan every source in the ``diffret.recipes`` group. Never raises: a source that
    fails to import is recorded in ``errors``, a name found twice in ``clashes``."""
    reg = registry()
    catalog = RecipeCatalog()
    for entry in reg.entries("recipes"):
        source = (f"{entry.name} (in-process)" if entry.distribution == "(in-process)"
                  else f"{entry.name} ({entry.distribution} {entry.version})")
        try:
            root = _source_dir(reg.get("recipes", entry.name))
            files = sorted((f for f in root.iterdir() if f.name.endswith(RECIPE_SUFFIX) and f.is_file()),
                           key=lambda f: f.name)
        except (DiffretError, OSError) as exc:
            catalog.errors.append(f"recipe source {source}: {exc}")
            continue
        for f in files:
            info = RecipeInfo(f.name[: -len(RECIPE_SUFFIX)], source, _description(f), f)
            if info.name in catalog.recipes:
                catalog.clashes.setdefault(info.name, [catalog.recipes[info.name]]).append(info)
            else:
                catalog.recipes[info.name] = info
    return catalog


def _clash_error(catalog: RecipeCatalog, names: Iterable[str]) -> ConfigError:
    lines = [catalog.clash_message(n) for n in names]
    return ConfigError("; ".join(lines),
                       hint=f"rename one of the files, or hide a source with {BLOCK_ENV}=recipes:<source name>")


def list_recipes() -> list[RecipeInfo]:
    """Every recipe of every source, sorted by name. A name defined twice is a ConfigError
    naming both sources."""
    catalog = discover_recipes()
    if catalog.clashes:
        raise _clash_error(catalog, sorted(catalog.clashes))
    return [catalog.recipes[n] for n in sorted(catalog.recipes)]


def _is_path(name_or_path: Any) -> bool:
    if isinstance(name_or_path, os.PathLike):
        return True
    text = str(name_or_path)
    return text.endswith((".yaml", ".yml")) or "/" in text or os.sep in text


def find_recipe(name_or_path: str | os.PathLike) -> RecipeInfo:
    """The recipe file a name (or a path to a .yaml file) refers to."""
    if _is_path(name_or_path):
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise ConfigError(f"recipe file not found: {path}",
                              hint="pass an existing .yaml file, or a recipe name from `diffret recipes list`")
        return RecipeInfo(path.stem, "file", "", path)
    name = str(name_or_path)
    catalog = discover_recipes()
    if name in catalog.clashes:
        raise _clash_error(catalog, [name])
    if name not in catalog.recipes:
        close = difflib.get_close_matches(name, list(catalog.recipes), n=1)
        raise ConfigError(
            f"no recipe named {name!r}; available: {', '.join(sorted(catalog.recipes)) or '(none)'}",
            hint=(f"did you mean {close[0]!r}? " if close else "use one of those names ")
            + "or pass a path to a .yaml file (`diffret recipes list` shows every recipe)")
    return catalog.recipes[name]


# ---------------------------------------------------------------------------- overrides
def _merge(base: dict, override: dict) -> dict:
    """Deep merge; keeps unknown keys so that validation can report them."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _unknown_key(key: str, level: str, valid: Iterable[str], context: str) -> ConfigError:
    valid = list(valid)
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], valid, n=1)
    where = f"under {level!r}" if level else "at the top level"
    return ConfigError(f"unknown recipe key {key!r}{context}",
                       hint=(f"did you mean {close[0]!r}? " if close else "")
                       + f"valid keys {where}: {', '.join(valid)}")


def apply_overrides(recipe: dict[str, Any], overrides: Sequence[str] = ()) -> dict[str, Any]:
    """A copy of ``recipe`` with ``key=value`` overrides applied (dotted keys, YAML values:
    ``stage1.lr=3e-5``, ``train.stages=[2]``, ``train.ema=null``).

    An unknown key is a ConfigError listing the valid keys at that level; keys under a
    free-form mapping (see :data:`FREE_FORM`) are created as needed. A mapping value is
    merged into the mapping it replaces.
    """
    out = copy.deepcopy(recipe)
    defaults = defaults_for(recipe)
    for text in overrides:
        if "=" not in text:
            raise ConfigError(f"override {text!r} is not key=value",
                              hint="write e.g. stage1.lr=3e-5 or dataset.options.train_list=7k")
        key, raw = text.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        if not key or any(not p for p in parts):
            raise ConfigError(f"override {text!r} has an empty key part", hint="write e.g. stage1.lr=3e-5")
        context = f" in override {text!r}"
        node: Any = out
        for i, part in enumerate(parts):
            path, parent = ".".join(parts[: i + 1]), ".".join(parts[:i])
            if not is_free_path(path):
                schema = schema_at(parent, defaults)
                if schema is None:
                    kind = field_type(parent, defaults) or "a value"
                    raise ConfigError(f"{parent!r} is {kind}, it has no key {part!r}{context}",
                                      hint=f"set the whole value instead: {parent}=...")
                if part not in schema:
                    raise _unknown_key(path, parent, schema, context)
            if i == len(parts) - 1:
                value = parse_value(raw)
                if isinstance(value, dict) and isinstance(node.get(part), dict):
                    node[part] = _merge(node[part], value)
                else:
                    node[part] = value
            else:
                nxt = node.get(part)
                if nxt is None:
                    nxt = node[part] = {}
                if not isinstance(nxt, dict):
                    raise ConfigError(f"{path!r} is {type(nxt).__name__} {nxt!r}, not a mapping{context}",
                                      hint=f"set the whole value instead: {path}=...")
                node = nxt
    return out


# --------------------------------------------------------------------------- resolution
def _normalize(recipe: dict[str, Any]) -> dict[str, Any]:
    """Canonical forms: ints where a float is expected become floats; an out-of-domain
    entry given as a bare name becomes ``{name, options: {}, split: test}``."""
    out = copy.deepcopy(recipe)
    for path, spec in FIELD_TYPES.items():
        parts = path.split(".")
        node: Any = out
        for p in parts[:-1]:
            node = node.get(p) if isinstance(node, dict) else None
        if not isinstance(node, dict) or parts[-1] not in node:
            continue
        v = node[parts[-1]]
        if spec.startswith("float") and isinstance(v, int) and not isinstance(v, bool):
            node[parts[-1]] = float(v)
        elif spec == "list[float]" and isinstance(v, list):
            node[parts[-1]] = [float(x) if isinstance(x, int) and not isinstance(x, bool) else x for x in v]
    ev = out.get("eval")
    if isinstance(ev, dict) and isinstance(ev.get("out_domain"), list):
        ev["out_domain"] = [{**copy.deepcopy(OUT_DOMAIN_DEFAULT), "name": x} if isinstance(x, str)
                            else ({**copy.deepcopy(OUT_DOMAIN_DEFAULT), **x} if isinstance(x, dict) else x)
                            for x in ev["out_domain"]]
    return out


def _resolve(name_or_path: str | os.PathLike, overrides: Sequence[str]) -> tuple[dict, list[str], str]:
    """(resolved recipe, problems, label). Raises only when no recipe can be built at all
    (unknown name, unreadable file, invalid YAML, bad override)."""
    info = find_recipe(name_or_path)
    label = str(info.path) if info.source == "file" else f"{info.name} ({info.source}: {info.path})"
    raw = _read_yaml(info.path, label)
    extra: list[str] = []
    if info.source != "file" and "name" in raw and raw["name"] != info.name:
        extra.append(f"name: {raw['name']!r} differs from the file name {info.name!r}; they must match")
    if isinstance(raw.get("model"), dict) and raw["model"].get("family") in (None, "diffusionret"):
        # DiffusionRet sampler args that name the schedule: its own key now
        from diffret_cli.model.config import split_schedule_args

        raw = {**raw, "model": split_schedule_args(raw["model"])}
    recipe = _merge(defaults_for(raw), raw)
    if recipe.get("name") is None:
        recipe["name"] = info.name
    recipe = _normalize(apply_overrides(recipe, overrides))
    return recipe, extra + validate_recipe(recipe), label


def check_recipe(name_or_path: str | os.PathLike, overrides: Sequence[str] = ()) -> list[str]:
    """Every problem of a recipe ([] when it resolves and validates): what
    ``diffret recipes validate`` prints. Never raises for a bad recipe."""
    try:
        _, problems, _ = _resolve(name_or_path, overrides)
    except DiffretError as exc:
        return [str(exc)]
    return problems


def load_recipe(name_or_path: str | os.PathLike, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The resolved recipe: DEFAULTS <- the recipe file <- overrides, validated.

    ``name_or_path`` is a recipe name (``diffret recipes list``) or a path to a .yaml
    file. Raises ConfigError listing every problem when the result is not valid.
    """
    recipe, problems, label = _resolve(name_or_path, overrides)
    if problems:
        raise ConfigError(f"recipe {label} has {len(problems)} problem(s):\n  - " + "\n  - ".join(problems),
                          hint="fix them in the file or with key=value overrides "
                          "(`diffret recipes validate NAME` lists them)")
    return recipe
