"""diffret reproduces the official DiffusionRet code, component by component.

Every fixture folder of the parity set (``DIFFRET_PARITY_DIR``, default
``tests/fixtures/parity``) holds inputs, outputs and intermediates of the official code,
and a README with the call, the hyper-parameters and the weight formula. Each test reads
all shapes, seeds, weights and options from the fixture, so the held-back second set
(other seeds and shapes) runs through the same tests. A missing fixture fails.

Tolerance (float32): max |ours - official| <= 1e-5 * max|official| + 1e-6; the
generation loss to 1e-5 relative; gradients to 1e-5 of the global gradient norm (some
are ~0 by symmetry). Denoisers run on the fast path (``prepare`` once, ``step`` per
step), as the sampler and the re-ranker run them; the training paths (``forward`` and the
indexed ``forward_indexed`` that stage 2 runs on unique features) are held to the same
official output, not to each other.
"""

from __future__ import annotations

import importlib.util
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import conftest_parity as fx
from conftest_parity import assert_close, assert_equal
from diffret_cli import metrics as M
from diffret_cli.convert import convert_official
from diffret_cli.diffusion import DiffusionCoefficients, one_hot_target
from diffret_cli.losses import generation_loss, generation_loss_from_output
from diffret_cli.model import similarity as similarity_mod
from diffret_cli.model.similarity import TokenWiseSimilarity
from diffret_cli.model.temporal import TemporalTransformer
from diffret_cli.registry import registry
from diffret_cli.rerank import rerank
from parity_weights import digest16, formula_tensor

DIRECTIONS = ("t2v", "v2t")
#: official diffusion "model_mean_type" -> what diffret's samplers call the prediction
MEAN_TYPE = {"START_X": "x0", "EPSILON": "eps"}


# ------------------------------------------------------------------------- helpers
@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with fx.torch_threads(1):
        yield


@contextmanager
def spy_softmax():
    """Record every ``torch.softmax`` output (the official fixtures record theirs the same
    way; diffret exposes no frame-attention tensor otherwise)."""
    calls: list[torch.Tensor] = []
    original = torch.softmax

    def wrapped(*args, **kwargs):
        out = original(*args, **kwargs)
        calls.append(out.detach().clone())
        return out

    torch.softmax = wrapped
    try:
        yield calls
    finally:
        torch.softmax = original


@contextmanager
def forward_hooks(modules: dict[str, torch.nn.Module], *, pre: bool = False):
    """{name: (inputs, output)} for each call of each module (last call wins)."""
    seen: dict[str, tuple] = {}
    handles = []
    for name, mod in modules.items():
        if pre:
            handles.append(mod.register_forward_pre_hook(
                lambda m, args, name=name: seen.__setitem__(name, (args, None))))
        else:
            handles.append(mod.register_forward_hook(
                lambda m, args, out, name=name: seen.__setitem__(name, (args, out))))
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def build_denoiser(state: dict[str, torch.Tensor], direction: str, *, temp: float, fixture: str,
                   sub: str | None = None):
    """The registered denoiser of ``direction`` holding an official module's weights."""
    prefix, sd = fx.strip_prefix(state)
    shapes = fx.weight_spec(fixture, sub)["shapes"]
    pe_rows = [s[0] for n, s in shapes.items() if n.endswith("sequence_pos_encoder.pe")]
    kwargs = {"width": sd["q_proj.weight"].shape[1], "temp": temp}
    if pe_rows:
        kwargs["max_steps"] = pe_rows[0]
    m = registry().create("denoisers", direction, **kwargs)
    m.load_state_dict(sd, strict=True)
    return m.eval()


def denoiser_temp(fixture: str) -> float:
    return float(fx.readme(fixture)["hyperparameters"]["temp"])


def make_sampler(hp: dict, *, schedule_key: str = "schedule", steps_key: str = "steps"):
    return registry().create(
        "samplers", "ddim", schedule=hp[schedule_key], num_steps=int(hp[steps_key]),
        eta=float(hp.get("eta", 0.0)), clip_denoised=bool(hp.get("clip_denoised", True)),
        prediction=MEAN_TYPE[hp.get("model_mean_type", "START_X")])


