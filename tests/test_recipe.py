"""The supervised head's recipes ([head] loss, sampler, label_smoothing, copy; [train] patience): hand-computed
losses on tiny tensors, their checks, and a run that trains, evaluates and scores with them."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from seqrec.rl.qlearning.learner import step_generator
from seqrec.rl.qlearning.losses import HeadConfig
from seqrec.rl.qlearning.supervised import (
    draw_negatives,
    gbce,
    gbce_beta,
    mixture_nll,
    popularity_log_q,
    sampled_log_softmax,
    smoothing_sampled,
    supervised_loss,
)
from synthetic_data import prepared_log

import seqrec
from seqrec.models.repeat import CopyState
from seqrec.runs.config import run_config
from seqrec.runs.train import train
from seqrec.training.config import TrainConfig

LN2, LN3 = math.log(2), math.log(3)


def test_gbce_by_hand():
    """-beta log sigmoid(0) - log(1 - sigmoid(0)) - log(1 - sigmoid(ln 3)) = 0.5 ln 2 + ln 2 + ln 4."""
    loss = gbce(torch.tensor([0.0]), torch.tensor([[0.0, LN3]]), beta=0.5)
    torch.testing.assert_close(loss, torch.tensor([3.5 * LN2]))


def test_gbce_beta_by_hand():
    """12 rows = 10 real items; 3 negatives: alpha = 3 / 9. beta = alpha (t (1 - 1 / alpha) + 1 / alpha)."""
    assert gbce_beta(0.0, 3, 12) == pytest.approx(1.0)  # plain BCE
    assert gbce_beta(1.0, 3, 12) == pytest.approx(1 / 3)  # fully calibrated: beta = alpha
    assert gbce_beta(0.75, 3, 12) == pytest.approx(0.5)  # (1/3) (0.75 (1 - 3) + 3)


def test_sampled_softmax_by_hand_with_and_without_log_q():
    """Logits [ln 2 | 0, 0]; the second negative is the positive itself (left out): p = 2 / 3. With log Q of 1/2 for
    the positive and 1/4 for the negatives, the corrected logits are [ln 4 | ln 4, -]: p = 1 / 2."""
    pos, neg, ids, action = torch.tensor([LN2]), torch.zeros(1, 2), torch.tensor([[5, 7]]), torch.tensor([7])
    logp = sampled_log_softmax(pos, neg, ids, action, None)
    torch.testing.assert_close(logp[0, :2].exp(), torch.tensor([2 / 3, 1 / 3]))
    assert logp[0, 2] == -torch.inf
    log_q = torch.log(torch.tensor([0.0, 0.0, 0.25, 0.25, 0.25, 0.25, 0.25, 0.5]))
    torch.testing.assert_close(sampled_log_softmax(pos, neg, ids, action, log_q)[0, 0], torch.tensor(-LN2))
    # label smoothing over the sampled set: the mean -log p over the two candidates that count
    torch.testing.assert_close(smoothing_sampled(logp), torch.tensor([-(math.log(2 / 3) + math.log(1 / 3)) / 2]))


def _table() -> tuple[torch.Tensor, torch.Tensor]:
    """State [1] and a 1-wide table: pad 0, OOV 0, real items 0, ln 2, ln 3 -> softmax over 1 + 1 + 1 + 2 + 3 = 8."""
    return torch.tensor([[1.0]]), torch.tensor([[0.0], [0.0], [0.0], [LN2], [LN3]])


def test_full_cross_entropy_with_label_smoothing_by_hand():
    """Target item 4 (p = 3/8): 0.9 ln(8/3) + 0.1 (ln 8 - (0 + ln 2 + ln 3) / 3), the uniform part over the 3 real
    items."""
    state, table = _table()
    g = step_generator(0, 0)
    plain = supervised_loss(HeadConfig(), state, table, torch.tensor([4]), g)
    torch.testing.assert_close(plain, torch.tensor([math.log(8 / 3)]))
    smooth = supervised_loss(HeadConfig(label_smoothing=0.1), state, table, torch.tensor([4]), g)
    want = 0.9 * math.log(8 / 3) + 0.1 * (math.log(8) - (LN2 + LN3) / 3)
    torch.testing.assert_close(smooth, torch.tensor([want]))


def test_mixture_loss_by_hand():
    """g = 1/4, the window [5, 7] attended 1/2 each, catalogue p(7) = 0.2: p = 0.25 x 0.5 + 0.75 x 0.2 = 0.275.
    An item outside the window: p = 0.75 x 0.2 = 0.15."""
    cs = CopyState(window=torch.tensor([[5, 7]]), copyable=torch.tensor([[True, True]]),
                   log_attn=torch.log(torch.tensor([[0.5, 0.5]])), log_gate=torch.log(torch.tensor([0.25])),
                   log_rest=torch.log(torch.tensor([0.75])))
    cat = torch.log(torch.tensor([0.2]))
    torch.testing.assert_close(mixture_nll(cs, cat, torch.tensor([7])), torch.tensor([-math.log(0.275)]))
    torch.testing.assert_close(mixture_nll(cs, cat, torch.tensor([9])), torch.tensor([-math.log(0.15)]))


def test_mixture_with_the_catalogue_loss_beside_it_by_hand():
    """copy_aux = 1: -log(0.25 x 0.5 + 0.75 x 3/8) - log(3/8), target 4 attended 1/2 in the window [4, 3]."""
    state, table = _table()
    cs = CopyState(window=torch.tensor([[4, 3]]), copyable=torch.tensor([[True, True]]),
                   log_attn=torch.log(torch.tensor([[0.5, 0.5]])), log_gate=torch.log(torch.tensor([0.25])),
                   log_rest=torch.log(torch.tensor([0.75])))
    loss = supervised_loss(HeadConfig(copy=True, copy_aux=1.0), state, table, torch.tensor([4]), step_generator(0, 0),
                           cs)
    torch.testing.assert_close(loss, torch.tensor([-math.log(0.25 * 0.5 + 0.75 * 3 / 8) + math.log(8 / 3)]))


def test_gbce_and_sampled_through_supervised_loss():
    """The recipe's own negatives: gbce and sampled softmax of the state's dot products, as by hand from the draws."""
    state, table = _table()
    action = torch.tensor([4])
    head = HeadConfig(loss="gbce", loss_negatives=2, gbce_t=0.0)
    neg = draw_negatives(1, 2, 5, None, step_generator(0, 1))  # the draw the loss makes from the same generator
    want = gbce(table[4, 0].reshape(1), table[neg, 0], 1.0)
    torch.testing.assert_close(supervised_loss(head, state, table, action, step_generator(0, 1)), want)
    head = HeadConfig(loss="sampled", loss_negatives=2)
    logits = torch.cat([table[4, 0].reshape(1, 1), table[neg, 0].masked_fill(neg == 4, -torch.inf)], 1)
    want = -torch.log_softmax(logits, 1)[:, 0]
    torch.testing.assert_close(supervised_loss(head, state, table, action, step_generator(0, 1)), want)


def test_popularity_sampler_draws_by_target_counts_and_never_pad_or_oov():
    log_q = popularity_log_q(torch.tensor([5, 5, 1, 3, 0]))
    torch.testing.assert_close(log_q.exp(), torch.tensor([0.0, 0.0, 0.25, 0.75, 0.0]))
    draws = draw_negatives(200, 50, 5, log_q, step_generator(0, 0))
    assert set(draws.unique().tolist()) == {2, 3} and abs((draws == 3).float().mean().item() - 0.75) < 0.02


@pytest.mark.parametrize(("head", "message"), [
    (dict(loss="bpr"), "loss must be one of"),
    (dict(loss="sampled", loss_negatives=0), "loss_negatives"),
    (dict(sampler="popularity"), "applies to loss"),
    (dict(loss="gbce", copy=True), "gbce"),
    (dict(label_smoothing=1.0), "label_smoothing"),
    (dict(gbce_t=2.0), "gbce_t"),
    (dict(copy="yes"), "copy must be a bool"),
    (dict(copy_aux=1.0), "copy_aux applies"),
    (dict(copy=True, copy_aux=-1.0), "copy_aux must be"),
])
def test_bad_recipes_name_the_key(head, message):
    with pytest.raises(ValueError, match=message):
        HeadConfig(**head)


def test_patience_must_be_a_count_of_steps():
    with pytest.raises(ValueError, match="patience"):
        TrainConfig(patience=-1)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    return prepared_log(d)


def test_a_copy_run_with_the_recipe_trains_stops_early_evaluates_and_scores_through_the_seam(data, tmp_path):
    """SQN + copy + popularity-sampled softmax + label smoothing, patience 20 steps at evaluations every 10: the run
    stops by step 60 at the latest after its best; `seqrec score` ranks by the mixture (log-probabilities: every
    score <= 0, at most 1 in all per session), which the state-only fast path could not give (it refuses copy)."""
    raw = {"encoder": {"kind": "sasrec", "dim": 16, "dropout": 0.1},
           "head": {"variant": "sqn", "copy": True, "loss": "sampled", "loss_negatives": 8, "sampler": "popularity",
                    "label_smoothing": 0.1},
           "train": {"batch_size": 32, "lr": 0.01, "max_steps": 400, "eval_every": 10, "patience": 20,
                     "select_metric": "view/hr@10"}}
    cfg = run_config(raw, data=str(data))
    result = train(cfg, tmp_path / "run", progress=False)
    assert result["step"] < 400 and result["step"] - result["best_step"] >= 20
    metrics = seqrec.evaluate(tmp_path / "run")
    assert metrics["test"]["view"]["hr@10"] > 0
    events = pd.read_parquet(data.parent / "events.parquet").head(400)
    rows = seqrec.load_run(tmp_path / "run", top=5).score(events)
    assert len(rows) and (rows["supervised_score"] <= 0).all()
    assert (rows.groupby("session_id")["supervised_score"].apply(lambda s: s.map(math.exp).sum()) <= 1 + 1e-5).all()
