"""Best-checkpoint selection in a real (tiny) `seqrec train` with the validation metric fixed in advance, and
the popularity baseline's scores and HR/NDCG@k worked out by hand."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from seqrec.datasets.adapters import source_spec
from seqrec.datasets.prepare import PrepareConfig, prepare
from seqrec.datasets.synthetic import SyntheticConfig, write_events

import seqrec.runs.train as run_train
from seqrec.runs.config import load_run_config
from seqrec.training.evaluation import evaluate_arrays, item_counts, popularity_scorer

CONFIG = """
[encoder]
kind = "sasrec"
dim = 16

[head]
variant = "sqn"

[train]
batch_size = 32
lr = 0.01
max_steps = 8
eval_every = 2
select_metric = "purchase/ndcg@10"
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    write_events(SyntheticConfig(users=80, items=30, seed=5), d / "events.parquet")
    prepare([d / "events.parquet"], lambda p: source_spec("events", p), PrepareConfig(), d / "prepared")
    return d / "prepared"


def test_best_checkpoint_is_the_step_with_the_best_metric(data, tmp_path, monkeypatch):
    """Evaluations at steps 2, 4, 6, 8 return purchase ndcg@10 = 0.2, 0.5, 0.5, 0.1: the best is step 4 (the
    tie at step 6 is no improvement), so best.pt holds the learner as it was at step 4 and best.json names it."""
    values = iter([0.2, 0.5, 0.5, 0.1])
    seen: dict[int, dict] = {}     # evaluation number -> the learner's weights at that evaluation

    def fixed(score_fn, arrays, names, device, batch_size=1024, split_repeat=False, events=False):
        assert not events  # this run has no event types
        learner = score_fn.__self__
        seen[len(seen)] = {k: v.detach().clone() for k, v in learner.state_dict().items()}
        return {"purchase": {"ndcg@10": next(values), "count": 1}}
    monkeypatch.setattr(run_train, "evaluate_arrays", fixed)
    (tmp_path / "run.toml").write_text(CONFIG)
    out = tmp_path / "run"
    result = run_train.train(load_run_config(tmp_path / "run.toml", [], str(data)), out, progress=False)

    assert len(seen) == 4                                             # steps 2, 4, 6, 8
    assert (result["best"], result["best_step"], result["step"]) == (0.5, 4, 8)
    best = torch.load(out / "checkpoints" / "best.pt", weights_only=True)
    last = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert (best["step"], best["best"], best["best_step"]) == (4, 0.5, 4)
    assert (last["step"], last["best"], last["best_step"]) == (8, 0.5, 4)
    assert json.loads((out / "checkpoints" / "best.json").read_text()) == {
        "step": 4, "select_metric": "purchase/ndcg@10", "value": 0.5,
        "valid": {"purchase": {"ndcg@10": 0.5, "count": 1}}}
    for name, state in best["model"].items():                        # the weights of step 4, not 6 or 8
        assert torch.equal(state, seen[1][name]), name
    assert any(not torch.equal(best["model"][k], seen[2][k]) for k in seen[2])
    for name, state in last["model"].items():
        assert torch.equal(state, seen[3][name]), name


def test_popularity_scores_and_metrics_by_hand():
    # a catalogue of 10 indices (0 padding, 1 OOV, items 2..9); item i appears i - 2 times as a training target
    train_actions = np.array([3] + [4] * 2 + [5] * 3 + [6] * 4 + [7] * 5 + [8] * 6 + [9] * 7)
    counts = [0, 0, 0, 1, 2, 3, 4, 5, 6, 7]
    assert item_counts(train_actions, 10, torch.device("cpu")).tolist() == counts
    score = popularity_scorer(train_actions, 10, torch.device("cpu"))
    states = np.array([[0, 2, 3], [4, 5, 6]])                        # the state does not matter to popularity
    assert score(torch.from_numpy(states)).tolist() == [counts, counts]
    # two validation rows, both views: target 7 (count 5) has 2 items above it (8, 9): rank 2, a hit at 5 with
    # gain 1 / log2(2 + 2) = 1/2; target 3 (count 1) has 6 above it (4..9): rank 6, a miss at 5 and a hit at 10
    # with gain 1 / log2(6 + 2) = 1/3
    arrays = {"state": states, "action": np.array([7, 3]), "event": np.array([0, 0])}
    m = evaluate_arrays(score, arrays, ("view", "purchase"), torch.device("cpu"))
    assert set(m) == {"view"} and m["view"]["count"] == 2
    assert m["view"]["hr@5"] == 0.5 and m["view"]["hr@10"] == 1.0 and m["view"]["hr@20"] == 1.0
    assert m["view"]["ndcg@5"] == pytest.approx(0.5 / 2)
    assert m["view"]["ndcg@10"] == pytest.approx((1 / 2 + 1 / 3) / 2)