def check_metrics(ours: dict, ref: dict, what: str) -> None:
    """diffret's metric names vs the official compute_metrics dict."""
    pairs = {"R@1": "R1", "R@5": "R5", "R@10": "R10", "R@50": "R50", "MdR": "MR", "MnR": "MeanR"}
    for mine, theirs in pairs.items():
        assert ours[mine] == pytest.approx(ref[theirs], rel=1e-9, abs=1e-9), \
            f"{what} {mine}: {ours[mine]} != official {theirs} {ref[theirs]}"


# -------------------------------------------------------------------- the fixture set
def test_fixture_set_is_complete():
    missing = [n for n in fx.EXPECTED if not (fx.PARITY_DIR / n / "README.json").is_file()
               or not (fx.PARITY_DIR / n / "io.safetensors").is_file()]
    assert not missing, f"parity set {fx.PARITY_DIR} lacks fixtures {missing}"
    assert fx.schedule_fixtures(), f"parity set {fx.PARITY_DIR} has no schedule_* fixture"
    assert fx.set_readme()["weights"]["test_vectors"], "SET_README.json has no weight test vectors"


def test_weight_formula_test_vectors():
    """The generator reproduces the worked examples of SET_README.json value by value."""
    vectors = fx.set_readme()["weights"]["test_vectors"]
    for v in vectors:
        arr = formula_tensor(v["seed"], v["name"], v["shape"], v["kind"]).reshape(-1)
        for index, value in v["values_at"].items():
            assert arr[int(index)] == np.float32(value), f"{v['name']}[{index}]: {arr[int(index)]} != {value}"
        assert digest16(arr) == v["sha256_16_float32"], v["name"]


def _weight_sections():
    for name in fx.EXPECTED:
        w = fx.readme(name).get("weights")
        if not w:
            continue
        if "seed" in w:
            yield name, None, w
        else:  # one section per module (gen_loss: t2v, v2t)
            for sub, ws in w.items():
                yield name, sub, ws


def test_weight_digests_of_every_fixture():
    """Every generated tensor matches its sha256 digest (official_state_dict asserts it),
    and every non-buffer parameter of every fixture has a digest to match."""
    checked = 0
    for name, sub, w in _weight_sections():
        sd = fx.weights(name, sub)
        digests = w["sha256_16_float32"]
        expected = {n for n, k in w["kinds"].items() if k != "pe_buffer"}
        assert set(sd) == expected, f"{name}/{sub}: generated {len(sd)} tensors, README lists {len(expected)}"
        assert expected <= set(digests), f"{name}/{sub}: no digest for {sorted(expected - set(digests))[:5]}"
        for n, t in sd.items():
            assert list(t.shape) == list(w["shapes"][n]), f"{name}: {n} shape"
        checked += len(sd)
    assert checked > 0


