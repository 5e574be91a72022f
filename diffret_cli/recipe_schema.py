"""The recipe schema: every setting, its default and type, and validation.

Kept apart from :mod:`diffret_cli.recipes` (finding, reading and overriding recipe
files) so each reads on its own. Validation reports every problem at once and checks
plugin names and arguments against the registry.
"""

from __future__ import annotations

import copy
import difflib
import fnmatch
import inspect
import re
from typing import Any

from diffret_cli.model.config import DEFAULT_CONFIG as MODEL_DEFAULTS
from diffret_cli.model.config import FORMAT as MODEL_FORMAT
from diffret_cli.errors import DiffretError
from diffret_cli.registry import SINGULAR, registry

LOSS_KINDS = ("kl", "mse")  # diffret_cli.losses.generation_loss_from_output
HARD_NEGATIVE_MODES = ("exclusive", "official")  # diffret_cli.losses.HARD_NEGATIVE_MODES
FEATURE_DTYPES = ("float16", "bfloat16", "float32")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
STAGES = (1, 2)
RECIPE_SUFFIX = ".yaml"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# no mps: the diffusion coefficients are float64, which Apple's backend lacks
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:[0-9]+)?)$")

#: Every setting and its default. A recipe file overrides what it names. ``model`` is
#: the model config of :mod:`diffret_cli.model.diffusionret` (its ``DEFAULT_CONFIG``,
#: kept equal by a test; copied so listing recipes does not import torch). Less obvious
#: keys: ``stage1.encoder_lr`` is the encoder's (CLIP's) learning rate, ``lr`` everyone
#: else's; ``batch_size`` is the global batch (all processes together);
#: ``stage2.num_candidates`` is K (the positive plus K-1 hard in-batch negatives, so
#: K <= batch_size); ``stage2.hard_negatives`` "exclusive" (never the positive or a
#: same-video item as a negative; a row short of K-1 gets masked padding slots) or
#: "official" (the official code's topk, which can return them); ``stage2.negative_value``
#: the x0 target of the negatives;
#: ``stage2.feature_dtype`` how cached stage-2 features are stored; ``dataset.val_split``
#: null = no validation (the last epoch is kept); ``train.val_every_epochs`` 0 = never;
#: ``train.ema`` null = off; ``eval.steps`` / ``eval.topk_*`` null = the model's
#: sampler / ``model.rerank`` settings; ``eval.out_domain`` datasets evaluated besides
#: the recipe's own (resolved to ``{name, options, split}``); ``data`` the frame
#: sampling that ``diffret data prepare`` must have used.
DEFAULTS: dict[str, Any] = {
    "name": None,
    "description": "",
    "reproduces": {"paper": None, "published": {}, "notes": None},
    "dataset": {"name": None, "options": {}, "train_split": "train", "val_split": "val",
                "test_split": "test"},
    "model": copy.deepcopy(MODEL_DEFAULTS),
    "stage1": {"epochs": 5, "batch_size": 128, "lr": 1.0e-4, "encoder_lr": 1.0e-7,
               "weight_decay": 0.2, "warmup": 0.1, "grad_clip": 1.0, "betas": [0.9, 0.98],
               "eps": 1.0e-6, "freeze_encoder": False},
    "stage2": {"epochs": 5, "batch_size": 128, "lr": 1.0e-4, "weight_decay": 0.2, "warmup": 0.1,
               "grad_clip": 1.0, "num_candidates": 128, "hard_negatives": "exclusive", "loss": "kl",
               "loss_temp": 100.0, "negative_value": 0.0, "feature_dtype": "float16"},
    "train": {"seed": 42, "device": "auto", "precision": "auto", "num_workers": 4, "log_every": 10,
              "checkpoint_every": 500, "ema": None, "stages": [1, 2], "val_every_epochs": 1,
              "max_steps": None},
    "eval": {"splits": ["test"], "out_domain": [], "steps": None, "topk_t2v": None, "topk_v2t": None,
             "batch_size": 64, "qb_norm": False, "qb_norm_beta": 20.0, "qb_norm_k": 1,
             "qb_norm_bank_size": 5000},
    "data": {"fps": 1.0, "short_side": 224},
}

#: Mappings that take any key (fnmatch patterns over dotted paths).
FREE_FORM: tuple[str, ...] = (
    "reproduces.published", "dataset.options", "model.*.args",
)

