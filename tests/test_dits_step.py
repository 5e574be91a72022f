"""The DITS step network: DiT shape, step-only conditioning, zero init, and its use as a
truncated-sampler head in the generic re-ranking path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from diffret_cli.registry import registry
from diffret_cli.rerank import rerank_direction
from diffret_plugins.denoisers.dits_step import DITSStepNetwork

D = 32


def net(**kw) -> DITSStepNetwork:
    torch.manual_seed(0)
    return DITSStepNetwork(**{"width": D, "hidden": 32, "depth": 2, "heads": 4, "zero_init": False, **kw}).eval()


def test_paper_architecture_by_default():
    n = registry().create("denoisers", "dits_step")
    assert (n.width, n.hidden, n.depth, n.heads, n.mlp_ratio, n.condition) == (512, 512, 4, 16, 4.0, "none")
    assert len(n.blocks) == 4 and n.blocks[0].attn.num_heads == 16
    assert n.blocks[0].mlp[0].out_features == 2048 and n.final.linear.out_features == 512
    # adaLN-Zero: the step network starts as eps = 0, so DITS starts at its dual encoder
    v = torch.randn(3, 512)
    ctx = n.prepare(v, None, None)
    assert ctx.state_shape == (3, 512) and ctx.anchor is v
    assert torch.equal(n.step(v, torch.tensor([9, 3, 0]), ctx), torch.zeros(3, 512))


def test_output_depends_on_state_and_step_but_not_on_the_text_by_default():
    n = net()
    g = torch.Generator().manual_seed(1)
    v, text = torch.randn(3, D, generator=g), torch.randn(3, D, generator=g)
    t = torch.tensor([0, 4, 9])
    with torch.no_grad():
        out = n.step(v, t, n.prepare(text))
        assert out.shape == (3, D)
        assert (n.step(2 * v, t, n.prepare(text)) - out).abs().max() > 1e-4
        assert (n.step(v, t.flip(0), n.prepare(text)) - out).abs().max() > 1e-4
        assert torch.equal(n.step(v, t, n.prepare(torch.randn(3, D, generator=g))), out)
        conditioned = net(condition="text")
        a = conditioned.step(v, t, conditioned.prepare(text))
        b = conditioned.step(v, t, conditioned.prepare(torch.randn(3, D, generator=g)))
    assert (a - b).abs().max() > 1e-4, "condition='text' must use the anchor"
    with pytest.raises(ValueError, match="condition must be one of none, text"):
        DITSStepNetwork(condition="video")
    with pytest.raises(ValueError, match="not divisible by heads"):
        DITSStepNetwork(width=D, hidden=30, heads=4)


def test_fuse_scores_candidates_by_cosine_with_v0():
    n = net()
    g = torch.Generator().manual_seed(2)
    text, video = torch.randn(2, D, generator=g), torch.randn(2, 3, 4, D, generator=g)
    mask = torch.tensor([[[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]] * 2)
    ctx = n.prepare(text, video, mask)
    v0 = torch.randn(2, D, generator=g)
    pooled = torch.stack([torch.stack([video[b, k, : int(mask[b, k].sum())].mean(0) for k in range(3)])
                          for b in range(2)])
    expected = F.cosine_similarity(v0[:, None, :], pooled, dim=-1)
    torch.testing.assert_close(n.fuse(torch.zeros(2, 3), v0, ctx), expected)
    with pytest.raises(ValueError, match="needs candidates"):
        n.fuse(torch.zeros(2, 3), v0, n.prepare(text))


def test_generic_rerank_runs_a_truncated_sampler_from_the_anchor():
    """The interface hooks a DITS-style head uses (Sampler.truncated, DenoiserContext.anchor
    and state_shape, Denoiser.fuse) in the family-agnostic re-ranking loop: each query's
    top-K are rescored by cos(v_0, mean-pooled candidate), the rest keep their score."""
    n = net()
    sampler = registry().create("samplers", "dits", sample_steps=3)
    g = torch.Generator().manual_seed(3)
    text, frames = torch.randn(4, D, generator=g), torch.randn(6, 2, D, generator=g)
    mask = torch.ones(6, 2, dtype=torch.long)
    scores = torch.randn(4, 6, generator=g)
    record: list = []
    out = rerank_direction(scores, direction="t2v", denoiser=n, sampler=sampler, text_cls=text,
                           video_frames=frames, video_mask=mask, topk=3, chunk_size=3, record=record)
    with torch.no_grad():
        ctx = n.prepare(text, None, None)
        v0 = sampler.sample(lambda v, t: n.step(v, t, ctx), sampler.start(shape=ctx.state_shape, anchor=text)).sample
    cos = F.normalize(v0, dim=-1) @ F.normalize(frames.mean(1), dim=-1).t()
    top = scores.topk(3, dim=1).indices
    for q in range(4):
        for c in range(6):
            want = cos[q, c] if c in top[q] else scores[q, c]
            torch.testing.assert_close(out[q, c], want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.cat([r["sample"] for r in record]), v0, rtol=1e-4, atol=1e-5)