# ---------------------------------------------------------------------------- denoisers
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_denoiser(direction):
    name = f"denoiser_{direction}"
    hp, ref = fx.readme(name)["hyperparameters"], fx.io(name)
    m = build_denoiser(fx.weights(name), direction, temp=hp["temp"], fixture=name)
    assert tuple(ref["x"].shape) == (hp["b"], hp["K"])
    n_pe = ref["pe_first64"].shape[0]
    assert_close(m.embed_timestep.pe[:n_pe], ref["pe_first64"], "sinusoidal step table")
    args = (ref["text_emb"], ref["video_emb"], ref["video_mask"])
    with torch.no_grad():
        assert_close(m(ref["x"], ref["t"], *args), ref["output"], f"{direction} forward")
        # the indexed path stage 2 trains with (unique features + candidate indices), on
        # identity indices, must give the official output too
        b, k = ref["x"].shape
        text, video, vmask = args
        query, cand = torch.arange(b), torch.arange(b * k).reshape(b, k)
        if direction == "t2v":
            idx = m.forward_indexed(ref["x"], ref["t"], text=text, video=video.flatten(0, 1),
                                    video_mask=vmask.flatten(0, 1), query_index=query, cand_index=cand)
        else:
            idx = m.forward_indexed(ref["x"], ref["t"], text=text.flatten(0, 1), video=video, video_mask=vmask,
                                    query_index=query, cand_index=cand)
        assert_close(idx, ref["output"], f"{direction} forward_indexed")
        with spy_softmax() as frame_soft:
            ctx = m.prepare(*args)
        with spy_softmax() as cand_soft, forward_hooks({"proj": m.proj, "dec": m.decoder[2]}) as seen:
            out = m.step(ref["x"], ref["t"], ctx)
        cond = m.embed_timestep(ref["t"])
    assert_close(out, ref["output"], f"{direction} prepare+step")
    assert_close(cond, ref["inter.cond_emb"], "cond = embed_timestep(t)")
    # Eq. 4 frame attention (before the mask), the only softmax prepare() takes
    frame = [s for s in frame_soft if s.shape == ref["inter.frame_attn_softmax"].shape]
    assert len(frame) == 1, f"expected one frame softmax in prepare(), saw {[tuple(s.shape) for s in frame_soft]}"
    assert_close(frame[0], ref["inter.frame_attn_softmax"], "frame attention softmax")
    # Eq. 5-6: q, k, v from the step-invariant parts + the step's cond (linearity)
    c = ctx.tensors
    wq, wk, wv = m.q_proj.weight, m.k_proj.weight, m.v_proj.weight
    q_inv = c["q_text"] if direction == "t2v" else c["q_video"]
    q = q_inv + (F.linear(cond, wq) if direction == "t2v" else F.linear(cond, wq)[:, None])
    assert_close(q, ref["inter.q"], "q = Wq(query + cond)")
    assert_close(c["k_c"] + F.linear(cond, wk)[:, None], ref["inter.k"], "k = Wk(candidates + cond)")
    assert_close(c["v_c"] + F.linear(cond, wv)[:, None], ref["inter.v"], "v = Wv(candidates + cond)")
    cand = [s for s in cand_soft if s.shape == ref["inter.cand_weight_softmax"].shape]
    assert len(cand) == 1, f"expected one candidate softmax in step(), saw {[tuple(s.shape) for s in cand_soft]}"
    assert_close(cand[0], ref["inter.cand_weight_softmax"], "candidate weights softmax_K(q.k + x_t)")
    (pooled,), new_emb = seen["proj"]
    assert_close(pooled, ref["inter.attn_pooled"], "sum_K weight * v")
    assert_close(new_emb, ref["inter.new_emb"], "proj output")
    assert_close(seen["dec"][1].squeeze(-1), ref["inter.decoder_out"], "decoder output")