#: The type of every leaf: int, float, str, bool, map (free-form), list[...] (items), any;
#: a trailing "?" allows null. Every other key of DEFAULTS is a fixed-key mapping.
FIELD_TYPES: dict[str, str] = {
    "name": "str", "description": "str",
    "reproduces.paper": "str?", "reproduces.published": "map", "reproduces.notes": "str?",
    "dataset.name": "str", "dataset.options": "map", "dataset.train_split": "str",
    "dataset.val_split": "str?", "dataset.test_split": "str",
    "model.format": "str", "model.family": "str",
    "model.schedule.name": "str", "model.schedule.args": "map",
    "model.encoder.name": "str", "model.encoder.args": "map",
    "model.temporal.layers": "int", "model.temporal.heads": "int?",
    "model.temporal.max_frames": "int?", "model.temporal.init_from_text": "bool",
    "model.similarity.chunk_size": "int",
    "model.denoisers.t2v.name": "str", "model.denoisers.t2v.args": "map",
    "model.denoisers.v2t.name": "str", "model.denoisers.v2t.args": "map",
    "model.sampler.name": "str", "model.sampler.args": "map",
    "model.rerank.topk_t2v": "int", "model.rerank.topk_v2t": "int",
    "model.rerank.alpha_t2v": "float", "model.rerank.alpha_v2t": "float",
    "model.rerank.tau_t2v": "float", "model.rerank.tau_v2t": "float",
    "model.rerank.chunk_size": "int",
    "model.max_words": "int", "model.max_frames": "int",
    "stage1.epochs": "int", "stage1.batch_size": "int", "stage1.lr": "float",
    "stage1.encoder_lr": "float", "stage1.weight_decay": "float", "stage1.warmup": "float",
    "stage1.grad_clip": "float?", "stage1.betas": "list[float]", "stage1.eps": "float",
    "stage1.freeze_encoder": "bool",
    "stage2.epochs": "int", "stage2.batch_size": "int", "stage2.lr": "float",
    "stage2.weight_decay": "float", "stage2.warmup": "float", "stage2.grad_clip": "float?",
    "stage2.num_candidates": "int", "stage2.hard_negatives": "str", "stage2.loss": "str",
    "stage2.loss_temp": "float", "stage2.negative_value": "float", "stage2.feature_dtype": "str",
    "train.seed": "int", "train.device": "str", "train.precision": "str", "train.num_workers": "int",
    "train.log_every": "int", "train.checkpoint_every": "int?", "train.ema": "float?",
    "train.stages": "list[int]", "train.val_every_epochs": "int", "train.max_steps": "int?",
    "eval.splits": "list[str]", "eval.out_domain": "list[any]", "eval.steps": "int?",
    "eval.topk_t2v": "int?", "eval.topk_v2t": "int?", "eval.batch_size": "int",
    "eval.qb_norm": "bool", "eval.qb_norm_beta": "float", "eval.qb_norm_k": "int",
    "eval.qb_norm_bank_size": "int",
    "data.fps": "float", "data.short_side": "int",
}

#: One out-of-domain evaluation (``eval.out_domain`` items; a bare string is the name).
OUT_DOMAIN_DEFAULT: dict[str, Any] = {"name": None, "options": {}, "split": "test"}



_MISSING = object()


# ------------------------------------------------------------------------ schema paths
def is_free_path(path: str) -> bool:
    """Whether ``path`` is a free-form mapping or lies under one."""
    parts = path.split(".")
    return any(fnmatch.fnmatchcase(".".join(parts[:i]), pat)
               for pat in FREE_FORM for i in range(1, len(parts) + 1))


def defaults_for(recipe: dict | None) -> dict:
    """DEFAULTS for a recipe: its ``model`` section's defaults come from the model family
    it names (``model.family``; DiffusionRet's when absent)."""
    model = (recipe or {}).get("model")
    family = model.get("family") if isinstance(model, dict) else None
    if family in (None, MODEL_DEFAULTS["family"]) or not isinstance(family, str):
        return DEFAULTS
    if family not in registry().names("families"):
        return DEFAULTS  # validation reports the unknown family
    from diffret_cli.families import get_family

    out = copy.deepcopy(DEFAULTS)
    out["model"] = get_family(family).default_config()
    return out


def _node(path: str, defaults: dict) -> Any:
    node: Any = defaults
    for part in path.split(".") if path else ():
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def schema_at(path: str, defaults: dict | None = None) -> dict | None:
    """The defaults mapping at a fixed-key ``path`` ("" = top level), or None."""
    node = _node(path, defaults or DEFAULTS)
    return node if isinstance(node, dict) and path not in FIELD_TYPES else None


