"""Losses, hard negatives and sampler mechanics beyond the parity fixtures."""

from __future__ import annotations

import math

import pytest
import torch

from diffret_cli.losses import generation_loss_from_output, hard_negative_candidates, symmetric_infonce
from diffret_cli.registry import create


def test_symmetric_infonce_matches_its_definition():
    logits = torch.tensor([[5.0, 1.0, 0.0], [0.5, 3.0, 1.0], [2.0, 0.0, 4.0]])
    rows = -sum(math.log(math.exp(logits[i, i]) / sum(math.exp(v) for v in logits[i])) for i in range(3)) / 3
    cols = -sum(math.log(math.exp(logits[i, i]) / sum(math.exp(logits[j, i]) for j in range(3))) for i in range(3)) / 3
    assert symmetric_infonce(logits).item() == pytest.approx((rows + cols) / 2, rel=1e-6)


def test_generation_loss_kinds():
    x0_hat = torch.tensor([[0.9, 0.1, 0.0]])
    x0 = torch.tensor([[1.0, 0.0, 0.0]])
    ce = -math.log(math.exp(90) / (math.exp(90) + math.exp(10) + 1))
    assert generation_loss_from_output(x0_hat, x0, kind="kl", temp=100).item() == pytest.approx(ce, abs=1e-6)
    assert generation_loss_from_output(x0_hat, x0, kind="mse").item() == pytest.approx((0.01 + 0.01) / 3)
    with pytest.raises(ValueError, match="unknown generation loss"):
        generation_loss_from_output(x0_hat, x0, kind="l1")


def test_hard_negatives_put_the_positive_first_and_skip_the_same_video():
    sim = torch.tensor([[0.9, 0.8, 0.7, 0.1],
                        [0.2, 0.5, 0.9, 0.3],
                        [0.6, 0.4, 0.3, 0.2],
                        [0.1, 0.2, 0.3, 0.4]])
    same = torch.zeros(4, 4, dtype=torch.bool)
    same[0, 1] = same[1, 0] = True  # captions 0 and 1 describe the same video
    cand = hard_negative_candidates(sim, 3, same)
    assert cand.index[:, 0].tolist() == [0, 1, 2, 3]
    assert cand.index[0].tolist() == [0, 2, 3]  # 1 is the same video: never a negative
    assert cand.index[1].tolist() == [1, 2, 3]
    assert cand.index[2].tolist() == [2, 0, 1]
    assert bool(cand.valid.all())  # every row has 2 real negatives
    with pytest.raises(ValueError, match="global batch"):
        hard_negative_candidates(sim, 5)
    with pytest.raises(ValueError, match="exclusive, official"):
        hard_negative_candidates(sim, 3, same, mode="paper")


