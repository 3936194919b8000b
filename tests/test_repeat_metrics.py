"""Repeat and explore metrics: HR/NDCG@k on targets in their input window and on the others, worked out by hand
for a hand-built model and both baselines; the counts and the count-weighted means add up to the overall row;
`seqrec evaluate` writes them beside the old keys and prints them."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from seqrec.datasets.adapters import source_spec
from seqrec.datasets.prepare import PrepareConfig, prepare
from seqrec.datasets.synthetic import SyntheticConfig, write_events

from seqrec.cli.main import main
from seqrec.training.evaluation import evaluate_arrays, popularity_scorer, recent_scorer
from seqrec.training.metrics import repeat_targets

CPU = torch.device("cpu")
EVENTS = ("view", "purchase")
N_ITEMS = 32  # catalogue: 0 padding, 1 out of vocabulary, items 2..31
# item i is a training target i times: popularity ranks item i at 31 - i (the items above it are i + 1 .. 31)
TRAIN_ACTIONS = np.repeat(np.arange(2, N_ITEMS), np.arange(2, N_ITEMS))
#                      window      target event  kind
ROWS = [([0, 4, 9], 9, 0),     # repeat, the newest window item
        ([0, 0, 20], 20, 1),   # repeat
        ([5, 6, 7], 30, 0),    # explore
        ([0, 0, 12], 25, 0),   # explore
        ([0, 0, 0], 15, 1),    # explore: an empty window
        ([0, 0, 1], 1, 0),     # explore: an out-of-vocabulary target is no known item (and a miss)
        ([9, 3, 2], 3, 0)]     # repeat, not the newest window item
ARRAYS = {"state": np.array([r[0] for r in ROWS]), "action": np.array([r[1] for r in ROWS]),
          "event": np.array([r[2] for r in ROWS])}
REPEAT = [True, True, False, False, False, False, True]


def gain(rank: int) -> float:
    return 1 / math.log2(rank + 2)


def repeat_oracle(state: torch.Tensor) -> torch.Tensor:
    """(B, T) -> (B, I): a model perfect on repeat targets (first) and wrong on explore ones (last of all 30)."""
    target = {tuple(s): (a, rep) for (s, a, _), rep in zip(ROWS, REPEAT)}
    out = torch.ones(state.shape[0], N_ITEMS)
    for b, s in enumerate(state.tolist()):
        a, rep = target[tuple(s)]
        out[b, a] = 2.0 if rep else 0.0
    return out


def test_repeat_targets_are_known_items_of_the_window() -> None:
    state = torch.tensor([r[0] for r in ROWS])
    target = torch.tensor([r[1] for r in ROWS])
    assert repeat_targets(state, target).tolist() == REPEAT
    # padding in the window is no item: a padding target of a padded window is no repeat either
    assert repeat_targets(torch.tensor([[0, 0, 5]]), torch.tensor([0])).tolist() == [False]


@pytest.mark.parametrize("batch_size", [1024, 3])
def test_model_perfect_on_repeats_and_wrong_on_explores(batch_size: int) -> None:
    m = evaluate_arrays(repeat_oracle, ARRAYS, EVENTS, CPU, batch_size, split_repeat=True)
    view, purchase = m["view"], m["purchase"]
    assert (view["count"], view["repeat"]["count"], view["explore"]["count"]) == (5, 2, 3)
    assert (purchase["count"], purchase["repeat"]["count"], purchase["explore"]["count"]) == (2, 1, 1)
    for row in (view, purchase):
        assert all(row["repeat"][f"{x}@{k}"] == 1.0 for x in ("hr", "ndcg") for k in (5, 10, 20))
        assert all(row["explore"][f"{x}@{k}"] == 0.0 for x in ("hr", "ndcg") for k in (5, 10, 20))  # rank 29
    assert view["hr@10"] == 2 / 5 and view["ndcg@10"] == 2 / 5 and purchase["hr@20"] == 1 / 2


def test_popularity_by_repeat_and_explore() -> None:
    m = evaluate_arrays(popularity_scorer(TRAIN_ACTIONS, N_ITEMS, CPU), ARRAYS, EVENTS, CPU, split_repeat=True)
    view, purchase = m["view"], m["purchase"]
    # view repeats: targets 9 and 3 at ranks 22 and 28, misses at every k
    assert view["repeat"]["hr@20"] == 0.0 and view["repeat"]["ndcg@20"] == 0.0
    # view explores: 30 at rank 1, 25 at rank 6, OOV a miss
    assert view["explore"]["hr@5"] == pytest.approx(1 / 3) and view["explore"]["hr@10"] == pytest.approx(2 / 3)
    assert view["explore"]["ndcg@10"] == pytest.approx((gain(1) + gain(6)) / 3)
    # purchases: the repeat 20 at rank 11, the explore 15 at rank 16: misses at 10, hits at 20
    assert purchase["repeat"]["hr@10"] == 0.0 and purchase["repeat"]["ndcg@20"] == pytest.approx(gain(11))
    assert purchase["explore"]["hr@10"] == 0.0 and purchase["explore"]["ndcg@20"] == pytest.approx(gain(16))


def test_recent_items_by_repeat_and_explore() -> None:
    m = evaluate_arrays(recent_scorer(TRAIN_ACTIONS, N_ITEMS, CPU), ARRAYS, EVENTS, CPU, split_repeat=True)
    view, purchase = m["view"], m["purchase"]
    # view repeats: 9 is the newest of its window (rank 0), 3 the second newest of [9, 3, 2] (rank 1)
    assert view["repeat"]["hr@5"] == 1.0 and view["repeat"]["ndcg@10"] == pytest.approx((gain(0) + gain(1)) / 2)
    # view explores: 30 below its window's 3 items and 31 (rank 4), 25 below 12 and 26..31 (rank 7), OOV a miss
    assert view["explore"]["hr@5"] == pytest.approx(1 / 3) and view["explore"]["hr@10"] == pytest.approx(2 / 3)
    assert view["explore"]["ndcg@10"] == pytest.approx((gain(4) + gain(7)) / 3)
    # purchases: the repeat 20 first; the explore 15 of an empty window at its popularity rank 16
    assert purchase["repeat"]["hr@5"] == 1.0 and purchase["repeat"]["ndcg@5"] == 1.0
    assert purchase["explore"]["hr@10"] == 0.0 and purchase["explore"]["hr@20"] == 1.0
    assert purchase["explore"]["ndcg@20"] == pytest.approx(gain(16))


@pytest.mark.parametrize("scorer", ["oracle", "popularity", "recent"])
def test_counts_sum_and_weighted_means_give_the_overall_row_unchanged(scorer: str) -> None:
    score = {"oracle": repeat_oracle, "popularity": popularity_scorer(TRAIN_ACTIONS, N_ITEMS, CPU),
             "recent": recent_scorer(TRAIN_ACTIONS, N_ITEMS, CPU)}[scorer]
    split = evaluate_arrays(score, ARRAYS, EVENTS, CPU, 3, split_repeat=True)
    plain = evaluate_arrays(score, ARRAYS, EVENTS, CPU, 3)
    assert {ev: {k: v for k, v in row.items() if k not in ("repeat", "explore")} for ev, row in split.items()} == plain
    for row in split.values():
        rep, exp = row["repeat"], row["explore"]
        assert rep["count"] + exp["count"] == row["count"]
        for metric in (f"{x}@{k}" for x in ("hr", "ndcg") for k in (5, 10, 20)):
            mean = (rep[metric] * rep["count"] + exp[metric] * exp["count"]) / row["count"]
            assert mean == pytest.approx(row[metric]), metric


def test_a_kind_without_targets_has_count_zero_and_no_values() -> None:
    arrays = {k: v[:1] for k, v in ARRAYS.items()}  # one view, a repeat
    m = evaluate_arrays(repeat_oracle, arrays, EVENTS, CPU, split_repeat=True)
    assert m["view"]["explore"] == {**{f"{x}@{k}": None for k in (5, 10, 20) for x in ("hr", "ndcg")}, "count": 0}


def test_evaluate_writes_repeat_and_explore_beside_the_old_keys_and_prints_them(tmp_path: Path, capsys) -> None:
    write_events(SyntheticConfig(users=80, items=30, seed=5), tmp_path / "ev.parquet")
    prepare([tmp_path / "ev.parquet"], lambda p: source_spec("events", p), PrepareConfig(), tmp_path / "data")
    config = '[encoder]\nkind = "sasrec"\ndim = 8\n\n[train]\nmax_steps = 4\neval_every = 2\n'
    (tmp_path / "run.toml").write_text(config)
    run = tmp_path / "run"
    assert main(["train", "--config", str(tmp_path / "run.toml"), "--data", str(tmp_path / "data"),
                 "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--split", "test"]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) == {"test", "popularity", "recent", "checkpoint"}
    old = {f"{x}@{k}" for k in (5, 10, 20) for x in ("hr", "ndcg")} | {"count"}
    for who, block in (("model", metrics["test"]), ("popularity", metrics["popularity"]["test"]),
                       ("recent", metrics["recent"]["test"])):
        for ev, row in block.items():
            assert set(row) == old | {"repeat", "explore"} and set(row["repeat"]) == set(row["explore"]) == old
            assert row["repeat"]["count"] + row["explore"]["count"] == row["count"]
            share = f"{row['repeat']['count']:,} ({row['repeat']['count'] / row['count']:.1%})"
            assert f"| {who} {ev} | {share} |" in printed
    assert "| test | repeat targets | HR@10 | NDCG@10 | explore targets | HR@10 | NDCG@10 |" in printed
