"""The DITS truncated sampler: its coefficients, its chain, its options."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffret_cli.registry import registry
from diffret_plugins.samplers.dits import DITSSampler, dits_betas, dits_coefficients

D = 6


def chain(sampler, anchor, eps_fn, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = sampler.start(shape=tuple(anchor.shape), anchor=anchor, generator=g, dtype=anchor.dtype)
    return sampler.sample(eps_fn, x, generator=g, record=True)


def test_chi_matches_the_paper_numbers_for_t10():
    s = DITSSampler()
    assert s.timesteps() == list(range(9, -1, -1))
    # the table: chi from k = 10 down to 1
    expected = [9.90, 2.70, 1.74, 1.26, 0.96, 0.76, 0.61, 0.51, 0.42, 0.33]
    np.testing.assert_allclose(s.chi[::-1], expected, atol=0.006)
    np.testing.assert_allclose(s.lam, np.sqrt(np.linspace(0.1, 0.99, 10)))


def test_coefficients_follow_the_formula_term_by_term():
    betas = np.array([0.2, 0.5, 0.7])
    chi, lam = dits_coefficients(betas)
    a1, a2, a3 = 0.8, 0.5, 0.3
    abar = [a1, a1 * a2, a1 * a2 * a3]
    for k, (a, ab) in enumerate(zip((a1, a2, a3), abar)):
        assert chi[k] == pytest.approx((1 - a) / np.sqrt(a - a * ab), rel=1e-12)
        assert lam[k] == pytest.approx(np.sqrt(1 - a), rel=1e-12)


def test_one_chain_by_hand():
    """v_{k-1} = v_k - chi_k eps(v_k, k), no 1/sqrt(alpha) rescale: with eps = 0.5 v + k
    the chain can be unrolled in numpy."""
    s = DITSSampler(num_steps=10, sample_steps=4)
    anchor = torch.randn(3, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    res = chain(s, anchor, lambda v, t: 0.5 * v + t[:, None].to(v.dtype))
    v = anchor.numpy().copy()
    chi = dits_coefficients(dits_betas(0.1, 0.99, 4))[0]
    for i in (3, 2, 1, 0):
        v = v - chi[i] * (0.5 * v + i)
    np.testing.assert_allclose(res.sample.numpy(), v, rtol=1e-12)
    assert [int(r["t"][0]) for r in res.trajectory] == [3, 2, 1, 0]
    assert torch.equal(res.trajectory[0]["x_t"], anchor)


def test_zero_steps_returns_the_anchor_without_calling_the_model():
    s = DITSSampler(sample_steps=0)
    assert s.timesteps() == []
    anchor = torch.randn(2, D)
    calls = []
    res = chain(s, anchor, lambda v, t: calls.append(t) or v)
    assert calls == [] and torch.equal(res.sample, anchor)


def test_truncation_rules():
    """linspace: the linear schedule over T' steps; prefix: the first T' of the T-step one."""
    full = DITSSampler(num_steps=10, sample_steps=10)
    assert np.array_equal(DITSSampler(sample_steps=10, truncation="prefix").chi, full.chi)
    pre = DITSSampler(num_steps=10, sample_steps=3, truncation="prefix")
    np.testing.assert_array_equal(pre.betas, full.betas[:3])
    np.testing.assert_array_equal(pre.chi, full.chi[:3])
    lin = DITSSampler(num_steps=10, sample_steps=3)
    np.testing.assert_allclose(lin.betas, [0.1, 0.545, 0.99])
    assert DITSSampler(sample_steps=40).timesteps()[0] == 39  # longer than T is allowed with linspace
    with pytest.raises(ValueError, match="sample_steps \\(12\\) must be <= num_steps \\(10\\)"):
        DITSSampler(sample_steps=12, truncation="prefix")
    with pytest.raises(ValueError, match="truncation must be one of linspace, prefix"):
        DITSSampler(truncation="cut")
    with pytest.raises(ValueError, match="beta_end"):
        DITSSampler(beta_end=1.0)


def test_noise_is_off_by_default_and_seeded_when_on():
    anchor = torch.randn(4, D, generator=torch.Generator().manual_seed(2))
    eps = lambda v, t: 0.1 * v  # noqa: E731
    quiet = DITSSampler()
    assert torch.equal(chain(quiet, anchor, eps, seed=0).sample, chain(quiet, anchor, eps, seed=1).sample)
    loud = DITSSampler(noise=True)
    a, b = chain(loud, anchor, eps, seed=0).sample, chain(loud, anchor, eps, seed=1).sample
    assert torch.equal(a, chain(loud, anchor, eps, seed=0).sample) and not torch.equal(a, b)
    # the noise is lambda_k z: its spread grows with noise_scale
    half = chain(DITSSampler(noise=True, noise_scale=0.5), anchor, eps, seed=0).sample
    ref = chain(quiet, anchor, eps).sample
    assert (half - ref).norm() < (a - ref).norm()
    # z = 0 at the last step: a one-step chain is deterministic even with noise on
    one = DITSSampler(sample_steps=1, noise=True)
    assert torch.equal(chain(one, anchor, eps, seed=0).sample, chain(one, anchor, eps, seed=5).sample)


def test_start_needs_a_matching_anchor():
    s = registry().create("samplers", "dits")
    assert s.truncated and s.prediction == "eps"
    with pytest.raises(ValueError, match="anchor"):
        s.start(shape=(2, D))
    with pytest.raises(ValueError, match="anchor shape"):
        s.start(shape=(2, D), anchor=torch.zeros(3, D))


def test_the_chain_keeps_the_graph():
    """DITS trains through every unrolled step: the sampler must not cut gradients."""
    anchor = torch.randn(2, D, requires_grad=True)
    w = torch.tensor(0.3, requires_grad=True)
    res = chain(DITSSampler(sample_steps=3), anchor, lambda v, t: w * v)
    res.sample.sum().backward()
    assert anchor.grad is not None and w.grad is not None and w.grad.abs() > 0
    # d v0 / d anchor = prod_k (1 - chi_k w) for this linear eps
    chi = DITSSampler(sample_steps=3).chi
    expected = float(np.prod(1 - chi * 0.3))
    torch.testing.assert_close(anchor.grad, torch.full_like(anchor, expected))