def _msrvtt_batches(n: int) -> list[torch.Tensor]:
    """Video ids of the first ``n`` stage-2 global batches (128) of MSRVTT's 9k training
    list: 9,000 videos x 20 captions, caption i showing video i // 20, in the trainer's
    seeded order."""
    from diffret_cli.distributed import DistInfo
    from diffret_cli.training.batches import epoch_batches

    order = epoch_batches(180_000, 128, seed=42, stage=2, epoch=0, dist=DistInfo())[:n]
    return [torch.tensor(b) // 20 for b in order]


def test_msrvtt_batches_hold_same_video_pairs_and_exclusive_never_returns_them():
    """K = global batch = 128 (the paper's setting): a row whose video appears twice in
    the batch has fewer than 127 real negatives. The official choice then hands back the
    positive or its twin labelled as a negative; the exclusive one never does and pads
    the row with masked slots instead (one per missing negative)."""
    batches = _msrvtt_batches(20)
    with_twins = [v for v in batches if len(set(v.tolist())) < 128]
    assert 5 <= len(with_twins) <= 15  # about half of MSRVTT's batches (1 - exp(-128*127/2/9474))
    g = torch.Generator().manual_seed(0)
    for vids in batches:
        sim = torch.rand(128, 128, generator=g)
        same = vids[:, None] == vids[None, :]
        twins = same.sum(1) - 1  # other items of the batch showing the row's video
        ex = hard_negative_candidates(sim, 128, same)
        cand_vid = vids[ex.index]
        rows = torch.arange(128)
        assert torch.equal(ex.index[:, 0], rows)
        negatives_ok = cand_vid[:, 1:] != vids[:, None]
        assert bool(negatives_ok[ex.valid[:, 1:]].all())  # no valid slot shows the query's video
        assert torch.equal((~ex.valid).sum(1), twins)  # exactly the missing negatives are masked
        # the masked slots repeat the row's hardest real negative, never its own video
        assert bool((cand_vid[:, 1:] != vids[:, None]).all())
        # the valid negatives are the hardest real ones, hardest first
        for r in torch.nonzero(twins).flatten().tolist():
            real = sim[r].masked_fill(same[r], float("-inf"))
            k = 127 - int(twins[r])
            assert ex.index[r, 1:k + 1].tolist() == real.topk(k).indices.tolist()
        off = hard_negative_candidates(sim, 128, same, mode="official")
        assert bool(off.valid.all())
        off_same = (vids[off.index[:, 1:]] == vids[:, None]).sum(1)
        assert torch.equal(off_same, twins)  # the official defect: one same-video "negative" per missing one


def test_exclusive_rows_with_many_twins_and_with_none():
    vids = torch.arange(128) // 16  # 8 videos x 16 captions: 15 twins a row
    same = vids[:, None] == vids[None, :]
    sim = torch.rand(128, 128, generator=torch.Generator().manual_seed(1))
    ex = hard_negative_candidates(sim, 128, same)
    assert ex.valid.sum(1).tolist() == [1 + 112] * 128
    assert bool((vids[ex.index[:, 1:]] != vids[:, None]).all())
    one = torch.zeros(4, dtype=torch.long)  # one video only: no real negative anywhere
    ex = hard_negative_candidates(torch.rand(4, 4), 3, one[:, None] == one[None, :])
    assert ex.valid.tolist() == [[True, False, False]] * 4
    assert torch.equal(ex.index, torch.arange(4)[:, None].expand(4, 3))  # padded with the positive, masked


@pytest.mark.parametrize("kind", ["kl", "mse"])
def test_masked_candidates_take_no_part_in_the_loss(kind):
    """A masked slot contributes nothing: the loss equals the loss over the valid slots
    alone, and neither its value nor its gradient depends on the masked slot's output."""
    g = torch.Generator().manual_seed(0)
    x0_hat = torch.randn(3, 5, generator=g, requires_grad=True)
    x0 = torch.zeros(3, 5)
    x0[:, 0] = 1
    valid = torch.tensor([[True, True, True, False, False],
                          [True, True, True, True, True],
                          [True, False, True, True, False]])
    loss = generation_loss_from_output(x0_hat, x0, kind=kind, temp=1.0, candidate_mask=valid)
    per_row = [generation_loss_from_output(x0_hat[i:i + 1, valid[i]], x0[i:i + 1, valid[i]], kind=kind, temp=1.0)
               for i in range(3)]
    assert loss.item() == pytest.approx(sum(r.item() for r in per_row) / 3, rel=1e-6)
    loss.backward()
    assert bool((x0_hat.grad[~valid] == 0).all()) and bool((x0_hat.grad[valid] != 0).all())
    moved = x0_hat.detach().clone()
    moved[~valid] += 7.0
    again = generation_loss_from_output(moved, x0, kind=kind, temp=1.0, candidate_mask=valid)
    assert again.item() == pytest.approx(loss.item(), rel=1e-6)
    with pytest.raises(ValueError, match="slot 0"):
        generation_loss_from_output(x0_hat, x0, kind=kind, candidate_mask=~valid)


def test_the_stage2_step_honours_stage2_hard_negatives():
    """``stage2.hard_negatives`` reaches the training step: on a batch of 8 captions of 2
    videos with K = 8, exclusive masks the 3 missing negatives of every row (24 slots)
    and official masks none, and the two losses differ."""
    from diffret_cli.distributed import DistInfo
    from diffret_cli.model.diffusionret import DiffusionRet
    from diffret_cli.training.generation import GenerationStep
    from train_helpers import tiny_model_config

    torch.manual_seed(0)
    model = DiffusionRet(tiny_model_config(), load_pretrained=False)
    g = torch.Generator().manual_seed(3)
    d, words, frames = model.encoder.embed_dim, model.config["max_words"], model.config["max_frames"]
    batch = {"tokens": torch.randn(8, words, d, generator=g), "cls": torch.randn(8, d, generator=g),
             "text_mask": torch.ones(8, words, dtype=torch.long), "frames": torch.randn(8, frames, d, generator=g),
             "frame_mask": torch.ones(8, frames, dtype=torch.long), "video_ids": torch.arange(8) // 4}
    cfg = {"num_candidates": 8, "loss": "kl", "loss_temp": 100.0, "negative_value": 0.0}
    out = {}
    for mode in ("exclusive", "official"):
        step = GenerationStep(model, {**cfg, "hard_negatives": mode}, DistInfo())
        loss, extras = step(batch, torch.Generator().manual_seed(0))
        out[mode] = (loss.item(), extras["masked_candidates"].item())
    assert out["exclusive"][1] == 24 and out["official"][1] == 0
    assert out["exclusive"][0] != pytest.approx(out["official"][0])


def test_the_model_objective_on_indices_equals_the_gathered_one():
    """DiffusionRet.generation_loss runs the denoisers on the batch's unique features plus
    candidate indices; loss and gradients equal the gathered path (losses.generation_loss
    on [B,K,T,D] candidates, the same noise), masked slots included."""
    from diffret_cli.losses import generation_loss
    from diffret_cli.model.diffusionret import DiffusionRet
    from train_helpers import tiny_model_config

    torch.manual_seed(0)
    model = DiffusionRet(tiny_model_config(), load_pretrained=False)
    g = torch.Generator().manual_seed(5)
    d, frames, n, k = model.encoder.embed_dim, model.config["max_frames"], 12, 12
    cls, video = torch.randn(n, d, generator=g), torch.randn(n, frames, d, generator=g)
    vmask = (torch.arange(frames)[None] < torch.randint(1, frames + 1, (n, 1), generator=g)).long()
    vids = torch.arange(n) // 3
    same = vids[:, None] == vids[None, :]
    sim = torch.rand(n, n, generator=g)
    cv, ct = hard_negative_candidates(sim, k, same), hard_negative_candidates(sim.t(), k, same)
    rows = torch.arange(4, 10)  # this "rank's" queries
    params = [p for m in model.stage2_modules() for p in m.parameters()]

    loss, _ = model.generation_loss(cls, video, vmask, queries=rows, cand_v=cv.index[rows], cand_t=ct.index[rows],
                                    valid_v=cv.valid[rows], valid_t=ct.valid[rows],
                                    generator=torch.Generator().manual_seed(9))
    fast = torch.autograd.grad(loss, params)
    gen = torch.Generator().manual_seed(9)  # the draws generation_loss makes, in its order
    t = torch.randint(0, model.noise_schedule().num_steps, (len(rows),), generator=gen)
    n1, n2 = torch.randn((len(rows), k), generator=gen), torch.randn((len(rows), k), generator=gen)
    coef = model.noise_schedule()
    l1, _ = generation_loss(model.denoiser_t2v, coef, text=cls[rows], video=video[cv.index[rows]],
                            video_mask=vmask[cv.index[rows]], t=t, noise=n1, candidate_mask=cv.valid[rows])
    l2, _ = generation_loss(model.denoiser_v2t, coef, text=cls[ct.index[rows]], video=video[rows],
                            video_mask=vmask[rows], t=t, noise=n2, candidate_mask=ct.valid[rows])
    slow = torch.autograd.grad(l1 + l2, params)
    assert not bool(cv.valid[rows].all())  # masked slots take part in the comparison
    assert loss.item() == pytest.approx((l1 + l2).item(), rel=1e-5)
    assert sum(float(b.abs().sum()) for b in slow) > 1e-2
    for a, b in zip(fast, slow):  # atol: the output bias's gradient is ~0 in theory (softmax - onehot sums to 0)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_hard_negative_modes_match_the_recipe_schema():
    from diffret_cli.losses import HARD_NEGATIVE_MODES
    from diffret_cli.recipe_schema import DEFAULTS, HARD_NEGATIVE_MODES as SCHEMA_MODES

    assert SCHEMA_MODES == HARD_NEGATIVE_MODES
    assert DEFAULTS["stage2"]["hard_negatives"] == HARD_NEGATIVE_MODES[0] == "exclusive"


@pytest.mark.parametrize("name", ["ddim", "ddpm"])
def test_a_perfect_x0_model_is_sampled_back_exactly(name):
    """With a model that always predicts the same x0, both samplers end at clamp(x0)."""
    x0 = torch.tensor([[0.3, -0.2, 1.7, -4.0]])
    s = create("samplers", name, num_steps=50)
    g = torch.Generator().manual_seed(0)
    out = s.sample(lambda x, t: x0.expand_as(x), s.start(shape=(1, 4), generator=g), generator=g).sample
    torch.testing.assert_close(out, x0.clamp(-1, 1), rtol=0, atol=1e-6)


def test_respacing_calls_the_model_at_evenly_spaced_original_steps():
    s = create("samplers", "ddim", num_steps=50, sample_steps=10)
    seen = []

    def model(x, t):
        seen.append(int(t[0]))
        return torch.zeros_like(x)

    s.sample(model, torch.randn(2, 3))
    assert len(seen) == 10 and seen[0] == 49 and seen[-1] == 0
    assert seen == sorted(seen, reverse=True) and seen == s.timesteps()
    # the respaced chain keeps the original alpha_bar at the steps it uses
    full = create("samplers", "ddim", num_steps=50)
    for i, t in enumerate(reversed(seen)):
        assert s.coef.alphas_cumprod[i] == pytest.approx(full.coef.alphas_cumprod[t], rel=1e-12)


def test_ddim_eta_zero_is_deterministic_and_eta_one_uses_the_generator():
    model = lambda x, t: torch.tanh(x)  # noqa: E731
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(1))
    d0 = create("samplers", "ddim", num_steps=20)
    a = d0.sample(model, x, generator=torch.Generator().manual_seed(1)).sample
    b = d0.sample(model, x, generator=torch.Generator().manual_seed(2)).sample
    assert torch.equal(a, b)
    d1 = create("samplers", "ddim", num_steps=20, eta=1.0)
    c = d1.sample(model, x, generator=torch.Generator().manual_seed(1)).sample
    d = d1.sample(model, x, generator=torch.Generator().manual_seed(2)).sample
    e = d1.sample(model, x, generator=torch.Generator().manual_seed(1)).sample
    assert not torch.equal(c, d) and torch.equal(c, e)


def test_eps_prediction_recovers_x0_from_the_true_noise():
    """With prediction='eps', the sampler's x0 from the true noise of
    x_t = q_sample(x0, t, eps) is x0 again (Ho et al. Eq. 4 inverted)."""
    from diffret_cli.diffusion import DiffusionCoefficients

    s = create("samplers", "ddim", num_steps=10, prediction="eps", clip_denoised=False)
    coef: DiffusionCoefficients = s.coef
    x0 = torch.tensor([[0.5, -0.25, 0.75]])
    eps = torch.tensor([[1.0, -2.0, 0.5]])
    t = torch.tensor([5])  # mid-chain: at the last step float32 cancellation dominates
    x_t = coef.q_sample(x0, t, eps)
    torch.testing.assert_close(coef.predict_x0_from_eps(x_t, t, eps), x0, rtol=0, atol=1e-6)


def test_each_chain_gets_its_own_state_dict():
    """FullSampler's state channel: one fresh dict per ``sample`` call, the same dict at
    every step of that chain, and the sample itself unchanged by the channel."""
    from diffret_cli.sdk import FullSampler
    from diffret_plugins.samplers.ddim import DDIMSampler

    class Recording(DDIMSampler):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.log: list[tuple[int, int]] = []  # (id of the state dict, step count in it)

        def update(self, x, x0, t, *, last, generator, state):
            state["steps"] = state.get("steps", 0) + 1
            self.log.append((id(state), state["steps"]))
            return super().update(x, x0, t, last=last, generator=generator, state=state)

    assert issubclass(Recording, FullSampler)
    s = Recording(num_steps=20, sample_steps=5)
    model = lambda x, t: torch.tanh(x)  # noqa: E731
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    a = s.sample(model, x).sample
    b = s.sample(model, x).sample
    first, second = s.log[:5], s.log[5:]
    assert [n for _, n in first] == [1, 2, 3, 4, 5] and [n for _, n in second] == [1, 2, 3, 4, 5]
    assert len({i for i, _ in first}) == 1 and len({i for i, _ in second}) == 1
    assert torch.equal(a, b)
    assert torch.equal(a, create("samplers", "ddim", num_steps=20, sample_steps=5).sample(model, x).sample)


# ---------------------------------------------------------------- the chains, step by step
def _posterior(sampler, i: int) -> tuple[float, float, float]:
    """(coefficient of x0, coefficient of x_t, variance) of q(x_{t-1} | x_t, x0) at respaced
    step ``i``, from the raw schedule in float64 (Ho et al. Eq. 6-7 on the respaced chain,
    Nichol & Dhariwal sec. 4: alpha_bar kept at the steps used)."""
    import numpy as np

    raw = create("schedules", sampler.schedule, num_steps=sampler.num_steps).betas()
    acp = np.cumprod(1.0 - np.asarray(raw, dtype=np.float64))
    used = sampler.timestep_map
    ab = acp[used[i]]
    ab_prev = acp[used[i - 1]] if i > 0 else 1.0
    beta = 1.0 - ab / ab_prev
    c0 = np.sqrt(ab_prev) * beta / (1.0 - ab)
    ct = np.sqrt(1.0 - beta) * (1.0 - ab_prev) / (1.0 - ab)
    return c0, ct, beta * (1.0 - ab_prev) / (1.0 - ab)


def _x0_model(x, t):
    # depends on x and t, and leaves [-1, 1] for some inputs so the clamp matters
    return 1.5 * torch.tanh(x * (1.0 + t[:, None].float() / 10.0))


@pytest.mark.parametrize("sample_steps", [None, 4])
def test_ddpm_every_step_is_the_posterior_mean_plus_its_noise(sample_steps):
    """Each step x_{t-1} = mu~(x0_hat, x_t) + sigma~_t z, z the generator's next normal draw,
    checked at every step (not only the last) against the formulas in float64."""
    s = create("samplers", "ddpm", num_steps=12, sample_steps=sample_steps)
    g = torch.Generator().manual_seed(3)
    x_T = s.start(shape=(3, 5), generator=g)
    res = s.sample(_x0_model, x_T, generator=g, record=True)
    replay = torch.Generator().manual_seed(3)
    assert torch.equal(torch.randn((3, 5), generator=replay), x_T)
    states = [step["x_t"] for step in res.trajectory] + [res.sample]
    n = len(s.timestep_map)
    assert len(res.trajectory) == n == (sample_steps or 12)
    for j, step in enumerate(res.trajectory):
        i = n - 1 - j
        x_t, x0 = step["x_t"].double(), _x0_model(step["x_t"], step["t"].new_full(step["t"].shape,
                                                                                 s.timestep_map[i]))
        torch.testing.assert_close(step["pred_x0"], x0.clamp(-1, 1), rtol=0, atol=1e-6)
        c0, ct, var = _posterior(s, i)
        expected = c0 * x0.clamp(-1, 1).double() + ct * x_t
        if i > 0:  # the last step adds no noise
            expected = expected + var ** 0.5 * torch.randn((3, 5), generator=replay).double()
        torch.testing.assert_close(states[j + 1].double(), expected, rtol=1e-5, atol=1e-5)


def test_ddim_every_step_follows_song_et_al_eq_12():
    s = create("samplers", "ddim", num_steps=20, sample_steps=5, eta=0.7)
    g = torch.Generator().manual_seed(5)
    x_T = s.start(shape=(2, 4), generator=g)
    res = s.sample(_x0_model, x_T, generator=g, record=True)
    replay = torch.Generator().manual_seed(5)
    torch.randn((2, 4), generator=replay)  # x_T
    import numpy as np

    acp = np.cumprod(1.0 - create("schedules", "cosine", num_steps=20).betas())
    states = [step["x_t"] for step in res.trajectory] + [res.sample]
    for j, step in enumerate(res.trajectory):
        i = len(s.timestep_map) - 1 - j
        ab = acp[s.timestep_map[i]]
        ab_prev = acp[s.timestep_map[i - 1]] if i > 0 else 1.0
        x_t, x0 = step["x_t"].double(), step["pred_x0"].double()
        eps = (x_t / np.sqrt(ab) - x0) / np.sqrt(1 / ab - 1)
        sigma = 0.7 * np.sqrt((1 - ab_prev) / (1 - ab)) * np.sqrt(1 - ab / ab_prev)
        expected = np.sqrt(ab_prev) * x0 + np.sqrt(1 - ab_prev - sigma ** 2) * eps
        if i > 0:
            expected = expected + sigma * torch.randn((2, 4), generator=replay).double()
        torch.testing.assert_close(states[j + 1].double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["ddim", "ddpm"])
def test_one_step_is_the_clamped_x0_of_one_model_call_at_the_last_step(name):
    s = create("samplers", name, num_steps=50, sample_steps=1)
    calls = []

    def model(x, t):
        calls.append(t.tolist())
        return 3.0 * x

    x_T = torch.randn(2, 6, generator=torch.Generator().manual_seed(0))
    out = s.sample(model, x_T, generator=torch.Generator().manual_seed(1)).sample
    assert calls == [[49, 49]]  # pure noise is paired with the noisiest step
    torch.testing.assert_close(out, (3.0 * x_T).clamp(-1, 1), rtol=0, atol=1e-6)
    assert s.timesteps() == [49]


def test_a_one_step_schedule_builds_and_samples():
    for name in ("ddim", "ddpm"):
        s = create("samplers", name, num_steps=1)
        out = s.sample(lambda x, t: torch.full_like(x, 0.25), torch.randn(1, 3),
                       generator=torch.Generator().manual_seed(0)).sample
        torch.testing.assert_close(out, torch.full((1, 3), 0.25), rtol=0, atol=1e-6)


@pytest.mark.parametrize("steps", [0, -3, 51, 1000])
def test_sample_steps_outside_the_schedule_name_the_allowed_range(steps):
    from diffret_cli.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"sample_steps={steps} is outside the allowed range 1\.\.50") as e:
        create("samplers", "ddim", num_steps=50, sample_steps=steps)
    assert "--steps between 1 and 50" in str(e.value)


