"""One contract per plugin kind, run over every registered plugin of that kind.

The plugins are read from the registry at collection time, and each is built with the
arguments its class gives in ``example_args()`` (one test case per example; the default
constructor when it gives none), so a new plugin, built in or third party, is covered
without touching this file. Each contract checks what ``diffret_cli/interfaces.py`` and
``diffret_cli/data/plugin.py`` promise: shapes and dtypes, device and dtype moves, the
config round trip (``type(p)(**p.config())`` rebuilds an equivalent plugin), seeded
determinism, and finite outputs.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import conftest_parity as fx
from diffret_cli.registry import SINGULAR, Registry, registry
from diffret_cli.sdk import (
    AnnotationError,
    DatasetPlugin,
    Denoiser,
    DiffretError,
    Encoder,
    NoiseSchedule,
    SampleResult,
    Sampler,
    SplitAnnotations,
)
from diffret_cli.model.temporal import TemporalTransformer

B, K, T = 3, 5, 4  # queries, candidates, frames


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with fx.torch_threads(1):
        yield


class BadExamples(Exception):
    """A plugin whose class or ``example_args()`` cannot be read: its case fails, others run."""


def example_args_of(cls) -> list[dict]:
    """The plugin's own example arguments; ``[{}]`` (default constructor) when it has none."""
    hook = getattr(cls, "example_args", None)
    examples = hook() if callable(hook) else None
    if examples is None:
        return [{}]
    if not (isinstance(examples, list) and examples and all(isinstance(a, dict) for a in examples)):
        raise BadExamples(f"{getattr(cls, '__name__', cls)}.example_args() must return a non-empty list of "
                          f"dicts (constructor arguments) or None, got {examples!r}")
    return examples


def cases(kind: str, reg: Registry | None = None, keep=None) -> list:
    """``pytest.param(name, args)`` for each example of each registered plugin of ``kind``.

    ``keep(cls)`` selects plugins by class. A plugin that fails to import, or whose
    examples are malformed, becomes one case carrying the error, so that its failure is
    reported by the test, not as a collection error.
    """
    reg = reg or registry()
    out = []
    for name in reg.names(kind):
        try:
            cls = reg.get(kind, name)
            if keep is not None and not keep(cls):
                continue
            examples = example_args_of(cls)
        except Exception as exc:  # noqa: BLE001 - reported by the test case
            out.append(pytest.param(name, BadExamples(f"{type(exc).__name__}: {exc}"), id=name))
            continue
        if len(examples) == 1:
            out.append(pytest.param(name, examples[0], id=name))
        else:
            out.extend(pytest.param(name, a, id=f"{name}-ex{i}") for i, a in enumerate(examples))
    # an empty kind must fail, not silently collect nothing
    return out or [pytest.param(f"<no {kind} registered>", {}, id=f"<no {kind}>")]


def build(kind: str, name: str, args):
    """The plugin ``name`` of ``kind`` built with ``args`` (one of its examples)."""
    if isinstance(args, BadExamples):
        pytest.fail(f"{SINGULAR[kind]} plugin {name!r}: {args}", pytrace=False)
    return registry().create(kind, name, **args)


def plugin_class(kind: str, name: str):
    return registry().get(kind, name)


def test_cases_come_from_each_plugins_example_args():
    """The hook itself: two examples give two cases with those arguments, none gives the
    default constructor, a malformed one gives a failing case, and nothing selected gives
    a failing placeholder (on a private registry)."""
    class Two(NoiseSchedule):
        @classmethod
        def example_args(cls):
            return [{"num_steps": 3}, {"num_steps": 4}]

    class NoHook(NoiseSchedule):
        pass

    class Broken(NoiseSchedule):
        @classmethod
        def example_args(cls):
            return {"num_steps": 3}  # a dict, not a list of dicts

    reg = Registry()
    for name, cls in (("two", Two), ("nohook", NoHook), ("broken", Broken)):
        reg.register("schedules", name, cls)
    got = {p.id: p.values for p in cases("schedules", reg) if p.id.startswith(("two", "nohook", "broken"))}
    assert got["two-ex0"] == ("two", {"num_steps": 3}) and got["two-ex1"] == ("two", {"num_steps": 4})
    assert got["nohook"] == ("nohook", {})
    assert isinstance(got["broken"][1], BadExamples) and "list of dicts" in str(got["broken"][1])
    # an empty selection must fail, not silently collect nothing
    assert [p.id for p in cases("schedules", reg, keep=lambda cls: False)] == ["<no schedules>"]