def field_type(path: str, defaults: dict | None = None) -> str | None:
    """The type spec of a leaf: FIELD_TYPES, else (keys a model family adds) the type of
    its default value; None for a fixed-key mapping."""
    if path in FIELD_TYPES:
        return FIELD_TYPES[path]
    node = _node(path, defaults or DEFAULTS)
    if isinstance(node, dict) and is_free_path(path):  # e.g. a family's model.pooling.args
        return "map"
    if isinstance(node, dict) or node is _MISSING:
        return None
    if node is None:
        return "any"
    if isinstance(node, list):
        return "list[any]"
    return {bool: "bool", int: "int", float: "float", str: "str"}.get(type(node), "any")


# --------------------------------------------------------------------------- validation


def _type_ok(value: Any, spec: str) -> bool:
    if spec.endswith("?"):
        if value is None:
            return True
        spec = spec[:-1]
    if spec.startswith("list["):
        return isinstance(value, list) and all(_type_ok(v, spec[5:-1]) for v in value)
    if spec == "any":
        return True
    if spec == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if spec == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if spec == "str":
        return isinstance(value, str)
    if spec == "bool":
        return isinstance(value, bool)
    if spec == "map":
        return isinstance(value, dict)
    raise AssertionError(f"unknown type spec {spec!r}")  # pragma: no cover - a schema bug


_REQUIRED_HINTS = {
    "name": " (it names the run directory)",
    "dataset.name": " (a dataset plugin: `diffret plugins list --kind datasets`)",
}


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _check_structure(value: Any, path: str, problems: list[str], bad: set[str], defaults: dict) -> None:
    """Unknown keys, missing keys and wrong types of one fixed-key mapping, recursively."""
    schema = schema_at(path, defaults)
    assert schema is not None
    label = path or "the recipe"
    if not isinstance(value, dict):
        problems.append(f"{label}: expected a mapping, got {_type_name(value)} {value!r}")
        bad.add(path)
        return
    for k, v in value.items():
        sub = f"{path}.{k}" if path else str(k)
        if k not in schema:
            close = difflib.get_close_matches(str(k), list(schema), n=1)
            problems.append(f"{sub}: unknown key" + (f" (did you mean {close[0]!r}?)" if close else "")
                            + f"; valid keys {'under ' + repr(path) if path else 'at the top level'}: "
                            + ", ".join(schema))
            continue
        spec = field_type(sub, defaults)
        if spec is None:
            _check_structure(v, sub, problems, bad, defaults)
        elif v is None and not spec.endswith("?"):
            problems.append(f"{sub}: required, expected {spec}" + _REQUIRED_HINTS.get(sub, ""))
            bad.add(sub)
        elif not _type_ok(v, spec):
            problems.append(f"{sub}: expected {spec.replace('?', ' or null')}, got {_type_name(v)} {v!r}")
            bad.add(sub)
    for k in schema:
        if k not in value:
            problems.append(f"{(path + '.') if path else ''}{k}: missing")
            bad.add(f"{path}.{k}" if path else k)