def test_uniform_step_reads_only_what_cannot_differ():
    from diffret_cli.sdk import uniform_step

    assert uniform_step(torch.full((1,), 7).expand(5)) == 7  # stride 0: one element for all rows
    assert uniform_step(torch.tensor([4])) == 4
    assert uniform_step(torch.full((5,), 7)) is None  # equal now, but rows of their own
    assert uniform_step(torch.tensor([3, 3, 9])) is None
    assert uniform_step(torch.empty(0, dtype=torch.long)) is None
    assert uniform_step(torch.full((1, 1), 2).expand(3, 3)) is None  # not a [B] step tensor


@pytest.mark.parametrize("eta", [0.0, 0.8])
def test_ddim_one_step_for_all_rows_equals_a_step_per_row(eta):
    """A chain passes one step for every row (stride 0) and DDIM uses Python-float
    coefficients; a step tensor with a row each takes the gathered coefficients: the same
    update, noise included."""
    s = create("samplers", "ddim", num_steps=30, eta=eta)
    g = torch.Generator().manual_seed(0)
    x, x0 = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g).clamp(-1, 1)
    for i in (29, 11, 0):
        shared = s.update(x, x0, torch.full((1,), i).expand(4), last=i == 0,
                          generator=torch.Generator().manual_seed(i), state={})
        per_row = s.update(x, x0, torch.full((4,), i), last=i == 0,
                           generator=torch.Generator().manual_seed(i), state={})
        torch.testing.assert_close(shared, per_row, rtol=1e-6, atol=1e-7)
    if eta == 0:  # rows at different steps: each row as if alone
        mixed = s.update(x, x0, torch.tensor([29, 11, 0, 5]), last=False, generator=None, state={})
        for row, i in enumerate((29, 11, 0, 5)):
            alone = s.update(x[row:row + 1], x0[row:row + 1], torch.tensor([i]), last=False, generator=None,
                             state={})
            torch.testing.assert_close(mixed[row:row + 1], alone, rtol=1e-6, atol=1e-7)


def test_a_chain_calls_the_model_with_one_step_for_all_rows():
    s = create("samplers", "ddim", num_steps=10, sample_steps=4)
    seen = []

    def model(x, t):
        seen.append((t.shape, t.stride(), t.tolist()))
        return x

    s.sample(model, torch.zeros(3, 5))
    assert [shape for shape, _, _ in seen] == [(3,)] * 4
    assert all(stride == (0,) for _, stride, _ in seen)
    assert [steps[0] for _, _, steps in seen] == list(reversed(s.timestep_map))