def test_bench_naive_reference_matches_official():
    """bench/bench_ddim.py's naive baseline is the official forward (so its speed-up is real)."""
    path = Path(__file__).resolve().parents[1] / "bench" / "bench_ddim.py"
    spec = importlib.util.spec_from_file_location("bench_ddim_for_test", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for direction in DIRECTIONS:
        name = f"denoiser_{direction}"
        ref = fx.io(name)
        m = build_denoiser(fx.weights(name), direction, temp=denoiser_temp(name), fixture=name)
        with torch.no_grad():
            out = bench.naive_forward(m, ref["x"], ref["t"], ref["text_emb"], ref["video_emb"], ref["video_mask"])
        assert_close(out, ref["output"], f"bench naive {direction}")


# ---------------------------------------------------------------------------- schedules
@pytest.mark.parametrize("name", fx.schedule_fixtures() or ["schedule_<none found>"])
def test_schedule(name):
    hp, ref = fx.readme(name)["hyperparameters"], fx.io(name)
    steps = int(hp["steps"])
    raw = registry().create("schedules", hp["schedule"], num_steps=steps).betas()
    coef = DiffusionCoefficients.from_betas(raw)
    exact = lambda r: 1e-12 * float(r.abs().max()) + 1e-15  # noqa: E731 - float64 on both sides
    assert_close(torch.from_numpy(raw), ref["raw_betas"], "raw betas", atol=exact(ref["raw_betas"]))
    fields = [k for k in ref if hasattr(coef, k) and isinstance(getattr(coef, k), np.ndarray)]
    assert len(fields) >= 10, f"{name}: only {fields} compared"
    for k in fields:
        assert_close(torch.from_numpy(getattr(coef, k)), ref[k], f"{name} {k}", atol=exact(ref[k]))
    sampler = make_sampler(hp)
    assert_equal(torch.tensor(sampler.timestep_map), ref["timestep_map"], "timestep_map")
    if "x0" not in ref:
        return
    b, k = int(hp["b"]), int(hp["K"])
    assert_equal(one_hot_target(b, k), ref["x0"], "x0 target")
    if "x0_neg" in ref:
        assert_equal(one_hot_target(b, k, negative_value=-1.0), ref["x0_neg"], "x0 target with negatives -1")
    variants = [s for s in ("", "_neg", "_rand") if f"x_t{s}" in ref]
    assert variants
    for s in variants:
        assert_close(coef.q_sample(ref[f"x0{s}"], ref["t"], ref["noise"]), ref[f"x_t{s}"], f"q_sample x_t{s}")


# --------------------------------------------------------------------------------- DDIM
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_ddim_trajectory(direction):
    name = f"ddim_{direction}"
    hp, ref = fx.readme(name)["hyperparameters"], fx.io(name)
    cond = fx.input_source(name, "text_emb")
    source = f"denoiser_{direction}"
    m = build_denoiser(fx.weights(name), direction, temp=denoiser_temp(source), fixture=name)
    sampler = make_sampler(hp)
    args = (cond["text_emb"], cond["video_emb"], cond["video_mask"])
    calls = []
    with torch.no_grad():
        ctx = m.prepare(*args)

        def model_fn(x, t):
            calls.append((x.clone(), t.clone()))
            return m.step(x, t, ctx)

        res = sampler.sample(model_fn, ref["noise"], record=True)
        slow = sampler.sample(lambda x, t: m(x, t, *args), ref["noise"]).sample
    n = ref["traj_model_t"].shape[0]
    assert len(calls) == n == int(hp["steps"]) and len(res.trajectory) == n
    assert_equal(torch.stack([t for _, t in calls]), ref["traj_model_t"], "timesteps fed to the model")
    assert sampler.timesteps() == ref["traj_model_t"][:, 0].tolist()
    assert_close(torch.stack([x for x, _ in calls]), ref["traj_model_x"], "x_t fed to the model")
    assert_close(torch.stack([r["model_output"] for r in res.trajectory]), ref["traj_model_output"], "raw outputs")
    assert_close(torch.stack([r["pred_x0"] for r in res.trajectory]), ref["traj_pred_xstart"], "clamped x0")
    traj_x = torch.stack([ref["noise"]] + [x for x, _ in calls[1:]] + [res.sample])
    assert_close(traj_x, ref["traj_x"], "x after each step")
    assert_close(res.sample, ref["sample"], f"{direction} DDIM sample (fast path)")
    assert_close(torch.softmax(res.sample, dim=-1), ref["softmax_sample"], "softmax(sample)")
    assert_close(slow, ref["sample"], f"{direction} DDIM sample (forward path)")


# ------------------------------------------------------------------------ generation loss
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_generation_loss_and_gradients(direction):
    r, ref = fx.readme("gen_loss"), fx.io("gen_loss")
    hp = r["hyperparameters"]
    source = f"denoiser_{direction}"
    assert any(Path(p).parent.name == source for p in r["inputs_from"]), r["inputs_from"]
    cond = fx.io(source)
    coef = DiffusionCoefficients.from_betas(
        registry().create("schedules", hp["schedule"], num_steps=int(hp["steps"])).betas())
    m = build_denoiser(fx.weights("gen_loss", direction), direction, temp=denoiser_temp(source),
                       fixture="gen_loss", sub=direction).train()
    p = f"{direction}."
    neg = -1.0 if hp.get("neg", 0) else 0.0
    x0 = one_hot_target(*ref[p + "noise"].shape, negative_value=neg)
    assert_equal(x0, ref[p + "x0"], "target")
    assert_close(coef.q_sample(x0, ref[p + "t"], ref[p + "noise"]), ref[p + "x_t"], "x_t")
    loss, out = generation_loss(m, coef, text=cond["text_emb"], video=cond["video_emb"],
                                video_mask=cond["video_mask"], t=ref[p + "t"], noise=ref[p + "noise"],
                                temp=float(hp["d_temp"]), negative_value=neg)
    assert_close(out, ref[p + "model_output"], "model output")
    assert float(loss.detach()) == pytest.approx(float(ref[p + "loss"]), rel=1e-5)
    per = generation_loss_from_output(out.detach(), x0, temp=float(hp["d_temp"]), reduction="none")
    ref_per = ref[p + "per_sample_loss"]
    assert_close(per, ref_per, "per-sample loss", atol=1e-5 * float(ref_per.abs().max()))
    loss.backward()
    grads = {n: q.grad for n, q in m.named_parameters() if q.grad is not None}
    norm = float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads.values())))
    ref_norm = float(ref[p + "grad_total_norm"])
    assert norm == pytest.approx(ref_norm, rel=1e-5)
    keys = [k for k in ref if k.startswith(p + "grad.")]
    assert keys
    for k in keys:
        assert_close(grads[k[len(p + "grad."):]], ref[k], k, atol=1e-5 * ref_norm)


