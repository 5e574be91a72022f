"""Ties are scored fairly: expected rank and expected R@k over every order of the tie
(DATA.md, metric conventions), so a model that scores everything alike gets chance."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from diffret_cli.metrics import KS, rank_counts, ranks_from_scores, retrieval_metrics, tied_queries


def _brute_force(scores: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Per query, the rank of the ground truth averaged over every order of the gallery
    that the scores allow: each permutation of the columns breaks the ties once."""
    q, g = scores.shape
    ranks = np.zeros(q)
    hits = {k: np.zeros(q) for k in KS}
    perms = list(itertools.permutations(range(g)))
    for i in range(q):
        for p in perms:
            order = sorted(range(g), key=lambda j: (-scores[i, j], p[j]))
            r = order.index(gt[i]) + 1
            ranks[i] += r
            for k in KS:
                hits[k][i] += r <= k
    return ranks / len(perms), {k: v / len(perms) for k, v in hits.items()}


def test_a_constant_model_scores_chance_not_100():
    for g in (3, 8, 60):
        m = retrieval_metrics(torch.zeros(g, g), torch.zeros(g, g), np.arange(g))
        for d in ("t2v", "v2t"):
            assert m[d]["R@1"] == pytest.approx(100.0 / g)
            for k in KS:
                assert m[d][f"R@{k}"] == pytest.approx(100.0 * min(1.0, k / g))
            assert m[d]["MnR"] == pytest.approx((g + 1) / 2) and m[d]["MdR"] == pytest.approx((g + 1) / 2)
            assert m[d]["tied"] == g and m[d]["queries"] == g


def test_expected_rank_and_recall_equal_the_average_over_every_tie_order():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 3, size=(12, 6)).astype(np.float32)  # few values: many ties
    gt = rng.integers(0, 6, size=12)
    ranks, hits = _brute_force(scores, gt)
    np.testing.assert_allclose(ranks_from_scores(torch.from_numpy(scores), gt), ranks, rtol=0, atol=1e-12)
    counts = rank_counts(torch.from_numpy(scores), gt)
    for k in KS:
        np.testing.assert_allclose(counts.recall_at(k), hits[k], rtol=0, atol=1e-12)
    m = retrieval_metrics(torch.from_numpy(scores), None, gt)["t2v"]
    assert m["R@1"] == pytest.approx(100 * hits[1].mean()) and m["MnR"] == pytest.approx(ranks.mean())


def test_without_ties_the_usual_rank():
    scores = torch.tensor([[0.9, 0.1, 0.2], [0.3, 0.5, 0.4], [0.1, 0.2, 0.05]])
    assert ranks_from_scores(scores, np.array([0, 2, 2])).tolist() == [1.0, 2.0, 3.0]
    assert tied_queries(scores, np.array([0, 2, 2])) == 0


def test_a_tie_below_the_ground_truth_changes_nothing():
    scores = torch.tensor([[0.9, 0.2, 0.2], [0.4, 0.4, 0.1]])
    assert tied_queries(scores, np.array([0, 0])) == 1  # row 1: gt 0.4 ties column 1
    assert ranks_from_scores(scores, np.array([0, 2])).tolist() == [1.0, 3.0]


def test_all_zero_rows_are_counted_as_tied_and_get_the_middle_rank():
    # the official similarity sets padded entries to exactly 0: a degenerate model can tie rows
    scores = torch.tensor([[0.0, 0.0, 0.0], [0.1, 0.5, 0.2], [0.3, 0.3, 0.9]])
    gt = np.arange(3)
    assert ranks_from_scores(scores, gt).tolist() == [2.0, 1.0, 1.0]
    m = retrieval_metrics(scores, scores.t(), gt)
    assert m["t2v"]["R@1"] == pytest.approx(100 * (1 / 3 + 1 + 1) / 3) and m["t2v"]["tied"] == 1


def test_multi_caption_video_to_text_ties_between_caption_groups():
    # video 0's best caption (0.5) ties video 1's best caption: half a hit at R@1
    cv = np.array([0, 0, 1, 1, 2])
    v2t = torch.tensor([[0.5, 0.1, 0.5, 0.2, 0.3],
                        [0.1, 0.1, 0.9, 0.2, 0.3],
                        [0.1, 0.1, 0.1, 0.2, 0.3]])
    m = retrieval_metrics(v2t.t(), v2t, cv)["v2t"]
    assert m["R@1"] == pytest.approx(100 * (0.5 + 1 + 1) / 3) and m["MnR"] == pytest.approx((1.5 + 1 + 1) / 3)
    assert m["tied"] == 1


def test_a_nan_ground_truth_ranks_last():
    scores = torch.tensor([[float("nan"), 0.2, 0.1], [0.9, 0.2, 0.1]])
    assert ranks_from_scores(scores, np.array([0, 0])).tolist() == [3.0, 1.0]


def test_identical_gallery_videos_give_chance_end_to_end(tmp_path):
    """A gallery whose videos are all the same clip: the stage-1 model cannot tell them
    apart, so text-to-video R@1 is 1/V (the strictly-higher rule reported 100)."""
    from diffret_cli.evaluation import EvalSettings, evaluate_split
    from diffret_cli.families import build_model
    from train_helpers import tiny_model_config

    torch.manual_seed(0)
    model = build_model(tiny_model_config(), load_pretrained=False)
    clip = np.random.default_rng(0).integers(0, 255, size=(4, 32, 32, 3), dtype=np.uint8)

    class Video:
        def __init__(self, i):
            self.video_id, self.captions = f"v{i}", [f"caption number {i}", f"another caption {i}"]

    class SameClipSplit:
        videos = [Video(i) for i in range(6)]
        table = None
        skipped: list = []

        def frames(self, video_id, indices=None):
            return (clip if indices is None else clip[indices]), 1.0

    res = evaluate_split(model, SameClipSplit(), EvalSettings(device="cpu", rerank=False, batch_size=4))
    t2v = res["rows"]["stage1"]["t2v"]
    assert t2v["tied"] == 12 and t2v["queries"] == 12
    assert t2v["R@1"] == pytest.approx(100 / 6) and t2v["R@5"] == pytest.approx(500 / 6)
    assert t2v["MnR"] == pytest.approx(3.5)