# ================================================================================ encoders
def make_encoder(name: str, args) -> Encoder:
    torch.manual_seed(0)
    return build("encoders", name, args).eval()


def encoder_inputs(enc: Encoder, dtype=torch.float32):
    ids, mask = enc.tokenize(["a red ball rolls left", "", "word " * 100], 12)
    g = torch.Generator().manual_seed(0)
    s = enc.image_size
    frames = torch.randn(2, 3, 3, s, s, generator=g).to(dtype)
    fmask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    return ids, mask, frames, fmask


def run_encoder(enc: Encoder, dtype=torch.float32):
    ids, mask, frames, fmask = encoder_inputs(enc, dtype)
    with torch.no_grad():
        tokens, cls = enc.encode_text(ids, mask)
        feats = enc.encode_frames(frames, fmask)
    return tokens, cls, feats


@pytest.mark.parametrize("name, args", cases("encoders"))
def test_encoder_contract(name, args):
    enc = make_encoder(name, args)
    assert isinstance(enc, Encoder)
    d = enc.embed_dim
    assert isinstance(d, int) and d > 0 and isinstance(enc.image_size, int)
    assert len(enc.image_mean) == 3 and len(enc.image_std) == 3
    ids, mask, frames, fmask = encoder_inputs(enc)
    assert ids.shape == mask.shape == (3, 12) and ids.dtype == mask.dtype == torch.int64
    lengths = mask.sum(1)
    assert torch.equal(mask, (torch.arange(12) < lengths[:, None]).long()), "mask must be a prefix of ones"
    assert (ids[mask == 0] == 0).all(), "padding ids must be 0"
    assert lengths[2] == 12 and lengths[1] >= 2, "long texts truncate to max_words; empty ones keep SOT/EOT"
    tokens, cls, feats = run_encoder(enc)
    assert tokens.shape == (3, 12, d) and cls.shape == (3, d) and feats.shape == (2, 3, d)
    for t in (tokens, cls, feats):
        assert t.dtype == torch.float32 and torch.isfinite(t).all()
    scale = enc.logit_scale()
    assert scale.dim() == 0 and 0 < float(scale.detach()) <= 100.0
    again = run_encoder(enc)
    assert all(torch.equal(a, b) for a, b in zip((tokens, cls, feats), again)), "encoding must be deterministic"


@pytest.mark.parametrize("name, args", cases("encoders"))
def test_encoder_config_round_trip_and_seeded_init(name, args):
    enc = make_encoder(name, args)
    clone = type(enc)(**enc.config())
    assert clone.config() == enc.config()
    json.dumps(enc.config())  # checkpoints store it as JSON
    clone.load_state_dict(enc.state_dict(), strict=True)
    for a, b in zip(run_encoder(enc), run_encoder(clone.eval())):
        assert torch.equal(a, b)
    twin = make_encoder(name, args)  # same torch seed -> same initial weights
    assert all(torch.equal(a, b) for a, b in zip(enc.state_dict().values(), twin.state_dict().values()))