def test_generation_loss_total(monkeypatch):
    """Stage-2 loss = CE_t2v + CE_v2t (summed, not averaged): diffret's two directional
    losses on the fixture's inputs add up to the official total, and the model's stage-2
    objective (DiffusionRet.generation_loss) is their sum."""
    from types import SimpleNamespace

    import diffret_cli.losses as losses_mod
    from diffret_cli.model.diffusionret import DiffusionRet

    r, ref = fx.readme("gen_loss"), fx.io("gen_loss")
    hp = r["hyperparameters"]
    coef = DiffusionCoefficients.from_betas(
        registry().create("schedules", hp["schedule"], num_steps=int(hp["steps"])).betas())
    neg = -1.0 if hp.get("neg", 0) else 0.0
    parts = {}
    for d in DIRECTIONS:
        source = f"denoiser_{d}"
        cond = fx.io(source)
        m = build_denoiser(fx.weights("gen_loss", d), d, temp=denoiser_temp(source), fixture="gen_loss",
                           sub=d).train()
        with torch.no_grad():
            loss, _ = generation_loss(m, coef, text=cond["text_emb"], video=cond["video_emb"],
                                      video_mask=cond["video_mask"], t=ref[f"{d}.t"], noise=ref[f"{d}.noise"],
                                      temp=float(hp["d_temp"]), negative_value=neg)
        parts[d] = float(loss)
    assert parts["t2v"] + parts["v2t"] == pytest.approx(float(ref["generation_loss"]), rel=1e-5)
    assert (parts["t2v"] + parts["v2t"]) / 2 != pytest.approx(float(ref["generation_loss"]), rel=1e-3)

    # the model's objective combines the two directions by the same rule: each
    # direction's loss is replaced by a known value, the objective must be their sum
    returned = iter([torch.tensor(parts["t2v"]), torch.tensor(parts["v2t"])])
    monkeypatch.setattr(losses_mod, "generation_loss", lambda *a, **k: (next(returned), None))
    stub = SimpleNamespace(denoiser_t2v=None, denoiser_v2t=None, _training_schedule=lambda: coef)
    b, k, n, frames, dim = 2, 3, 4, 2, 5
    total, extras = DiffusionRet.generation_loss(
        stub, torch.zeros(n, dim), torch.zeros(n, frames, dim), torch.ones(n, frames, dtype=torch.bool),
        queries=torch.arange(b), cand_v=torch.zeros(b, k, dtype=torch.long),
        cand_t=torch.zeros(b, k, dtype=torch.long), generator=torch.Generator().manual_seed(0))
    assert float(total) == pytest.approx(float(ref["generation_loss"]), rel=1e-5)
    assert float(extras["loss_t2v"]) == parts["t2v"] and float(extras["loss_v2t"]) == parts["v2t"]


