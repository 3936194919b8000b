"""HR@k and NDCG@k against hand-computed values."""

import math

import pytest
import torch

from seqrec.training.metrics import RankingMetrics, hits_and_gains, target_ranks


def test_target_ranks_skip_reserved_items_and_miss_reserved_targets():
    #                 pad  oov   a    b    c    d
    scores = torch.tensor([[9.0, 9.0, 0.1, 0.5, 0.3, 0.2],
                           [0.0, 0.0, 0.4, 0.3, 0.2, 0.1],
                           [0.0, 0.0, 0.4, 0.3, 0.2, 0.1]])
    targets = torch.tensor([4, 2, 1])
    # row 0: c (0.3) is beaten by b only (pad/oov excluded) -> rank 1; row 1: a is first; row 2: OOV -> miss
    assert target_ranks(scores, targets).tolist() == [1, 0, 6]


def test_hits_and_gains():
    ranks = torch.tensor([0, 1, 4, 9, 10])
    hit, gain = hits_and_gains(ranks, 10)
    assert hit.tolist() == [1, 1, 1, 1, 0]
    expected = [1.0, 1 / math.log2(3), 1 / math.log2(6), 1 / math.log2(11), 0.0]
    assert gain.tolist() == pytest.approx(expected)


def test_ranking_metrics_by_event_type():
    m = RankingMetrics(("view", "like", "cart", "purchase"), ks=(1, 3))
    m.add(torch.tensor([0, 2, 5]), torch.tensor([0, 0, 3]))
    m.add(torch.tensor([1]), torch.tensor([3]))
    r = m.result()
    assert set(r) == {"view", "purchase"}
    assert r["view"]["hr@1"] == 0.5 and r["view"]["hr@3"] == 1.0
    assert r["view"]["ndcg@3"] == pytest.approx((1.0 + 1 / math.log2(4)) / 2)
    assert r["purchase"]["hr@3"] == 0.5 and r["purchase"]["count"] == 2
    assert r["purchase"]["ndcg@3"] == pytest.approx((1 / math.log2(3)) / 2)