def _accepted_kwargs(cls: type) -> set[str] | None:
    """Keyword arguments a plugin class's constructor takes, following ``**kwargs`` up the
    MRO; None when some constructor takes anything."""
    names: set[str] = set()
    for klass in inspect.getmro(cls):
        if "__init__" not in vars(klass):
            continue
        if klass is object:
            return names
        try:
            params = list(inspect.signature(klass.__init__).parameters.values())[1:]
        except (TypeError, ValueError):
            return None
        names.update(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return names
    return None


class _Checker:
    """Collects problems; values of fields with a type problem are not checked again."""

    def __init__(self, recipe: dict, bad: set[str]):
        self.recipe, self.bad, self.problems = recipe, bad, []

    def get(self, path: str) -> Any:
        if any(path == b or path.startswith(b + ".") for b in self.bad):
            return _MISSING
        node: Any = self.recipe
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                return _MISSING
            node = node[part]
        return node

    def require(self, path: str, ok, expected: str) -> None:
        """Check a value whose type is already known to be right; null passes (whether
        null is allowed is a type question, answered by FIELD_TYPES)."""
        v = self.get(path)
        if v is _MISSING or v is None or isinstance(v, (bool, list, dict)):
            return
        if not ok(v):
            self.problems.append(f"{path}: {v!r} is not allowed; expected {expected}")

    def plugin(self, kind: str, path: str) -> type | None:
        """Check a registered name; return the plugin class (imported) or None."""
        name = self.get(path)
        if not isinstance(name, str):
            return None
        reg = registry()
        names = reg.names(kind)
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1)
            self.problems.append(f"{path}: no {SINGULAR[kind]} plugin named {name!r}"
                                 + (f" (did you mean {close[0]!r}?)" if close else "")
                                 + f"; available: {', '.join(names) or '(none)'}")
            return None
        try:
            return reg.get(kind, name)
        except DiffretError as exc:
            self.problems.append(f"{path}: {exc.message}")
            return None

    def arguments(self, cls: type | None, path: str, what: str) -> None:
        args = self.get(path)
        if cls is None or not isinstance(args, dict) or not isinstance(cls, type):
            return
        accepted = _accepted_kwargs(cls)
        if accepted is None:
            return
        for k in args:
            if k not in accepted:
                close = difflib.get_close_matches(str(k), sorted(accepted), n=1)
                self.problems.append(f"{path}.{k}: {what} takes no argument {k!r}"
                                     + (f" (did you mean {close[0]!r}?)" if close else "")
                                     + f"; accepted: {', '.join(sorted(accepted)) or '(none)'}")

    def split(self, cls: type | None, path: str, split: Any, dataset: str) -> None:
        splits = getattr(cls, "splits", None)
        if isinstance(split, str) and splits and split not in splits:
            self.problems.append(f"{path}: dataset {dataset!r} has no split {split!r}; "
                                 f"available: {', '.join(splits)}")


def _ge(n: float):
    return lambda v: v >= n


def _gt(n: float):
    return lambda v: v > n