# ------------------------------------------------------------------------ WTI similarity
def test_wti_similarity():
    hp, ref = fx.readme("wti_similarity")["hyperparameters"], fx.io("wti_similarity")
    sd = fx.weights("wti_similarity")
    s = TokenWiseSimilarity(width=sd["text_weight_fc.0.weight"].shape[1]).eval()
    s.load_state_dict(sd, strict=True)
    assert similarity_mod.MASK_FILL == hp["mask_fill"]
    tf, tm, vf, vm = ref["text_feat"], ref["text_mask"], ref["video_feat"], ref["video_mask"]
    with torch.no_grad():
        logits = s(tf, tm, vf, vm)
        assert_close(s.text_weight_fc(tf).squeeze(-1), ref["inter.text_weight_logit"], "text weight logits")
        assert_close(s.video_weight_fc(vf).squeeze(-1), ref["inter.video_weight_logit"], "video weight logits")
        t, tw = s.prepare_text(tf, tm)
        v, vw = s.prepare_video(vf, vm)
        a = torch.einsum("atd,bvd->abtv", t, v)
        # combine is linear in the weights: zero one side to read the other part
        t2v = 2 * s.combine(t, tw, v, torch.zeros_like(vw))
        v2t = 2 * s.combine(t, torch.zeros_like(tw), v, vw)
        s.chunk_size = 2
        chunked = s(tf, tm, vf, vm)
    assert_close(logits, ref["logits"], "S")
    assert_close(logits.t(), ref["logits_T"], "S^T")
    assert_close(a, ref["inter.retrieve_logits_masked"], "masked cosine word-frame matrix")
    assert_close(t2v, ref["inter.t2v_part"], "t2v part")
    assert_close(v2t, ref["inter.v2t_part"], "v2t part")
    assert_close(chunked, ref["logits"], "S computed in chunks")


# ------------------------------------------------------------------ temporal transformer
def test_temporal_transformer():
    hp, ref = fx.readme("temporal_agg")["hyperparameters"], fx.io("temporal_agg")
    sd = {k.replace("transformerClip.", ""): v for k, v in fx.weights("temporal_agg").items()}
    layers = len({k.split(".")[1] for k in sd if k.startswith("resblocks.")})
    assert layers == int(hp["layers"])
    pos = sd["frame_position_embeddings.weight"]
    m = TemporalTransformer(width=pos.shape[1], layers=layers, heads=int(hp["heads"]), max_frames=pos.shape[0]).eval()
    m.load_state_dict(sd, strict=True)
    blocks = {f"layer{i}": b for i, b in enumerate(m.resblocks)}
    with torch.no_grad(), forward_hooks(blocks) as seen:
        out = m(ref["video_feat"], ref["video_mask"])
    assert_close(out, ref["output"], "temporal transformer output")
    (x_in, mask), _ = seen["layer0"]
    assert_close(x_in.transpose(0, 1), ref["inter.transformer_in"], "features + frame positions")
    heads = m.heads
    assert_close(mask[::heads], ref["inter.extended_mask"], "additive padding mask")
    layer_keys = sorted(k for k in ref if k.startswith("inter.layer") and k.endswith("_out"))
    assert len(layer_keys) == layers
    for i in range(layers):
        assert_close(seen[f"layer{i}"][1].transpose(0, 1), ref[f"inter.layer{i}_out"], f"block {i} output")
    assert_close(seen[f"layer{layers - 1}"][1].transpose(0, 1), ref["inter.transformer_out"], "transformer output")


# ------------------------------------------------------------------------------ metrics
def test_metrics_single_caption():
    ref, res = fx.io("metrics"), fx.results("metrics")["single.compute_metrics"]
    sim = ref["single.sim"]
    gt = np.arange(sim.shape[0])
    ours = M.retrieval_metrics(sim, sim.t(), gt)
    check_metrics(ours["t2v"], res, "single t2v")
    assert (M.ranks_from_scores(sim, gt) - 1).tolist() == res["cols"]


