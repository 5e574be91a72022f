"""QB-Norm (dynamic inverted softmax) against results worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from diffret_cli.errors import ConfigError
from diffret_cli.qbnorm import activation_set, bank_log_normalizer, qb_norm

LN = math.log

# Bank of 2 queries over a gallery of 3 items, chosen so that exp(beta * s) is an integer
# when beta * s = ln(n):  exp(beta * bank) = [[4, 1, 1], [1, 3, 1]]
# -> column sums 5, 4, 2; top-1 of the bank rows: items 0 and 1, so A = {0, 1}.
BANK_LOG = [[LN(4), 0.0, 0.0], [0.0, LN(3), 0.0]]
# query 0: exp(beta * s) = [5, 2, 1], top-1 item 0 (in A): s' = [5/5, 2/4, 1/2]
# query 1: top-1 item 2 (not in A): unchanged
QUERIES_LOG = [[LN(5), LN(2), 0.0], [0.0, 0.5, 0.9]]


@pytest.mark.parametrize("beta", [1.0, 20.0])
def test_hand_computed_example(beta):
    bank = torch.tensor(BANK_LOG, dtype=torch.float64) / beta
    scores = torch.tensor(QUERIES_LOG, dtype=torch.float64) / beta
    out = qb_norm(scores, bank, beta=beta, k=1)
    assert out.shape == (2, 3) and out.dtype == torch.float64
    torch.testing.assert_close(out[0], torch.tensor([1.0, 0.5, 0.5], dtype=torch.float64))
    # top-1 outside the activation set: the row is returned exactly as it was
    assert torch.equal(out[1], scores[1])
    # the input is not modified in place
    assert scores[0, 0].item() == pytest.approx(LN(5) / beta)


def test_activation_set_and_normalizer():
    bank = torch.tensor(BANK_LOG)
    assert activation_set(bank, k=1).tolist() == [True, True, False]
    torch.testing.assert_close(bank_log_normalizer(bank, beta=1.0),
                               torch.tensor([LN(5), LN(4), LN(2)], dtype=torch.float64))
    # chunking the bank (one row at a time) gives the same normaliser
    torch.testing.assert_close(bank_log_normalizer(bank, beta=1.0, chunk_size=1),
                               torch.tensor([LN(5), LN(4), LN(2)], dtype=torch.float64))


def test_k_widens_the_activation_set():
    bank = torch.tensor([[0.9, 0.5, 0.1, 0.0], [0.1, 0.8, 0.6, 0.0]])
    assert activation_set(bank, k=1).tolist() == [True, True, False, False]
    assert activation_set(bank, k=2).tolist() == [True, True, True, False]
    query = torch.tensor([[0.2, 0.3, 0.7, 0.1]])  # top-1 is item 2
    assert torch.equal(qb_norm(query, bank, beta=1.0, k=1), query)
    out = qb_norm(query, bank, beta=1.0, k=2)
    # s'(q, j) = e^{s(q,j)} / (e^{s(b0,j)} + e^{s(b1,j)})
    expected = [math.exp(0.2) / (math.exp(0.9) + math.exp(0.1)),
                math.exp(0.3) / (math.exp(0.5) + math.exp(0.8)),
                math.exp(0.7) / (math.exp(0.1) + math.exp(0.6)),
                math.exp(0.1) / (math.exp(0.0) + math.exp(0.0))]
    torch.testing.assert_close(out[0], torch.tensor(expected), rtol=1e-6, atol=0)
    assert expected[2] == pytest.approx(0.6879, abs=1e-4)  # 2.0138 / (1.1052 + 1.8221)


def test_large_beta_times_scores_do_not_overflow():
    bank = torch.tensor([[50.0, 10.0], [40.0, 45.0]], dtype=torch.float64)
    scores = torch.tensor([[49.0, 44.0]], dtype=torch.float64)
    # exp(20 * 50) = exp(1000) overflows even float64: the naive formula gives NaN
    naive = torch.exp(20 * scores) / torch.exp(20 * bank).sum(0)
    assert torch.isnan(naive).all()
    out = qb_norm(scores, bank, beta=20.0)
    # s'(0) = e^980 / (e^1000 + e^800) = e^-20 / (1 + e^-200);  s'(1) = e^880 / (e^200 + e^900) = e^-20
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.full((1, 2), math.exp(-20), dtype=torch.float64), rtol=1e-12, atol=0)
    assert math.exp(-20) == pytest.approx(2.0611536e-09, rel=1e-7)
    # float32 input: same values, float32 output
    out32 = qb_norm(scores.float(), bank.float(), beta=20.0)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32, torch.full((1, 2), math.exp(-20)), rtol=1e-6, atol=0)


def test_overflowing_output_dtype_is_an_error():
    bank = torch.zeros(1, 2)
    scores = torch.tensor([[10.0, 0.0]])  # exp(200) / 1 does not fit float32
    with pytest.raises(ConfigError, match="overflows"):
        qb_norm(scores, bank, beta=20.0)
    out = qb_norm(scores.double(), bank.double(), beta=20.0)  # it fits float64
    assert out[0, 0].item() == pytest.approx(math.exp(200), rel=1e-12)


def test_chunked_equals_direct_formula():
    g = torch.Generator().manual_seed(0)
    bank = torch.rand(5, 11, generator=g, dtype=torch.float64) * 2 - 1
    scores = torch.rand(23, 11, generator=g, dtype=torch.float64) * 2 - 1
    beta = 20.0
    active = torch.zeros(11, dtype=torch.bool)
    active[bank.argmax(1)] = True
    expected = scores.clone()
    normalised = torch.exp(beta * scores) / torch.exp(beta * bank).sum(0)  # safe at this scale
    rows = active[scores.argmax(1)]
    expected[rows] = normalised[rows]
    assert 0 < int(rows.sum()) < 23  # both kinds of rows occur
    torch.testing.assert_close(qb_norm(scores, bank, beta=beta), expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(qb_norm(scores, bank, beta=beta, chunk_size=4), expected, rtol=1e-12, atol=0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="G = 3"):
        qb_norm(torch.zeros(2, 3), torch.zeros(4, 5))
    with pytest.raises(ConfigError, match="k=0"):
        qb_norm(torch.zeros(2, 3), torch.zeros(4, 3), k=0)
    with pytest.raises(ConfigError, match="beta"):
        qb_norm(torch.zeros(2, 3), torch.zeros(4, 3), beta=0.0)