@pytest.mark.parametrize("name, args", cases("encoders"))
def test_encoder_dtype_and_device_moves(name, args):
    enc = make_encoder(name, args)
    ref = run_encoder(enc)
    assert enc.to("cpu") is enc
    enc64 = enc.to(torch.float64)
    out = run_encoder(enc64, torch.float64)
    for a, b in zip(out, ref):
        assert a.dtype == torch.float64
        torch.testing.assert_close(a.float(), b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name, args", cases("encoders"))
def test_encoder_feeds_the_temporal_transformer(name, args):
    """text_layer_state / text_attention_heads / text_positional_embedding initialise a
    temporal transformer (DiffusionRet's init trick, section 3.2)."""
    enc = make_encoder(name, args)
    state = enc.text_layer_state(0)
    heads = enc.text_attention_heads()
    if state is None:  # an encoder without text layers opts out of the init trick
        assert heads is None
        assert enc.text_positional_embedding() is None or enc.text_positional_embedding().dim() == 2
        return
    assert isinstance(heads, int) and heads >= 1 and enc.embed_dim % heads == 0, heads
    pos = enc.text_positional_embedding()
    assert pos.dim() == 2 and pos.shape[1] == enc.embed_dim
    tt = TemporalTransformer(width=enc.embed_dim, layers=1, heads=heads, max_frames=min(8, pos.shape[0]))
    tt.init_from_text_layers([state], pos)
    for k, v in tt.resblocks[0].state_dict().items():
        assert torch.equal(v, state[k]), k


@pytest.mark.parametrize("name, args", cases("encoders"))
def test_encoder_parameter_groups(name, args):
    """What the optimiser uses: every parameter in exactly one group, frozen ones not
    trainable, and the split unchanged when a trainer freezes the whole encoder."""
    enc = make_encoder(name, args)
    groups = enc.parameter_groups()
    assert set(groups) == {"pretrained", "frozen"}, sorted(groups)
    ids = [id(p) for ps in groups.values() for p in ps]
    assert sorted(ids) == sorted(id(p) for p in enc.parameters()), "every parameter in exactly one group"
    assert not any(p.requires_grad for p in groups["frozen"]), "frozen parameters must not require grad"
    assert all(p.requires_grad for p in groups["pretrained"]), "trainable parameters must require grad"
    before = {k: [id(p) for p in ps] for k, ps in groups.items()}
    enc.requires_grad_(False)  # stage 2
    assert {k: [id(p) for p in ps] for k, ps in enc.parameter_groups().items()} == before


# =============================================================================== denoisers
def make_denoiser(name: str, args) -> Denoiser:
    torch.manual_seed(0)
    den = build("denoisers", name, args).eval()
    # larger than the N(0, 0.02) init so every path matters, with a gain near 1 per
    # layer at any width (std 0.2 at width 32)
    std = 0.2 * math.sqrt(32 / den.width)
    with torch.no_grad():
        for p in den.parameters():
            p.normal_(0.0, std)
    return den


def denoiser_inputs(den: Denoiser, dtype=torch.float32):
    """(x_t, t, text, video, video_mask) for ``den``'s direction; x_t has the state shape
    its ``prepare`` announces ([B,K] scores when it announces none)."""
    d = den.width
    g = torch.Generator().manual_seed(1)
    t = torch.tensor([0, 7, 49])
    if den.direction == "t2v":
        text, video = torch.randn(B, d, generator=g), torch.randn(B, K, T, d, generator=g)
        lengths = torch.randint(1, T + 1, (B, K), generator=g)
    elif den.direction == "v2t":
        text, video = torch.randn(B, K, d, generator=g), torch.randn(B, T, d, generator=g)
        lengths = torch.randint(1, T + 1, (B,), generator=g)
    else:
        pytest.fail(f"denoiser direction must be 't2v' or 'v2t', got {den.direction!r}", pytrace=False)
    mask = (torch.arange(T) < lengths[..., None]).long()
    with torch.no_grad():
        shape = den.prepare(text, video, mask).state_shape or (B, K)
    x = torch.randn(shape, generator=g)
    return x.to(dtype), t, text.to(dtype), video.to(dtype), mask


@pytest.mark.parametrize("name, args", cases("denoisers"))
def test_denoiser_contract(name, args):
    den = make_denoiser(name, args)
    assert isinstance(den, Denoiser) and isinstance(den.width, int) and den.width > 0
    x, t, text, video, mask = denoiser_inputs(den)
    assert x.shape[0] == B, f"the state's first dimension is the query batch, got {tuple(x.shape)}"
    with torch.no_grad():
        out = den(x, t, text, video, mask)
        ctx = den.prepare(text, video, mask)
        if ctx.anchor is not None:  # where a truncated sampler starts
            assert ctx.anchor.shape == x.shape
        # the fast path: one prepare, any number of steps at any t
        for step_t in (t, t.flip(0), torch.full_like(t, 3)):
            torch.testing.assert_close(den.step(x, step_t, ctx), den(x, step_t, text, video, mask),
                                       rtol=1e-5, atol=1e-5)
        again = den(x, t, text, video, mask)
        # the re-ranking scores of the candidates from their stage-1 scores and the sample
        fused = den.fuse(torch.randn(B, K, generator=torch.Generator().manual_seed(2)), out, ctx)
    assert out.shape == x.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert torch.equal(out, again)
    assert fused.shape == (B, K) and torch.isfinite(fused).all()
    # (a constant shift of x_t cancels in the softmax over candidates; a scaling does not)
    with torch.no_grad():
        assert den(3.0 * x, t, text, video, mask).sub(out).abs().max() > 1e-4, "output must depend on x_t"


@pytest.mark.parametrize("name, args", cases("denoisers"))
def test_denoiser_config_round_trip_and_seeded_init(name, args):
    den = make_denoiser(name, args)
    clone = type(den)(**den.config())
    assert clone.config() == den.config()
    json.dumps(den.config())
    clone.load_state_dict(den.state_dict(), strict=True)
    inputs = denoiser_inputs(den)
    with torch.no_grad():
        assert torch.equal(den(*inputs), clone.eval()(*inputs))
    torch.manual_seed(0)
    a = build("denoisers", name, args)
    torch.manual_seed(0)
    b = build("denoisers", name, args)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("name, args", cases("denoisers"))
def test_denoiser_dtype_and_device_moves(name, args):
    den = make_denoiser(name, args)
    inputs = denoiser_inputs(den)
    with torch.no_grad():
        ref = den(*inputs)
        assert den.to("cpu") is den
        x, t, text, video, mask = denoiser_inputs(den, dtype=torch.float64)
        out = den.to(torch.float64)(x, t, text, video, mask)
        assert out.dtype == torch.float64
        torch.testing.assert_close(out.float(), ref, rtol=1e-4, atol=1e-4)
        # no tensor is created on a fixed device: everything follows the module
        meta = den.to("meta")(*(a.to("meta") for a in inputs))
    assert meta.device.type == "meta" and meta.shape == ref.shape


@pytest.mark.parametrize("name, args", cases("denoisers"))
def test_denoiser_trains(name, args):
    """Training reaches every parameter: each gets a finite gradient through the output
    (a fixed random linear read-out of it, so the check needs no family's loss)."""
    den = make_denoiser(name, args).train()
    out = den(*denoiser_inputs(den))
    readout = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    (out * readout).sum().backward()
    for n, p in den.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"no finite gradient for {n}"


# ================================================================================ samplers
def toy_model(sampler: Sampler, calls: list | None = None):
    """A smooth stand-in for a denoiser, predicting what the sampler expects."""
    def fn(x, t):
        if calls is not None:
            calls.append(t.clone())
        return 0.5 * torch.tanh(x + 0.1) if sampler.prediction == "x0" else 0.1 * x
    return fn


def draw(sampler: Sampler, seed: int, *, anchor=None, dtype=torch.float32, record=False, calls=None):
    g = torch.Generator().manual_seed(seed)
    x = sampler.start(shape=(B, K), anchor=anchor, generator=g, dtype=dtype)
    return x, sampler.sample(toy_model(sampler, calls), x, generator=g, record=record)


@pytest.mark.parametrize("name, args", cases("samplers"))
def test_sampler_contract(name, args):
    s = build("samplers", name, args)
    assert isinstance(s, Sampler) and s.prediction in ("x0", "eps")
    steps = s.timesteps()
    assert steps and all(isinstance(i, int) for i in steps)
    anchor = torch.randn(B, K, generator=torch.Generator().manual_seed(9))
    calls: list = []
    x, res = draw(s, 0, anchor=anchor, calls=calls)
    assert isinstance(res, SampleResult) and res.trajectory is None
    assert res.sample.shape == (B, K) and res.sample.dtype == torch.float32
    assert torch.isfinite(res.sample).all()
    # the model is called once per listed timestep, in order, with one t per query
    assert [int(c[0]) for c in calls] == steps
    assert all(c.shape == (B,) and c.dtype == torch.int64 and (c == c[0]).all() for c in calls)
    if s.truncated:  # starts from the anchor
        assert x.shape == anchor.shape
    else:  # starts from N(0, I) whatever the anchor
        x_none, _ = draw(s, 0)
        assert torch.equal(x, x_none)
        assert torch.equal(x, torch.randn(B, K, generator=torch.Generator().manual_seed(0)))
    _, rec = draw(s, 0, anchor=anchor, record=True)
    assert rec.trajectory is not None and len(rec.trajectory) == len(steps)
    assert all(r["model_output"].shape == (B, K) for r in rec.trajectory)
    assert torch.equal(rec.sample, res.sample), "recording must not change the sample"


@pytest.mark.parametrize("name, args", cases("samplers"))
def test_sampler_seeded_determinism_and_dtype(name, args):
    s = build("samplers", name, args)
    anchor = torch.randn(B, K, generator=torch.Generator().manual_seed(9))
    _, a = draw(s, 0, anchor=anchor)
    _, b = draw(s, 0, anchor=anchor)
    assert torch.equal(a.sample, b.sample), "same generator seed -> same sample"
    if not s.truncated:
        _, c = draw(s, 1)
        assert not torch.equal(a.sample, c.sample), "another seed -> another sample"
    _, d64 = draw(s, 0, anchor=anchor.double(), dtype=torch.float64)
    assert d64.sample.dtype == torch.float64
    torch.testing.assert_close(d64.sample.float(), a.sample, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name, args", cases("samplers"))
def test_sampler_config_round_trip(name, args):
    s = build("samplers", name, args)
    clone = type(s)(**s.config())
    assert clone.config() == s.config()
    json.dumps(s.config())
    assert clone.timesteps() == s.timesteps()
    anchor = torch.randn(B, K, generator=torch.Generator().manual_seed(9))
    assert torch.equal(draw(s, 3, anchor=anchor)[1].sample, draw(clone, 3, anchor=anchor)[1].sample)


# =============================================================================== schedules
@pytest.mark.parametrize("name, args", cases("schedules"))
@pytest.mark.parametrize("steps", [8, 50, 1000])
def test_schedule_contract(name, args, steps):
    """Valid betas for every step count the schedule accepts; a step count it cannot
    serve must be refused when it is built (ValueError), never returned as betas >= 1."""
    if isinstance(args, BadExamples):
        build("schedules", name, args)
    try:
        sch = registry().create("schedules", name, **{**args, "num_steps": steps})
    except (ValueError, DiffretError) as exc:
        assert str(steps) in str(exc), f"the refusal must name the step count: {exc}"
        return
    assert isinstance(sch, NoiseSchedule) and sch.num_steps == steps
    betas = sch.betas()
    assert isinstance(betas, np.ndarray) and betas.dtype == np.float64 and betas.shape == (steps,)
    assert ((betas > 0) & (betas < 1)).all(), f"betas outside (0, 1): {betas.min()}..{betas.max()}"
    alpha_bar = np.cumprod(1.0 - betas)
    assert (np.diff(alpha_bar) < 0).all(), "alpha_bar must decrease strictly"
    betas[:] = 0.5  # a pure function: the next call is unaffected
    again = sch.betas()
    assert np.array_equal(again, type(sch)(**sch.config()).betas())
    assert not np.array_equal(again, betas)
    assert type(sch)(**sch.config()).config() == sch.config()
    json.dumps(sch.config())


# =============================================================================== datasets
def is_generative(cls) -> bool:
    return cls.generate is not DatasetPlugin.generate


@pytest.mark.parametrize("name, args", cases("datasets"))
def test_dataset_contract(name, args):
    p = build("datasets", name, args)
    cls = type(p)
    assert issubclass(cls, DatasetPlugin)
    assert cls.name == name, f"class attribute name {cls.name!r} != registered name {name!r}"
    assert cls.splits and all(isinstance(s, str) for s in cls.splits)
    assert cls.protocol in ("single", "multi", "paragraph")
    assert isinstance(cls.max_words, int) and cls.max_words > 2
    assert isinstance(cls.max_frames, int) and cls.max_frames > 0
    clone = type(p)(**p.config())
    assert clone.config() == p.config()
    json.dumps(p.config())
    for split in cls.splits:
        files = p.annotation_files(split)
        assert isinstance(files, list) and all(isinstance(f, str) for f in files)


@pytest.mark.parametrize("name, args", cases("datasets", keep=lambda cls: not is_generative(cls)))
def test_file_dataset_missing_source(name, args, tmp_path):
    p = build("datasets", name, args)
    missing = tmp_path / "not-downloaded"
    for split in p.splits:
        with pytest.raises(AnnotationError) as err:
            p.load_split(missing, split)
        assert "not-downloaded" in str(err.value), f"{name}/{split}: the error must name the path"
        assert err.value.hint, f"{name}/{split}: the error must say how to fix it"


@pytest.mark.parametrize("name, args", cases("datasets", keep=is_generative))
def test_generated_dataset_needs_no_files(name, args):
    p = build("datasets", name, args)
    ann = p.load_split(None, "test")
    assert isinstance(ann, SplitAnnotations)
    assert (ann.dataset, ann.split, ann.protocol) == (name, "test", p.protocol)
    assert ann.videos and all(v.captions and all(c.strip() for c in v.captions) for v in ann.videos)
    frames = p.generate(ann.videos[0])
    assert isinstance(frames, np.ndarray) and frames.dtype == np.uint8
    assert frames.ndim == 4 and frames.shape[-1] == 3 and frames.shape[0] >= 1
    assert np.array_equal(frames, p.generate(ann.videos[0])), "generation must be deterministic"


def test_every_plugin_kind_has_plugins():
    for kind in ("datasets", "encoders", "denoisers", "samplers", "schedules"):
        assert registry().names(kind), f"no {kind} registered: is diffret installed (pip install -e .)?"
