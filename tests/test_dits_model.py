"""The DITS model: reduction to the dual encoder, v_0 per text, gradients through every
unrolled step, X-Pool pooling (chunks, masks) and the leak guard."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffret_cli.metrics import t2v_ranks, v2t_ranks
from diffret_cli.model.dits import DITS
from diffret_cli.model.pooling import MeanPooling, XPool, build_pooling
from diffret_cli.errors import ConfigError
from dits_helpers import F, fake_split, tiny_dits_config

V, D = 10, 32  # videos, embedding width


@pytest.fixture(scope="module")
def model() -> DITS:
    torch.manual_seed(0)
    return DITS(tiny_dits_config(), load_pretrained=False).eval()


def features(model, captions, n_videos=V, seed=0):
    ids, mask = model.encoder.tokenize(captions, model.config["max_words"])
    g = torch.Generator().manual_seed(seed)
    frames = torch.randn(n_videos, F, 3, 32, 32, generator=g)
    lengths = torch.randint(1, F + 1, (n_videos,), generator=g)
    fmask = (torch.arange(F) < lengths[:, None]).long()
    return model.encode_text(ids, mask), model.encode_video(frames, fmask)


CAPS = ["red ring moves left", "blue star up", "green ring down small", "big red star right",
        "small blue ring", "a star moves", "green big", "left right up"]


def test_zero_steps_is_exactly_the_dual_encoder(model):
    with torch.no_grad():
        tf, vf = features(model, CAPS)
        sim = model.similarity_matrix(tf, vf)
        t2v, v2t = model.rerank(sim, tf, vf, steps=0)
        moved, _ = model.rerank(sim, tf, vf)  # T' = 3
    assert torch.equal(t2v, sim) and torch.equal(v2t, sim.t())
    assert (moved - sim).abs().max() > 1e-3, "with T' > 0 the step network must change the scores"
    assert model.default_steps() == 3


def test_v0_depends_only_on_the_text(model):
    """v_0 is the same whatever the gallery, so the generative score of a pair does not
    change when other videos join or leave (and v_0 can be cached per caption)."""
    with torch.no_grad():
        tf, vf = features(model, CAPS)
        v0 = model.query_embedding(tf.cls)
        record: dict = {}
        full, _ = model.rerank(model.similarity_matrix(tf, vf), tf, vf, record=record)
        assert torch.equal(record["v0"], v0)
        keep = torch.tensor([7, 2, 5])
        sub_v = type(vf)(vf.frames[keep], vf.mask[keep])
        sub, _ = model.rerank(model.similarity_matrix(tf, sub_v), tf, sub_v)
        # each caption alone gives the same v_0 as in a batch
        one = model.query_embedding(tf.cls[3:4])
    torch.testing.assert_close(sub, full[:, keep], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(one, v0[3:4], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(v0, tf.cls, atol=1e-3)


def test_gradients_reach_every_step_the_step_network_and_the_encoders():
    torch.manual_seed(1)
    m = DITS(tiny_dits_config(), load_pretrained=False).train()
    tf, vf = features(m, CAPS[:4], n_videos=4)
    record: dict = {}
    v0 = m.query_embedding(tf.cls, record=record)
    steps = record["trajectory"][0]
    assert [int(s["t"][0]) for s in steps] == [2, 1, 0]
    for s in steps:  # every step's state and eps output
        s["x_t"].retain_grad()
        s["model_output"].retain_grad()
    logits = m.contrastive_logits(tf, vf, v0)
    target = torch.arange(4)
    loss = (torch.nn.functional.cross_entropy(logits, target) + torch.nn.functional.cross_entropy(logits.t(), target)) / 2
    loss.backward()
    for s in steps:
        assert s["x_t"].grad.abs().sum() > 0 and s["model_output"].grad.abs().sum() > 0
    named = dict(m.named_parameters())
    for name in ("denoiser.x_embed.weight", "denoiser.final.linear.weight", "denoiser.t_embed.mlp.0.weight",
                 "denoiser.blocks.0.mlp.0.weight", "pooling.q_proj.weight", "pooling.fc.weight"):
        assert named[name].grad is not None and named[name].grad.abs().sum() > 0, name
    enc_grads = {n: p.grad for n, p in named.items() if n.startswith("encoder.") and p.requires_grad}
    text_tower = [g for n, g in enc_grads.items() if "transformer" in n and "visual" not in n]
    vision_tower = [g for n, g in enc_grads.items() if "visual" in n]
    assert text_tower and all(g is not None for g in text_tower) and any(g.abs().sum() > 0 for g in text_tower)
    assert vision_tower and any(g is not None and g.abs().sum() > 0 for g in vision_tower)


def test_zero_initialised_step_network_starts_at_the_dual_encoder():
    torch.manual_seed(0)
    m = DITS(tiny_dits_config(denoiser={"name": "dits_step", "args": {"hidden": 32, "heads": 4}}),
             load_pretrained=False).eval()
    with torch.no_grad():
        tf, vf = features(m, CAPS)
        sim = m.similarity_matrix(tf, vf)
        assert torch.equal(m.query_embedding(tf.cls), tf.cls)
        assert torch.equal(m.rerank(sim, tf, vf)[0], sim)


def test_xpool_chunks_masks_and_pairs():
    torch.manual_seed(0)
    pool = XPool(width=D, heads=2, dropout=0.0, chunk_size=3, identity_init=False).eval()
    g = torch.Generator().manual_seed(4)
    text, frames = torch.randn(7, D, generator=g), torch.randn(5, F, D, generator=g)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]])
    with torch.no_grad():
        chunked = pool.scores(text, text, frames, mask)
        pool.chunk_size = 100
        whole = pool.scores(text, text, frames, mask)
        pooled = pool.pool(text, frames, mask)  # [7, 5, D]
        ref = torch.nn.functional.normalize(text, dim=-1)[:, None, :] * torch.nn.functional.normalize(pooled, dim=-1)
        # padded frames do not count, whatever they hold
        noisy = frames.clone()
        noisy[mask == 0] = 1e3
        masked = pool.scores(text, text, noisy, mask)
        # pair (i, j) is pooled with text i: another text changes row i, no other row
        other = text.clone()
        other[2] = torch.randn(D, generator=g)
        changed = pool.scores(text, other, frames, mask)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(whole, ref.sum(-1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(masked, whole, rtol=1e-5, atol=1e-6)
    assert pooled.shape == (7, 5, D)
    diff = (changed - whole).abs().amax(dim=1)
    assert diff[2] > 1e-3 and diff[torch.arange(7) != 2].max() == 0


def test_mean_pooling_and_bad_pooling_names():
    mean = build_pooling("mean", width=D)
    assert isinstance(mean, MeanPooling) and not mean.text_conditioned
    frames = torch.arange(2 * 3 * D, dtype=torch.float32).reshape(2, 3, D)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    torch.testing.assert_close(mean.pool(frames, mask), torch.stack([frames[0, :2].mean(0), frames[1].mean(0)]))
    with pytest.raises(ConfigError, match="unknown pooling 'max'") as err:
        build_pooling("max", width=D)
    assert "xpool, mean" in err.value.hint
    with pytest.raises(ConfigError, match="model.pooling.args"):
        build_pooling("mean", width=D, heads=2)
    with pytest.raises(ConfigError, match="pool_with"):
        DITS(tiny_dits_config(pool_with="video"), load_pretrained=False)
    with pytest.raises(ConfigError, match="truncated eps sampler"):
        DITS(tiny_dits_config(sampler={"name": "ddim", "args": {}}), load_pretrained=False)


# ------------------------------------------------------------------------- leak guard
WORDS = ["red", "blue", "green", "star", "ring", "moves", "left", "right", "up", "down", "big", "small"]
# videos 3 and 7 have no caption: 9 queries for 10 videos; video 5 has two
CAPTIONS = {i: (f"{WORDS[i]} {WORDS[(3 * i + 1) % 12]} {WORDS[(5 * i + 2) % 12]}",) for i in range(V)}
CAPTIONS[3] = CAPTIONS[7] = ()
CAPTIONS[5] = CAPTIONS[5] + ("small green ring moves up",)


def _split(order):
    return fake_split(order, CAPTIONS)


def leaky_similarity(model, tf, vf):
    """The T-MASS fork's bug, as a negative control: video j pooled with caption j (by
    index, as if captions and videos were aligned), not with the query."""
    n = tf.cls.shape[0]
    cols = []
    for j in range(vf.frames.shape[0]):
        pooled = model.pooling.pool(tf.cls[j % n][None], vf.frames[j:j + 1], vf.mask[j:j + 1])[0, 0]
        cols.append(torch.nn.functional.normalize(tf.cls, dim=-1) @ torch.nn.functional.normalize(pooled, dim=0))
    return torch.stack(cols, dim=1)


def _ranks(model, split, *, leaky=False):
    from diffret_cli.features import SplitTexts, encode_texts, encode_videos

    texts = SplitTexts.from_split(split)
    tf = encode_texts(model, texts.captions, batch_size=4, device=torch.device("cpu"), precision="fp32")
    vf = encode_videos(model, split, batch_size=3, device=torch.device("cpu"), precision="fp32")
    with torch.no_grad():
        sim = leaky_similarity(model, tf, vf) if leaky else model.similarity_matrix(tf, vf)
        t2v, v2t = model.rerank(sim, tf, vf)
    return texts, {"stage1": (t2v_ranks(sim, texts.caption_video), v2t_ranks(sim.t(), texts.caption_video)),
                   "dits": (t2v_ranks(t2v, texts.caption_video), v2t_ranks(v2t, texts.caption_video))}


def test_leak_guard_with_text_conditioned_pooling(model):
    """Fewer queries than videos and shuffled captions: every caption keeps its rank, so
    no video is pooled with its own ground-truth caption (X-Pool pools each pair with the
    query; a leaking implementation ranks its ground truth first)."""
    assert model.pooling.text_conditioned
    texts_a, ranks_a = _ranks(model, _split(list(range(V))))
    perm = [6, 2, 9, 0, 7, 4, 1, 8, 5, 3]
    texts_b, ranks_b = _ranks(model, _split(perm))
    assert len(texts_a.captions) == 9 < V
    where = {c: i for i, c in enumerate(texts_a.captions)}
    back = np.array([where[c] for c in texts_b.captions])
    assert back.tolist() != list(range(9))
    # video-to-text queries: the videos with a caption, in gallery order
    queried_a = [i for i in range(V) if CAPTIONS[i]]
    queried_b = [i for i in perm if CAPTIONS[i]]
    for row in ("stage1", "dits"):
        np.testing.assert_array_equal(ranks_b[row][0], ranks_a[row][0][back])
        by_video_a = dict(zip(queried_a, ranks_a[row][1].tolist()))
        assert dict(zip(queried_b, ranks_b[row][1].tolist())) == by_video_a
    # through the evaluation library: the same metrics whatever the order
    from diffret_cli.evaluation import EvalSettings, evaluate_split

    settings = EvalSettings(device="cpu", precision="fp32", batch_size=4)
    ra, rb = (evaluate_split(model, _split(o), settings) for o in (list(range(V)), perm))
    for row in ("stage1", "diffusion"):
        assert ra["rows"][row]["t2v"] == rb["rows"][row]["t2v"]
        assert ra["rows"][row]["v2t"] == rb["rows"][row]["v2t"]
    assert ra["rows"]["diffusion"]["t2v"]["queries"] == 9 and ra["num_videos"] == V
    # the negative control: the same check catches a leaking pooling
    _, leak_a = _ranks(model, _split(list(range(V))), leaky=True)
    _, leak_b = _ranks(model, _split(perm), leaky=True)
    assert not np.array_equal(leak_b["stage1"][0], leak_a["stage1"][0][back])


def test_noise_in_the_unrolled_steps_is_opt_in_and_seeded(model):
    """model.train_noise (training) and the sampler's `noise` (inference) add lambda_k z;
    off by default, seeded by the generator when on."""
    assert model.config["train_noise"] is False and model.make_sampler().noise is False
    with torch.no_grad():
        tf, _ = features(model, CAPS)
        quiet = model.query_embedding(tf.cls)
        a = model.query_embedding(tf.cls, noise=True, generator=torch.Generator().manual_seed(0))
        b = model.query_embedding(tf.cls, noise=True, generator=torch.Generator().manual_seed(0))
        c = model.query_embedding(tf.cls, noise=True, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.allclose(a, quiet)