def validate_recipe(recipe: dict[str, Any]) -> list[str]:
    """Every problem of a resolved recipe, one line each ([] when it is fine): unknown or
    missing keys, wrong types, plugin names that are not registered, plugin arguments
    their constructor does not take, and bad values."""
    problems: list[str] = []
    bad: set[str] = set()
    _check_structure(recipe, "", problems, bad, defaults_for(recipe))
    if "" in bad:
        return problems
    c = _Checker(recipe, bad)

    name = c.get("name")
    if isinstance(name, str) and not _NAME_RE.match(name):
        c.problems.append(f"name: {name!r} must be letters, digits, '.', '_' or '-' (it names the run directory)")
    c.require("model.format", lambda v: v == MODEL_FORMAT, repr(MODEL_FORMAT))

    # plugins: registered names, then constructor arguments ----------------------------
    ds_cls = c.plugin("datasets", "dataset.name")
    c.arguments(ds_cls, "dataset.options", f"dataset {c.get('dataset.name')!r}")
    for key in ("train_split", "val_split", "test_split"):
        c.split(ds_cls, f"dataset.{key}", c.get(f"dataset.{key}"), c.get("dataset.name"))
    enc_cls = c.plugin("encoders", "model.encoder.name")
    c.arguments(enc_cls, "model.encoder.args", f"encoder {c.get('model.encoder.name')!r}")
    for d in ("t2v", "v2t"):
        cls = c.plugin("denoisers", f"model.denoisers.{d}.name")
        c.arguments(cls, f"model.denoisers.{d}.args", f"denoiser {c.get(f'model.denoisers.{d}.name')!r}")
    s_cls = c.plugin("samplers", "model.sampler.name")
    c.arguments(s_cls, "model.sampler.args", f"sampler {c.get('model.sampler.name')!r}")
    sched_cls = c.plugin("schedules", "model.schedule.name")
    c.arguments(sched_cls, "model.schedule.args", f"schedule {c.get('model.schedule.name')!r}")
    sched_args = c.get("model.schedule.args")
    steps = sched_args.get("num_steps") if isinstance(sched_args, dict) else None
    if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 1):
        c.problems.append(f"model.schedule.args.num_steps: {steps!r} is not allowed; expected an integer >= 1")
    # a full (noise-to-sample) sampler runs the model's schedule: its own schedule
    # arguments would sample another diffusion than the one the denoisers learned
    s_args = c.get("model.sampler.args")
    if isinstance(sched_args, dict) and isinstance(s_args, dict) and s_cls is not None \
            and not getattr(s_cls, "truncated", False):
        for k, instead in (("schedule", "model.schedule.name"), ("num_steps", "model.schedule.args.num_steps"),
                           ("beta_scale", "model.schedule.args.beta_scale")):
            if k in s_args:
                c.problems.append(f"model.sampler.args.{k}: {s_args[k]!r} is not allowed; the sampler runs the "
                                  f"model's noise schedule, the one its denoisers are trained on: set {instead} "
                                  "(or model.sampler.args.sample_steps / --steps for fewer sampling steps)")
    c.require("model.family", lambda v: v in registry().names("families"),
              "a registered model family (`diffret plugins list --kind families`)")

    # model --------------------------------------------------------------------------------
    c.require("model.temporal.layers", _ge(0), "an integer >= 0")
    c.require("model.temporal.heads", _ge(1), "null or an integer >= 1")
    c.require("model.temporal.max_frames", _ge(1), "null or an integer >= 1")
    c.require("model.similarity.chunk_size", _ge(1), "an integer >= 1")
    for d in ("t2v", "v2t"):
        c.require(f"model.rerank.topk_{d}", _ge(1), "an integer >= 1 (candidates re-ranked per query)")
        c.require(f"model.rerank.alpha_{d}", _ge(0), "a number >= 0 (weight of the diffusion bonus)")
        c.require(f"model.rerank.tau_{d}", _gt(0), "a number > 0 (softmax temperature of the bonus)")
    c.require("model.rerank.chunk_size", _ge(1), "an integer >= 1")
    c.require("model.max_words", _ge(3), "an integer >= 3 ([SOT], at least one word, [EOT])")
    c.require("model.max_frames", _ge(1), "an integer >= 1")
    tmf, mf = c.get("model.temporal.max_frames"), c.get("model.max_frames")
    if isinstance(tmf, int) and isinstance(mf, int) and tmf < mf:
        c.problems.append(f"model.temporal.max_frames: {tmf} is smaller than model.max_frames {mf}; "
                          "the temporal transformer needs a position per frame")

    # stages ----------------------------------------------------------------------------------
    for st in ("stage1", "stage2"):
        c.require(f"{st}.epochs", _ge(0), "an integer >= 0")
        c.require(f"{st}.batch_size", _ge(1), "an integer >= 1 (the global batch)")
        c.require(f"{st}.lr", _gt(0), "a number > 0")
        c.require(f"{st}.weight_decay", _ge(0), "a number >= 0")
        c.require(f"{st}.warmup", lambda v: 0 <= v <= 1, "a fraction of the steps in [0, 1]")
        c.require(f"{st}.grad_clip", _gt(0), "null (no clipping) or a number > 0")
    c.require("stage1.encoder_lr", _ge(0), "a number >= 0")
    c.require("stage1.eps", _gt(0), "a number > 0")
    betas = c.get("stage1.betas")
    if isinstance(betas, list) and (len(betas) != 2 or not all(0 <= b < 1 for b in betas)):
        c.problems.append(f"stage1.betas: {betas!r} is not allowed; expected two numbers in [0, 1), e.g. [0.9, 0.98]")
    k, bs = c.get("stage2.num_candidates"), c.get("stage2.batch_size")
    c.require("stage2.num_candidates", _ge(2), "an integer >= 2 (the positive plus at least one negative)")
    if isinstance(k, int) and isinstance(bs, int) and k > bs:
        c.problems.append(f"stage2.num_candidates: {k} is larger than stage2.batch_size {bs}; the candidates "
                          "are the positive plus in-batch hard negatives, so lower num_candidates or raise batch_size")
    c.require("stage2.hard_negatives", lambda v: v in HARD_NEGATIVE_MODES,
              f"one of {', '.join(HARD_NEGATIVE_MODES)} (exclusive: never the positive or a same-video item "
              "as a negative; official: the official code's choice)")
    c.require("stage2.loss", lambda v: v in LOSS_KINDS, f"one of {', '.join(LOSS_KINDS)}")
    c.require("stage2.loss_temp", _gt(0), "a number > 0")
    c.require("stage2.feature_dtype", lambda v: v in FEATURE_DTYPES, f"one of {', '.join(FEATURE_DTYPES)}")

    # train -------------------------------------------------------------------------------------
    c.require("train.seed", _ge(0), "an integer >= 0")
    c.require("train.device", lambda v: bool(_DEVICE_RE.match(v)),
              "auto, cpu, cuda or cuda:N (not mps: the diffusion coefficients are float64)")
    c.require("train.precision", lambda v: v in PRECISIONS, f"one of {', '.join(PRECISIONS)}")
    c.require("train.num_workers", _ge(0), "an integer >= 0")
    c.require("train.log_every", _ge(1), "an integer >= 1")
    c.require("train.checkpoint_every", _ge(1), "null or an integer >= 1 (steps)")
    c.require("train.ema", lambda v: 0 < v < 1, "null or a decay in (0, 1), e.g. 0.999")
    c.require("train.val_every_epochs", _ge(0), "an integer >= 0 (0: never)")
    c.require("train.max_steps", _ge(1), "null or an integer >= 1")
    stages = c.get("train.stages")
    if isinstance(stages, list) and (not stages or any(s not in STAGES for s in stages)
                                     or stages != sorted(set(stages))):
        c.problems.append(f"train.stages: {stages!r} is not allowed; expected [1], [2] or [1, 2]")
    for st in stages if isinstance(stages, list) else []:
        epochs = c.get(f"stage{st}.epochs") if st in STAGES else None
        if isinstance(epochs, int) and epochs == 0:
            c.problems.append(f"stage{st}.epochs: 0 trains nothing, but train.stages runs stage {st}; "
                              f"set stage{st}.epochs >= 1 or leave {st} out of train.stages")

    # eval ----------------------------------------------------------------------------------------
    splits = c.get("eval.splits")
    if isinstance(splits, list):
        if not splits:
            c.problems.append("eval.splits: empty; name at least one split, e.g. [test]")
        for i, sp in enumerate(splits):
            c.split(ds_cls, f"eval.splits[{i}]", sp, c.get("dataset.name"))
    c.require("eval.steps", _ge(1), "null (the sampler's) or an integer >= 1")
    c.require("eval.topk_t2v", _ge(1), "null (model.rerank's) or an integer >= 1")
    c.require("eval.topk_v2t", _ge(1), "null (model.rerank's) or an integer >= 1")
    c.require("eval.batch_size", _ge(1), "an integer >= 1")
    c.require("eval.qb_norm_beta", _gt(0), "a number > 0")
    c.require("eval.qb_norm_k", _ge(1), "an integer >= 1")
    c.require("eval.qb_norm_bank_size", _ge(1), "an integer >= 1 (training captions in the query bank)")
    out_domain = c.get("eval.out_domain")
    if isinstance(out_domain, list):
        for i, item in enumerate(out_domain):
            _check_out_domain(c, f"eval.out_domain[{i}]", item)

    # data ----------------------------------------------------------------------------------------
    c.require("data.fps", _gt(0), "a number > 0 (frames sampled per second)")
    c.require("data.short_side", _ge(1), "an integer >= 1 (pixels)")
    return problems + c.problems