def test_metrics_multi_caption():
    ref, res = fx.io("metrics"), fx.results("metrics")
    n_sent = ref["multi.n_sent"].numpy()
    caption_video = np.repeat(np.arange(len(n_sent)), n_sent)
    assert (np.cumsum(n_sent) == ref["multi.cut_off_points"].numpy()).all()
    ours = M.retrieval_metrics(ref["multi.t2v_flat"], ref["multi.v2t_raw"], caption_video)
    check_metrics(ours["t2v"], res["multi.tensor_text_to_video_metrics"], "multi t2v")
    v2t_ref = res["multi.compute_metrics(tensor_video_to_text_sim)"]
    check_metrics(ours["v2t"], v2t_ref, "multi v2t")
    assert (M.v2t_ranks(ref["multi.v2t_raw"], caption_video) - 1).tolist() == v2t_ref["cols"]


# ---------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def full_eval():
    """The converted official model of full_eval_small and everything it computes."""
    name = "full_eval_small"
    r, ref = fx.readme(name), fx.io(name)
    mc = r["model_config"]
    assert (mc["interaction"], mc["agg_module"]) == ("wti", "seqTransf"), "diffret implements wti + seqTransf"
    chunk = int(mc["t2v_num"])  # the official code splits texts AND videos by t2v_num
    den_args = {"args": {"temp": float(mc["temp"])}}
    model = convert_official(fx.weights(name), config_overrides={
        "max_words": int(mc["L"]), "max_frames": int(mc["T"]),
        "denoisers": {"t2v": den_args, "v2t": den_args},
        "sampler": {"name": "ddim",
                    "args": {"schedule": mc["noise_schedule"], "num_steps": int(mc["diffusion_steps"])}},
        "rerank": {"topk_t2v": int(mc["t2v_num"]), "topk_v2t": int(mc["v2t_num"]),
                   "alpha_t2v": float(mc["t2v_alpha"]), "alpha_v2t": float(mc["v2t_alpha"]),
                   "tau_t2v": float(mc["t2v_temp"]), "tau_v2t": float(mc["v2t_temp"]), "chunk_size": chunk},
    }).eval()
    video = fx.expand_frames(name, ref["video_lowres_int8"], int(mc["frame_upsample"]))
    used = {}

    def noise_fn(direction, index, shape):
        key = f"noise_{direction}_chunk{index}"
        assert key in ref, f"the fixture has no {key}"
        assert tuple(ref[key].shape) == tuple(shape), f"{key}: {tuple(ref[key].shape)} != requested {shape}"
        used[key] = True
        return ref[key]

    def run_rerank(sim, cls, frames, mask):
        record: dict = {}
        with torch.no_grad(), spy_softmax() as soft:
            t2v, v2t = rerank(sim, model=model, text_cls=cls, video_frames=frames, video_mask=mask,
                              noise_fn=noise_fn, record=record)
        return {"t2v": t2v, "v2t": v2t, "record": record, "soft": soft}

    with torch.no_grad():
        text = model.encode_text(ref["text_ids"], ref["text_mask"])
        frames = model.encoder.encode_frames(video, ref["video_mask"])
        vid = model.encode_frame_features(frames, ref["video_mask"])
        vid_direct = model.encode_video(video, ref["video_mask"])
        sim = model.similarity_matrix(text, vid)
    # end to end from our own features, and the re-ranking stage alone from the official
    # features (so its intermediates are not blurred by float32 noise from the encoders)
    e2e = run_rerank(sim, text.cls, vid.frames, vid.mask)
    used_e2e = set(used)
    staged = run_rerank(ref["sim_matrix"], ref["cls"], ref["video_feat"], ref["video_mask"])
    return dict(name=name, r=r, ref=ref, mc=mc, model=model, text=text, frames=frames, vid=vid,
                vid_direct=vid_direct, sim=sim, e2e=e2e, staged=staged, used=used_e2e)


