"""Ties: the strictly-higher rank rule, and the count of tied queries that goes with it."""

import numpy as np
import torch

from diffret_cli.metrics import ranks_from_scores, retrieval_metrics, tied_queries


def test_all_zero_rows_rank_first_but_are_counted_as_tied():
    # the official similarity sets padded entries to exactly 0: a degenerate model can tie rows
    scores = torch.tensor([[0.0, 0.0, 0.0], [0.1, 0.5, 0.2], [0.3, 0.3, 0.9]])
    gt = np.arange(3)
    assert ranks_from_scores(scores, gt).tolist() == [1, 1, 1]
    assert tied_queries(scores, gt) == 1
    m = retrieval_metrics(scores, scores.t(), gt)
    assert m["t2v"]["R@1"] == 100.0 and m["t2v"]["tied"] == 1 and m["t2v"]["queries"] == 3


def test_a_tie_below_the_ground_truth_is_not_counted():
    scores = torch.tensor([[0.9, 0.2, 0.2], [0.4, 0.4, 0.1]])
    assert tied_queries(scores, np.array([0, 0])) == 1  # row 1: gt 0.4 ties column 1
    assert ranks_from_scores(scores, np.array([0, 2])).tolist() == [1, 3]