def _check_out_domain(c: _Checker, path: str, item: Any) -> None:
    if isinstance(item, str):
        item = {**OUT_DOMAIN_DEFAULT, "name": item}
    if not isinstance(item, dict):
        c.problems.append(f"{path}: expected a dataset name or a mapping {{name, options, split}}, "
                          f"got {_type_name(item)} {item!r}")
        return
    for k in item:
        if k not in OUT_DOMAIN_DEFAULT:
            c.problems.append(f"{path}.{k}: unknown key; valid keys: {', '.join(OUT_DOMAIN_DEFAULT)}")
    item = {**OUT_DOMAIN_DEFAULT, **item}
    name, options, split = item["name"], item["options"], item["split"]
    if not isinstance(name, str):
        c.problems.append(f"{path}.name: expected a dataset name, got {_type_name(name)} {name!r}")
        return
    if not isinstance(options, dict):
        c.problems.append(f"{path}.options: expected a mapping, got {_type_name(options)} {options!r}")
    names = registry().names("datasets")
    if name not in names:
        c.problems.append(f"{path}.name: no dataset plugin named {name!r}; available: {', '.join(names)}")
        return
    try:
        cls = registry().get("datasets", name)
    except DiffretError as exc:
        c.problems.append(f"{path}.name: {exc.message}")
        return
    if isinstance(options, dict):
        for k in options:
            accepted = _accepted_kwargs(cls)
            if accepted is not None and k not in accepted:
                c.problems.append(f"{path}.options.{k}: dataset {name!r} takes no argument {k!r}; "
                                  f"accepted: {', '.join(sorted(accepted)) or '(none)'}")
    if not isinstance(split, str):
        c.problems.append(f"{path}.split: expected a split name, got {_type_name(split)} {split!r}")
    else:
        c.split(cls, f"{path}.split", split, name)


