"""Re-ranking diagnostics on hand-built score matrices with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffret_cli.diagnostics import (rank_moves, record_arrays, rerank_diagnostics, sample_accuracy,
                                     topk_ceiling)


def test_rank_moves_counts_and_sizes():
    before = np.array([3, 1, 5, 2, 7, 4])
    after = np.array([1, 1, 6, 2, 3, 5])
    m = rank_moves(before, after)
    assert (m["up"], m["down"], m["same"]) == (2, 2, 2)
    assert m["up"] + m["down"] + m["same"] == m["queries"] == 6
    assert m["ranks_up"] == {"mean": 3.0, "max": 4}  # gains 2 and 4
    assert m["ranks_down"] == {"mean": 1.0, "max": 1}
    assert m["histogram"] == {-1: 2, 0: 2, 2: 1, 4: 1}
    assert m["mean_gain"] == pytest.approx((2 + 0 - 1 + 0 + 4 - 1) / 6)
    with pytest.raises(ValueError):
        rank_moves(before, after[:3])
    # expected ranks of ties end in .5: kept, not truncated
    half = rank_moves(np.array([2.5, 1.0]), np.array([1.0, 1.5]))
    assert half["histogram"] == {-0.5: 1, 1.5: 1} and half["ranks_up"] == {"mean": 1.5, "max": 1.5}
    assert (half["up"], half["down"], half["same"]) == (1, 1, 0)


def test_topk_ceiling():
    is_gt = np.array([[False, True, False], [False, False, False], [True, False, False], [False, False, False]])
    c = topk_ceiling(is_gt)
    assert c == {"k": 3, "queries": 4, "in_topk": 2, "percent": 50.0}


def test_sample_accuracy_against_stage1_and_chance():
    # K=4, stage-1 order = column order. Query 0: gt at col 2, sample puts it first.
    # Query 1: gt at col 0 (stage 1 right), sample puts col 3 first. Query 2: no gt (ignored).
    # Query 3: gt at col 1, sample ties cols 1 and 3 on top -> credit 1/2.
    is_gt = np.array([[0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0]], dtype=bool)
    samples = np.array([[0.1, 0.2, 0.9, -1.0], [0.0, 0.1, 0.2, 0.8], [1.0, 0.0, 0.0, 0.0], [0.0, 0.5, 0.1, 0.5]])
    a = sample_accuracy(samples, is_gt)
    assert a["queries"] == 3 and a["k"] == 4
    assert a["sample_top1"] == pytest.approx(100 * (1 + 0 + 0.5) / 3)
    assert a["stage1_top1"] == pytest.approx(100 * (0 + 1 + 0) / 3)
    assert a["chance_top1"] == pytest.approx(25.0)
    # ranks of the gt by the sample: 1, 4, 1.5 (tied with one other: half a rank, as metrics counts ties)
    assert a["sample_mean_rank"] == pytest.approx((1 + 4 + 1.5) / 3)
    assert a["stage1_mean_rank"] == pytest.approx((3 + 1 + 2) / 3)
    assert a["chance_mean_rank"] == pytest.approx(2.5)  # (K + 1) / 2
    # a constant sample is no better than chance (random tie-break), never 100%
    flat = sample_accuracy(np.zeros((3, 4)), is_gt[[0, 1, 3]])
    assert flat["sample_top1"] == pytest.approx(25.0)


def _record(rows_chunks, cand, samples):
    return [{"rows": torch.tensor(r), "candidates": torch.tensor(cand[r]), "sample": torch.tensor(samples[r])}
            for r in rows_chunks]


def test_rerank_diagnostics_t2v_and_multi_caption_v2t():
    # 3 videos, 5 captions: video 0 has captions 0,1; video 1 has 2,3; video 2 has caption 4
    cv = np.array([0, 0, 1, 1, 2])
    s = torch.tensor([[0.9, 0.45, 0.1],  # c0 -> v0 rank 1
                      [0.2, 0.8, 0.7],   # c1 -> v0 rank 3
                      [0.6, 0.5, 0.4],   # c2 -> v1 rank 2
                      [0.1, 0.3, 0.2],   # c3 -> v1 rank 1
                      [0.3, 0.2, 0.1]])  # c4 -> v2 rank 3
    k = 2
    t2v = s.clone()
    # re-rank within each caption's top 2: c2's gt v1 passes v0; c0's gt drops to 2
    bonus = {0: {0: 0.0, 1: 0.5}, 1: {1: 0.1, 2: 0.0}, 2: {0: 0.0, 1: 0.3}, 3: {1: 0.1, 2: 0.0}, 4: {0: 0.1, 1: 0.0}}
    for c, b in bonus.items():
        for v, x in b.items():
            t2v[c, v] += x
    v2t = s.t().clone()  # unchanged: every video keeps its rank
    cand_t2v = s.topk(k, dim=1).indices.numpy()
    samp_t2v = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    cand_v2t = s.t().topk(k, dim=1).indices.numpy()
    samp_v2t = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    record = {"t2v": _record([[0, 1, 2], [3, 4]], cand_t2v, samp_t2v),
              "v2t": _record([[2], [0, 1]], cand_v2t, samp_v2t)}  # chunks out of order on purpose
    d = rerank_diagnostics(s, (t2v, v2t), cv, record=record)

    t = d["t2v"]
    assert (t["moves"]["up"], t["moves"]["down"], t["moves"]["same"]) == (1, 1, 3)
    assert t["moves"]["histogram"] == {-1: 1, 0: 3, 1: 1}
    # gt in top 2: c0 yes, c1 (v0 is 3rd) no, c2 yes, c3 yes, c4 (v2 3rd) no
    assert t["ceiling"]["in_topk"] == 3 and t["ceiling"]["percent"] == pytest.approx(60.0)
    # among c0, c2, c3: sample argmax is gt for c2 (col 1 = v1) and c3 (col 0 = v1); stage 1 for c0, c3
    assert t["sample"]["queries"] == 3
    assert t["sample"]["sample_top1"] == pytest.approx(200 / 3)
    assert t["sample"]["stage1_top1"] == pytest.approx(200 / 3)
    assert t["sample"]["chance_top1"] == pytest.approx(50.0)

    v = d["v2t"]
    assert v["moves"] == {**v["moves"], "queries": 3, "up": 0, "down": 0, "same": 3}
    # v0's top-2 captions: c0 (0.9), c2 (0.6) -> c0 is its own; v1: c1 (0.8), c2 (0.5) -> c2 own;
    # v2: c1 (0.7), c2 (0.4) -> neither is c4
    assert v["ceiling"]["in_topk"] == 2
    assert v["sample"]["queries"] == 2
    # v0 sample picks col 0 (c0, own) -> right; v1 picks col 1 (c2, own) -> right
    assert v["sample"]["sample_top1"] == pytest.approx(100.0)
    assert v["sample"]["stage1_top1"] == pytest.approx(50.0)


def test_without_record_uses_stage1_topk():
    cv = np.arange(4)
    s = torch.eye(4) + 0.01 * torch.arange(16.).view(4, 4)
    d = rerank_diagnostics(s, (s, s.t()), cv, topk_t2v=2, topk_v2t=2)
    assert d["t2v"]["sample"] is None and d["t2v"]["ceiling"]["percent"] == 100.0
    assert d["t2v"]["moves"]["same"] == 4
    # a family that rescores the whole gallery (no shortlist, no record): moves only
    whole = rerank_diagnostics(s, (s.flip(1), s.t()), cv, record={"v0": torch.zeros(4, 2)})
    assert whole["t2v"]["ceiling"] is None and whole["t2v"]["sample"] is None
    assert whole["t2v"]["moves"]["down"] == 4  # flipped columns put every ground truth lower


def test_record_arrays_orders_rows():
    chunks = [{"rows": torch.tensor([2, 3]), "candidates": torch.tensor([[1, 0], [0, 1]]),
               "sample": torch.tensor([[0.5, 0.1], [0.2, 0.3]])},
              {"rows": torch.tensor([0, 1]), "candidates": torch.tensor([[3, 2], [2, 3]]),
               "sample": torch.tensor([[0.9, 0.0], [0.0, 0.9]])}]
    rows, cand, samples = record_arrays(chunks)
    assert rows.tolist() == [0, 1, 2, 3]
    assert cand.tolist() == [[3, 2], [2, 3], [1, 0], [0, 1]]
    assert samples[2].tolist() == pytest.approx([0.5, 0.1])
