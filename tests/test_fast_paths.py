"""The fast paths compute what the plain paths compute.

- the re-ranker's folded sampling (``prepare_gallery`` / ``prepare_chunk`` / ``step``)
  equals ``step(prepare(gathered features))`` at every step index, and a whole re-ranking
  equals the generic loop's;
- a folded step's work is linear in D (no D x D product is left in the loop);
- ``forward_indexed`` (stage-2 training on unique features plus indices) equals
  ``forward`` on the gathered features in value and in every parameter's gradient, and
  so does ``generation_loss_indexed``;
- the WTI similarity over valid tokens only equals the all-slot formula.

Float64 checks the algebra (agreement to ~1e-12), float32 the rounding the code will
really see.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from diffret_cli import native
from diffret_cli.diffusion import DiffusionCoefficients
from diffret_cli.losses import generation_loss, generation_loss_indexed
from diffret_cli.model.similarity import TokenWiseSimilarity, wti_scores
from diffret_cli.registry import create
from diffret_cli.rerank import GalleryDenoiser, rerank_direction
from diffret_plugins.denoisers import query_candidate_sampling as qc_sampling

D, T = 16, 5
VARIANTS = [{}, {"scale_logits": True, "renormalize_frames": True}, {"temp": 0.5}]


def denoiser(direction: str, dtype=torch.float64, seed: int = 0, **kw):
    torch.manual_seed(seed)
    den = create("denoisers", direction, width=D, **kw).to(dtype).eval()
    with torch.no_grad():  # larger than the official N(0, 0.02) so every term matters
        for p in den.parameters():
            p.normal_(0.0, 0.3)
    return den


def gallery_features(n_text: int, n_video: int, dtype=torch.float64, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(n_text, D, generator=g).to(dtype)
    video = torch.randn(n_video, T, D, generator=g).to(dtype)
    mask = (torch.rand(n_video, T, generator=g) > 0.35).long()
    mask[:, 0] = 1
    mask[0, 1:] = 0  # a one-frame video
    return text, video, mask


def gathered(direction, text, video, mask, qi, ci):
    if direction == "t2v":
        return text[qi], video[ci], mask[ci]
    return text[ci], video[qi], mask[qi]


def close(a, b, rel: float) -> None:
    a, b = a.detach(), b.detach()
    scale = float(b.abs().max()) + 1e-30
    diff = float((a - b).abs().max())
    assert diff <= rel * scale, f"max|diff| {diff:.3e} > {rel:g} x max|ref| {scale:.3e}"


# ------------------------------------------------------------------ folded sampling
@pytest.mark.parametrize("pairs", [None, 1000])  # t2v: per-pair projections, or each frame projected once
@pytest.mark.parametrize("kw", VARIANTS)
@pytest.mark.parametrize("direction", ["t2v", "v2t"])
def test_folded_step_equals_explicit_step_at_every_step(direction, kw, pairs, monkeypatch):
    # blocks of 3 queries: the CPU path's blocked decoder (4 queries = 2 blocks); the
    # rerank test below runs one block, as on a GPU
    monkeypatch.setattr(qc_sampling, "CPU_BLOCK", 3)
    den = denoiser(direction, **kw)
    text, video, mask = gallery_features(7, 9)
    nq = 7 if direction == "t2v" else 9
    g = torch.Generator().manual_seed(2)
    qi = torch.randint(0, nq, (4,), generator=g)
    ci = torch.randint(0, 16 - nq, (4, 6), generator=g)  # repeats allowed, as in any top-K
    x = torch.randn(4, 6, generator=g, dtype=torch.float64)
    with torch.no_grad():
        ctx = den.prepare(*gathered(direction, text, video, mask, qi, ci))
        gallery = den.prepare_gallery(text, video, mask, timesteps=[49, 30, 0], pairs=pairs)
        assert ("frames_proj" in gallery.tables) == (direction == "t2v" and pairs is not None)
        folded = den.prepare_chunk(gallery, qi, ci)
        for step in (0, 1, 17, 49):  # every row of the table, not only the sampler's steps
            t = torch.full((4,), step)
            close(den.step(x, t, folded), den.step(x, t, ctx), 1e-12)
        mixed = torch.tensor([3, 49, 0, 12])  # rows at different steps
        close(den.step(x, mixed, folded), den.step(x, mixed, ctx), 1e-12)
        for outside in (torch.full((4,), 50), torch.full((1,), 50).expand(4), torch.full((1,), -1).expand(4)):
            with pytest.raises(IndexError):  # beyond the table: an error, never a wrong row
                den.step(x, outside, folded)
    # with gradients the step takes the path a GPU takes (no scratch buffer, no blocks)
    with torch.enable_grad():
        close(den.step(x, mixed, folded), den.step(x, mixed, ctx), 1e-12)


@pytest.mark.parametrize("direction", ["t2v", "v2t"])
def test_rerank_fast_path_equals_generic_loop_float32(direction):
    """A whole re-ranking (50 DDIM steps, clamped x0, fused scores) on the gallery
    protocol matches the generic prepare/step loop on gathered features."""
    den = denoiser(direction, dtype=torch.float32)
    with torch.no_grad():
        for p in den.parameters():
            p.mul_(0.2)
    text, video, mask = gallery_features(10, 10, dtype=torch.float32)

    class Plain(torch.nn.Module):  # the same denoiser without the gallery protocol
        def __init__(self, inner):
            super().__init__()
            self.inner, self.direction = inner, inner.direction

        def prepare(self, *a):
            return self.inner.prepare(*a)

        def step(self, *a):
            return self.inner.step(*a)

        def fuse(self, *a, **k):
            return self.inner.fuse(*a, **k)

    assert isinstance(den, GalleryDenoiser) and not isinstance(Plain(den), GalleryDenoiser)
    scores = torch.rand(10, 10, generator=torch.Generator().manual_seed(5))
    sampler = create("samplers", "ddim", num_steps=50)
    runs = []
    for d in (den, Plain(den)):
        rec: list = []
        out = rerank_direction(scores, direction=direction, denoiser=d, sampler=sampler, text_cls=text,
                               video_frames=video, video_mask=mask, topk=6, chunk_size=4,
                               generator=torch.Generator().manual_seed(0), record=rec)
        runs.append((out, torch.cat([r["sample"] for r in rec])))
    (fast, fast_sample), (plain, plain_sample) = runs
    assert [len(r) for r in (fast_sample, plain_sample)] == [10, 10]
    close(fast_sample, plain_sample, 1e-5)
    close(fast, plain, 1e-5)
    top = scores.topk(6, dim=1).indices
    keep = torch.ones_like(scores, dtype=torch.bool).scatter_(1, top, False)
    assert torch.equal(fast[keep], scores[keep])  # only the top K moved


def _matrix_vector_flops(a_shape, x_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * a_shape[0] * a_shape[1]


def _addmv_flops(bias_shape, a_shape, x_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * a_shape[0] * a_shape[1]


#: torch's FlopCounterMode counts matrix-matrix products only; the step's reductions are
#: matrix-vector products (mv, addmv), counted here so that no work goes unseen
MATRIX_VECTOR_FLOPS = {torch.ops.aten.mv: _matrix_vector_flops, torch.ops.aten.addmv: _addmv_flops}


@pytest.mark.parametrize("direction", ["t2v", "v2t"])
def test_folded_step_work_is_linear_in_width(direction):
    """Per step only K-wide products remain: FLOPs per query per candidate grow with D,
    not with D^2 (the D x D maps were applied before the loop)."""
    flops = {}
    for width in (32, 128):
        torch.manual_seed(0)
        den = create("denoisers", direction, width=width).eval()
        b, k, n = 4, 8, 12
        text, video = torch.randn(n, width), torch.randn(n, T, width)
        mask = torch.ones(n, T, dtype=torch.long)
        qi, ci = torch.arange(b), torch.arange(b * k).remainder(n).view(b, k)
        # the torch ops (the fused C kernel, tests/test_native.py, does the same arithmetic
        # where the counter cannot see it)
        with torch.no_grad(), native.disabled():
            ctx = den.prepare_chunk(den.prepare_gallery(text, video, mask, timesteps=[9, 0]), qi, ci)
            with FlopCounterMode(display=False, custom_mapping=MATRIX_VECTOR_FLOPS) as counter:
                den.step(torch.randn(b, k), torch.full((b,), 9), ctx)
        flops[width] = counter.get_total_flops() / (b * k * width)
    # two K x 2D products per query (the weighted sum and the last layer): 8 FLOPs per
    # (k, d), and one 2D dot per query (w2 . u): 4 / K more
    assert flops[32] == pytest.approx(8.0 + 4.0 / 8, rel=0.02)
    assert flops[128] == pytest.approx(flops[32], rel=0.05)


# ---------------------------------------------------------------- indexed training
def indexed_case(direction, dtype, seed=3, k=5):
    """K = 5 < the unique candidate items (the pairs are gathered), or K = 10 > them (the
    decoder runs on every pair, training's case); repeats in every row either way."""
    text, video, mask = gallery_features(9, 8, dtype=dtype, seed=seed)
    nq, nc = (9, 8) if direction == "t2v" else (8, 9)
    g = torch.Generator().manual_seed(seed)
    qi = torch.randint(0, nq, (6,), generator=g)
    ci = torch.randint(0, nc, (6, k), generator=g)
    ci[:, 0] = torch.arange(6) % nc
    x = torch.randn(6, k, generator=g).to(dtype)
    t = torch.randint(0, 50, (6,), generator=g)  # a different step per row, as in training
    return text, video, mask, qi, ci, x, t


@pytest.mark.parametrize("dtype, rel", [(torch.float64, 1e-11), (torch.float32, 2e-5)])
@pytest.mark.parametrize("kw", VARIANTS)
@pytest.mark.parametrize("k", [5, 10])
@pytest.mark.parametrize("direction", ["t2v", "v2t"])
def test_forward_indexed_equals_gathered_forward_and_gradients(direction, k, kw, dtype, rel):
    den = denoiser(direction, dtype=dtype, **kw).train()
    text, video, mask, qi, ci, x, t = indexed_case(direction, dtype, k=k)
    params = list(den.parameters())
    ref = den(x, t, *gathered(direction, text, video, mask, qi, ci))
    fast = den.forward_indexed(x, t, text=text, video=video, video_mask=mask, query_index=qi, cand_index=ci)
    close(fast, ref, rel)
    probe = torch.randn(ref.shape, generator=torch.Generator().manual_seed(9)).to(dtype)
    g_ref = torch.autograd.grad((ref * probe).sum(), params)
    g_fast = torch.autograd.grad((fast * probe).sum(), params)
    for (name, _), a, b in zip(den.named_parameters(), g_fast, g_ref):
        assert float(b.abs().max()) > 0, f"{name}: no gradient reaches it"
        close(a, b, 10 * rel)


@pytest.mark.parametrize("direction", ["t2v", "v2t"])
def test_generation_loss_indexed_equals_gathered_loss(direction):
    den = denoiser(direction, dtype=torch.float32).train()
    with torch.no_grad():
        for p in den.parameters():
            p.mul_(0.1)
    text, video, mask, qi, ci, _, t = indexed_case(direction, torch.float32, seed=4, k=10)
    coef = DiffusionCoefficients.from_betas(create("schedules", "cosine", num_steps=50).betas())
    noise = torch.randn(ci.shape, generator=torch.Generator().manual_seed(1))
    valid = torch.ones_like(ci, dtype=torch.bool)
    valid[1, 3:] = False  # padding slots, left out of the loss
    g_text, g_video, g_mask = gathered(direction, text, video, mask, qi, ci)
    a, _ = generation_loss(den, coef, text=g_text, video=g_video, video_mask=g_mask, t=t, noise=noise,
                           candidate_mask=valid)
    b, _ = generation_loss_indexed(den, coef, text=text, video=video, video_mask=mask, query_index=qi,
                                   cand_index=ci, t=t, noise=noise, candidate_mask=valid)
    assert float(b.detach()) == pytest.approx(float(a.detach()), rel=1e-5)
    ga = torch.autograd.grad(a, list(den.parameters()))
    gb = torch.autograd.grad(b, list(den.parameters()))
    norm = float(torch.sqrt(sum((g.double() ** 2).sum() for g in ga)))
    assert norm > 0
    for x, y in zip(gb, ga):
        assert float((x - y).abs().max()) <= 1e-4 * norm


@pytest.mark.parametrize("direction", ["t2v", "v2t"])
def test_masked_candidates_take_no_part_in_the_attention(direction):
    """Padding slots (exclusive hard negatives of a short row) are left out of Eq. 5's
    softmax: what they hold changes nothing at the real slots, in both training paths,
    and an all-True mask is no mask."""
    den = denoiser(direction, dtype=torch.float64).train()
    text, video, mask, qi, ci, x, t = indexed_case(direction, torch.float64, k=10)
    valid = torch.ones_like(ci, dtype=torch.bool)
    valid[1, 6:] = False
    valid[4, 2:] = False
    nc = 8 if direction == "t2v" else 9
    other = torch.where(valid, ci, (ci + 3) % nc)  # other items in the padding slots
    assert not torch.equal(other, ci)

    def both(cand, cand_mask):
        a = den(x, t, *gathered(direction, text, video, mask, qi, cand), candidate_mask=cand_mask)
        b = den.forward_indexed(x, t, text=text, video=video, video_mask=mask, query_index=qi,
                                cand_index=cand, candidate_mask=cand_mask)
        close(a, b, 1e-11)
        return a

    masked, moved = both(ci, valid), both(other, valid)
    close(masked[valid], moved[valid], 1e-11)
    plain = both(ci, None)
    assert float((masked[valid] - plain[valid]).detach().abs().max()) > 1e-6  # the padding mattered before
    close(both(ci, torch.ones_like(valid)), plain, 1e-12)
    xg = x.clone().requires_grad_(True)
    out = den(xg, t, *gathered(direction, text, video, mask, qi, ci), candidate_mask=valid)
    (grad,) = torch.autograd.grad(out[valid].sum(), xg)
    assert torch.equal(grad[~valid], torch.zeros_like(grad[~valid]))  # no path from a padding slot
    # and so the training loss does not depend on what the padding slots hold
    coef = DiffusionCoefficients.from_betas(create("schedules", "cosine", num_steps=50).betas())
    noise = torch.randn(ci.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    losses = [generation_loss_indexed(den, coef, text=text, video=video, video_mask=mask, query_index=qi,
                                      cand_index=cand, t=t, noise=noise, candidate_mask=valid)[0]
              for cand in (ci, other)]
    assert float(losses[0].detach()) == pytest.approx(float(losses[1].detach()), rel=1e-12)



def test_a_denoiser_that_does_not_mask_candidates_refuses_the_mask_and_trains_without_it():
    """The shared ``Denoiser.forward`` hands ``candidate_mask`` to ``step`` only for a
    denoiser that declares ``masks_candidates``; another one would attend to the padding
    anyway, so it refuses the mask, and the loss calls it without one (masking the loss only)."""
    from diffret_cli.sdk import Denoiser, DenoiserContext

    class MeanOfCandidates(Denoiser):  # a third-party denoiser written before masks existed
        direction, width = "t2v", 4

        def prepare(self, text, video, video_mask):
            return DenoiserContext(tensors={"pooled": video.mean(dim=(2, 3))})  # [B,K]

        def step(self, x_t, t, ctx):
            assert "candidate_mask" not in ctx.tensors
            return x_t + ctx.tensors["pooled"]

    den = MeanOfCandidates()
    g = torch.Generator().manual_seed(0)
    text, video = torch.randn(3, 4, generator=g), torch.randn(3, 5, 2, 4, generator=g)
    vmask, x, t = torch.ones(3, 5, 2), torch.randn(3, 5, generator=g), torch.tensor([1, 2, 3])
    valid = torch.ones(3, 5, dtype=torch.bool)
    valid[0, 3:] = False
    with pytest.raises(ValueError, match="MeanOfCandidates does not take candidate_mask"):
        den(x, t, text, video, vmask, candidate_mask=valid)
    close(den(x, t, text, video, vmask), x + video.mean(dim=(2, 3)), 0.0)
    coef = DiffusionCoefficients.from_betas(create("schedules", "cosine", num_steps=50).betas())
    noise = torch.randn(3, 5, generator=g)
    loss, x0_hat = generation_loss(den, coef, text=text, video=video, video_mask=vmask, t=t, noise=noise,
                                   temp=1.0, candidate_mask=valid)
    from diffret_cli.losses import generation_loss_from_output, one_hot_target

    x0 = one_hot_target(3, 5, device=noise.device)
    expected = den(coef.q_sample(x0, t, noise), t, text, video, vmask)
    close(x0_hat, expected, 0.0)
    ref = generation_loss_from_output(expected, x0, kind="kl", temp=1.0, candidate_mask=valid)
    assert float(loss) == pytest.approx(float(ref), rel=1e-6)
    assert float(loss) != pytest.approx(float(generation_loss_from_output(expected, x0, kind="kl", temp=1.0)),
                                        rel=1e-3)  # the mask reached the loss


# ---------------------------------------------------------------------- similarity
def similarity_case(seed=0, words=9, frames=4):
    g = torch.Generator().manual_seed(seed)
    s = TokenWiseSimilarity(width=D).double().eval()
    nt, nv = 11, 7
    tf = torch.randn(nt, words, D, generator=g).double()
    lengths = torch.tensor([1, 2, 9, 4, 4, 9, 3, 5, 0, 7, 4])
    tm = (torch.arange(words) < lengths[:, None]).long()
    tm[10] = torch.tensor([0, 1, 0, 1, 1, 0, 0, 1, 0])  # valid slots need not lead
    vf = torch.randn(nv, frames, D, generator=g).double()
    vm = (torch.arange(frames) < torch.tensor([4, 1, 3, 4, 2, 4, 4])[:, None]).long()
    return s, tf, tm, vf, vm


def test_wti_over_valid_tokens_equals_all_slots():
    s, tf, tm, vf, vm = similarity_case()
    with torch.no_grad():
        t, tw = s.prepare_text(tf, tm)
        v, vw = s.prepare_video(vf, vm)
        dense = s.combine(t, tw, v, vw)
        for block in (1 << 24, 5):  # one block, and blocks of a single video
            close(wti_scores(t, tw, tm, v, vw, block_elements=block), dense, 1e-12)
        close(s(tf, tm, vf, vm), dense, 1e-12)  # forward without gradients takes this path
    assert torch.equal(dense[8], torch.zeros(7, dtype=dense.dtype))  # no valid word: 0, as officially
    # text 0 has one valid word; where its cosine with a valid frame is negative, the max
    # over words is the padded slots' 0 (the clamp in wti_scores): the case is exercised
    cos = torch.einsum("d,vfd->vf", t[0, 0], v)
    assert bool((cos[vm == 1] < 0).any())


def test_similarity_keeps_gradients_on_the_training_path():
    s, tf, tm, vf, vm = similarity_case(seed=1)
    tf.requires_grad_(True)
    out = s(tf, tm, vf, vm)
    (out * torch.arange(out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    with torch.no_grad():
        close(out, s(tf, tm, vf, vm), 1e-12)
    assert tf.grad is not None and float(tf.grad[tm == 1].abs().sum()) > 0
    assert float(tf.grad[tm == 0].abs().max()) == 0.0  # padded slots take no part


def test_step_tables_follow_weight_updates():
    """The weight-only tables are reused between galleries at inference, and rebuilt as
    soon as a weight changes in place (an optimiser step, a checkpoint load)."""
    den = denoiser("t2v")
    text, video, mask = gallery_features(5, 6)
    qi, ci = torch.arange(3), torch.tensor([[0, 1], [2, 3], [4, 5]])
    x, t = torch.randn(3, 2, dtype=torch.float64), torch.tensor([4, 0, 9])
    with torch.no_grad():
        first = den.prepare_gallery(text, video, mask, timesteps=[9, 0])
        assert den.prepare_gallery(text, video, mask, timesteps=[9, 0]).tables["neg_u"] is first.tables["neg_u"]
        den.v_proj.weight.mul_(1.5)  # in place: same storage, new version
        ctx = den.prepare_chunk(den.prepare_gallery(text, video, mask, timesteps=[9, 0]), qi, ci)
        explicit = den.step(x, t, den.prepare(*gathered("t2v", text, video, mask, qi, ci)))
        close(den.step(x, t, ctx), explicit, 1e-12)
        stale = den.step(x, t, den.prepare_chunk(first, qi, ci))
        assert float((stale - explicit).abs().max()) > 1e-6  # the old tables really were different


def test_folded_path_with_weights_made_under_inference_mode():
    """Weights created under torch.inference_mode have no version counter: the step
    tables are then rebuilt per gallery instead of cached (and nothing fails)."""
    with torch.inference_mode():
        den = denoiser("v2t")
        text, video, mask = gallery_features(5, 4)
        qi, ci = torch.arange(4), torch.tensor([[0, 1], [2, 3], [4, 0], [1, 2]])
        x, t = torch.randn(4, 2, dtype=torch.float64), torch.tensor([3, 0, 9, 9])
        ctx = den.prepare_chunk(den.prepare_gallery(text, video, mask, timesteps=[9, 0]), qi, ci)
        close(den.step(x, t, ctx), den.step(x, t, den.prepare(*gathered("v2t", text, video, mask, qi, ci))), 1e-12)
    assert getattr(den, "_step_tables", None) is None