def test_full_eval_architecture_inferred(full_eval):
    clip = full_eval["r"]["clip_config_inferred"]
    cfg = full_eval["model"].config
    mc = cfg["encoder"]["args"]["model_config"]
    assert mc["embed_dim"] == clip["embed_dim"]
    assert mc["vision_cfg"]["layers"] == clip["vision_layers"]
    assert mc["vision_cfg"]["width"] == clip["vision_width"]
    assert mc["vision_cfg"]["patch_size"] == clip["vision_patch_size"]
    assert mc["vision_cfg"]["image_size"] == clip["image_resolution"]
    assert mc["text_cfg"]["layers"] == clip["transformer_layers"]
    assert mc["text_cfg"]["width"] == clip["transformer_width"]
    assert mc["text_cfg"]["vocab_size"] == clip["vocab_size"]
    assert mc["text_cfg"]["context_length"] == clip["context_length"]
    assert cfg["temporal"]["layers"] == full_eval["mc"]["num_hidden_layers"]


def test_full_eval_features(full_eval):
    ref, text, vid = full_eval["ref"], full_eval["text"], full_eval["vid"]
    assert_close(text.tokens, ref["text_feat"], "token features")
    assert_close(text.cls, ref["cls"], "EOT (cls) features")
    assert_close(full_eval["frames"], ref["frame_feat"], "per-frame CLIP features")
    assert_close(vid.frames, ref["video_feat"], "temporal transformer output")
    assert_close(full_eval["vid_direct"].frames, ref["video_feat"], "encode_video")
    assert_close(full_eval["sim"], ref["sim_matrix"], "WTI similarity matrix")


def _check_rerank(run: dict, sim: torch.Tensor, ref: dict, mc: dict, what: str) -> None:
    record = run["record"]
    for d, s, num in (("t2v", sim, mc["t2v_num"]), ("v2t", sim.t(), mc["v2t_num"])):
        assert_equal(s.topk(int(num), dim=1).indices, ref[f"{d}_topk_ids"], f"{what}: {d} top-k candidates")
        assert_equal(torch.cat([c["candidates"] for c in record[d]]), ref[f"{d}_topk_ids"],
                     f"{what}: {d} re-ranked candidates")
        assert_close(torch.cat([c["sample"] for c in record[d]]), ref[f"ddim_{d}_sample"], f"{what}: {d} DDIM samples")
        if "chunks" in mc:  # chunk sizes the official loop used
            assert [len(c["rows"]) for c in record[d]] == list(mc["chunks"]), f"{what}: {d} chunks"
    assert_close(run["t2v"], ref["new_t2v_matrix"], f"{what}: fused t2v matrix")
    assert_close(run["v2t"], ref["new_v2t_matrix"], f"{what}: fused v2t matrix")


def test_full_eval_rerank_stage(full_eval):
    """Re-ranking alone, from the official features: candidates, frame attention of every
    prepare() call, DDIM samples, fused matrices."""
    ref, mc, run = full_eval["ref"], full_eval["mc"], full_eval["staged"]
    _check_rerank(run, ref["sim_matrix"], ref, mc, "staged")
    frames = [s for s in run["soft"] if s.dim() == 3]  # softmax over the T frames, t2v chunks first
    n_t2v = len(run["record"]["t2v"])
    assert len(frames) == n_t2v + len(run["record"]["v2t"])
    assert_close(torch.cat(frames[:n_t2v]), ref["inter.t2v_frame_softmax"], "t2v frame softmax")
    assert_close(torch.cat(frames[n_t2v:]), ref["inter.v2t_frame_softmax"], "v2t frame softmax")


def test_full_eval_end_to_end(full_eval):
    ref = full_eval["ref"]
    _check_rerank(full_eval["e2e"], full_eval["sim"], ref, full_eval["mc"], "end to end")
    noise_keys = {k for k in ref if k.startswith("noise_")}
    assert full_eval["used"] == noise_keys, "every fixed DDIM noise is used, each for its chunk"


def test_full_eval_metrics(full_eval):
    res = fx.results(full_eval["name"])
    run = full_eval["e2e"]
    n = run["t2v"].shape[0]
    ours = M.retrieval_metrics(run["t2v"], run["v2t"], np.arange(n))
    for d in DIRECTIONS:
        check_metrics(ours[d], res[d], f"full eval {d}")
        matrix = run[d]
        assert (M.ranks_from_scores(matrix, np.arange(n)) - 1).tolist() == res[d]["cols"], d
    assert ours["t2v"]["R@1"] == pytest.approx(res["eval_epoch_return_R1"])
