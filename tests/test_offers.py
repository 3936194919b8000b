"""The offer-level Q learner: offers read from an event log (rewards, histories, links, joint propensities) by
hand, the contact-level fitted-Q target by hand, epoch selection by off-policy value, and a learning check."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from seqrec.datasets.offers import EventHistory, OfferError, OfferRows, OfferSpec, OfferVocab, offer_rows
from seqrec.datasets.schema import TIMESTAMP_TYPE
from seqrec.rl.bandits.joint import JointConfig
from seqrec.rl.offers.config import OfferConfig
from seqrec.rl.offers.decide import allowed_pairs, logged_bandit, policy_value
from seqrec.rl.offers.model import OfferQNet
from seqrec.rl.ope.estimators import OpeConfig

from seqrec.training.offers import choose_epoch, contact_targets, fit_offer_q

S, DAY = 1_000_000, 86_400_000_000


def log_table(rows: list[tuple]) -> pa.Table:
    """(user, item, event, time_us, nudge, propensity, product_propensity, segment) rows as an event table."""
    cols = list(zip(*rows))
    return pa.table({"user_id": pa.array(cols[0], pa.int64()), "item_id": pa.array(cols[1]),
                     "event_type": pa.array(cols[2]), "timestamp": pa.array(cols[3], TIMESTAMP_TYPE),
                     "nudge_id": pa.array(cols[4], pa.string()), "propensity": pa.array(cols[5], pa.float64()),
                     "product_propensity": pa.array(cols[6], pa.float64()), "segment": pa.array(cols[7])})


HAND = log_table([
    # user 2 first in the file: rows are sorted by customer, then time
    (2, "a", "view", 5 * S, "n1", 0.2, 0.5, "young"),          # offer O3, joint propensity 0.1
    (2, "a", "purchase", 6 * S, None, None, None, "young"),    # O3 bought: reward 1
    (2, "a", "view", 100 * S, None, None, None, "young"),      # a browse: not an offer
    (2, "a", "view", 200 * S, "n2", 0.5, None, "young"),       # offer O4, no product propensity: 0.5
    (2, "a", "purchase", 300 * S, None, None, None, "young"),  # after O4: O4's, not O3's
    (1, "a", "view", 0, "n1", 0.5, 0.5, "old"),                 # offer O1, joint 0.25
    (1, "b", "view", 10 * S, None, None, None, "old"),          # browse of another product
    (1, "a", "cart", 20 * S, None, None, None, "old"),          # O1: cart 0.6
    (1, "b", "purchase", 30 * S, None, None, None, "old"),      # another product: not O1's
    (1, "b", "view", DAY, "n2", 1.0, None, "old"),              # offer O2
    (1, "b", "like", DAY + 5 * S, None, None, None, "old"),     # O2: like 0.4
    (1, "b", "purchase", 11 * DAY, None, None, None, "old"),    # ten days later: outside 168 hours
])


def test_offer_rows_by_hand():
    vocab = OfferVocab.fit(HAND, ["segment"])
    assert vocab.items == ("a", "b") and vocab.nudges == ("n1", "n2")
    rows = offer_rows(HAND, vocab, OfferSpec(history=3, profile=("segment",)))
    assert rows.user.tolist() == [1, 1, 2, 2]
    np.testing.assert_allclose(rows.reward, [0.6, 0.4, 1.0, 1.0])
    np.testing.assert_allclose(rows.propensity, [0.25, 1.0, 0.1, 0.5])
    assert rows.item.tolist() == [2, 3, 2, 2] and rows.nudge.tolist() == [2, 3, 2, 3]
    assert rows.next_row.tolist() == [1, -1, 3, -1] and rows.contact.tolist() == [0, 1, 0, 1]
    # codes: items a=2, b=3; events view=1 like=2 cart=3 purchase=4; nudges n1=2, n2=3; 0 = padding
    assert rows.history[0].tolist() == [[0, 0, 0]] * 3
    assert rows.history[1].tolist() == [[3, 1, 0], [2, 3, 0], [3, 4, 0]]
    assert rows.history[3].tolist() == [[2, 1, 2], [2, 4, 0], [2, 1, 0]]
    assert rows.profile[:, 0].tolist() == [1, 1, 2, 2]          # levels sorted: old = 1, young = 2
    assert rows.source_row.tolist() == [5, 9, 0, 3]
    # a purchase-only reward table and a one-day window: O2's like no longer counts, O1's cart neither
    only = offer_rows(HAND, vocab, OfferSpec(history=3, attribution_hours=24, rewards={"purchase": 1.0}))
    np.testing.assert_allclose(only.reward, [0.0, 0.0, 1.0, 1.0])


def test_history_as_a_policy_sees_it_matches_the_offers():
    vocab = OfferVocab.fit(HAND, ["segment"])
    rows = offer_rows(HAND, vocab, OfferSpec(history=3))
    store = EventHistory(vocab, 3)
    store.add(HAND.slice(0, 6))
    store.add(HAND.slice(6))                                       # events arrive in parts, unsorted
    assert np.array_equal(store.before(np.asarray(rows.user), rows.time_us), rows.history)
    assert store.before(np.array([3]), np.array([0])).tolist() == [[[0, 0, 0]] * 3]   # a customer never seen


def test_a_log_without_offers_is_an_error():
    no_offers = HAND.filter(pa.compute.is_null(HAND.column("nudge_id")))
    with pytest.raises(OfferError, match="no offers"):
        offer_rows(no_offers, OfferVocab.fit(HAND), OfferSpec())


def three_contacts(rewards: list[float], bought_before_last: bool) -> OfferRows:
    """One customer, three offers; product 1 (item code 3) bought before the third when asked."""
    hist = np.zeros((3, 2, 3), np.int64)
    if bought_before_last:
        hist[2, -1] = [3, 4, 0]
    return OfferRows(np.zeros(3, np.int64), np.arange(3) * DAY, np.array([2, 3, 2]), np.array([2, 2, 2]),
                     np.full(3, 0.25), np.asarray(rewards, float), hist, np.zeros((3, 0), np.int64),
                     np.array([1, 2, -1]), np.arange(3), np.arange(3))


def test_contact_level_target_by_hand():
    q = np.array([[0.3, 0.9], [0.5, 0.2]])           # Q(product, nudge) at every state
    mask = np.array([[True, False], [True, True]])    # nudge 1 is forbidden with product 0
    rows = three_contacts([0.0, 1.0, 0.0], bought_before_last=True)
    y = contact_targets(rows, lambda h, p: np.broadcast_to(q, (len(h), 2, 2)), 0.5, mask)
    # contact 0: 0 + 0.5 * max allowed (0.9 forbidden) = 0.5 * 0.5; contact 1: 1 + 0.5 * 0.3 (product 1 bought
    # before contact 2); contact 2, the last: its reward alone
    np.testing.assert_allclose(y, [0.25, 1.15, 0.0])
    np.testing.assert_allclose(contact_targets(rows, None, 0.0, mask), [0.0, 1.0, 0.0])   # gamma 0: the bandit


def uniform_log(n: int, seed: int) -> tuple[OfferRows, np.ndarray]:
    """A uniformly random log over 2 products x 2 nudges where (product 1, nudge 0) pays 0.6, the rest 0.1."""
    rng = np.random.default_rng(seed)
    p, a = rng.integers(0, 2, n), rng.integers(0, 2, n)
    pay = np.where((p == 1) & (a == 0), 0.6, 0.1)
    reward = (rng.random(n) < pay).astype(float)
    rows = OfferRows(np.arange(n), np.zeros(n, np.int64), p + 2, a + 2, np.full(n, 0.25), reward,
                     np.zeros((n, 2, 3), np.int64), np.zeros((n, 0), np.int64), np.full(n, -1), np.zeros(n, np.int64),
                     np.arange(n))
    return rows, p * 2 + a


def test_policy_value_by_hand():
    rows, action = uniform_log(8, 0)
    values = np.zeros((8, 2, 2))
    values[:, 1, 0] = 1.0                                          # greedy: always (1, 0) = joint action 2
    allowed = np.ones((8, 2, 2), bool)
    est = policy_value(rows, values, allowed, JointConfig(kind="greedy"), "snips")
    hit = action == 2
    assert est.value == pytest.approx(rows.reward[hit].sum() / hit.sum())   # SNIPS: equal weights 4 on the hits


def test_choose_epoch_takes_the_best_value_only_when_clearly_better():
    rows, action = uniform_log(4000, 1)
    log = logged_bandit(rows, 2, 2)
    good, bad = np.full(4000, 2), np.full(4000, 0)                   # joint actions: (1, 0) pays 0.6, (0, 0) 0.1
    cfg = OpeConfig(resamples=200, seed=0)
    loss = np.array([0.30, 0.31, 0.29])                               # epoch 2 has the lowest held-out loss
    # epoch 1's policy is worth 0.6 against epoch 2's 0.1: far beyond chance, the value overrules the loss
    assert choose_epoch(log, [bad, good, bad], np.array([0.1, 0.6, 0.1]), loss, "snips", cfg) == 1
    assert choose_epoch(log, [bad, good, bad], np.array([0.1, 0.6, 0.1]), loss, "dr", cfg) == 1
    # the same policy at epochs 1 and 2 (a higher estimate is noise): the lowest loss stands
    assert choose_epoch(log, [bad, good, good], np.array([0.1, 0.61, 0.6]), loss, "snips", cfg) == 2
    assert choose_epoch(log, [bad, good, bad], np.array([0.1, 0.6, 0.1]), loss, "loss", cfg) == 2
    # from a given base (the wide model, epoch 0): a later epoch of the same policy is no reason to move
    assert choose_epoch(log, [good, good, bad], np.array([0.6, 0.62, 0.1]), loss, "snips", cfg, base=0) == 0
    assert choose_epoch(log, [bad, good, bad], np.array([0.1, 0.6, 0.1]), loss, "snips", cfg, base=0) == 1


def test_fit_learns_the_best_offer_and_reports_the_chosen_epoch():
    rows, _ = uniform_log(3000, 2)
    vocab = OfferVocab(("p0", "p1"), ("n0", "n1"))
    cfg = OfferConfig(history=2, dim=8, hidden=16, blocks=0, epochs=3, batch_size=128, lr=0.01, seed=0, head="joint",
                      refit=False)
    fitted = fit_offer_q(rows, vocab, cfg)
    info = fitted.info
    assert len(info["per_epoch"]) == 3 and 1 <= info["best_epoch"] <= 3      # the joint head: no wide-first epoch 0
    assert info["valid"] == info["per_epoch"][info["best_epoch"] - 1]
    with torch.no_grad():
        q = fitted.model.values(fitted.model.all_logits(torch.zeros((1, 2, 3), dtype=torch.long),
                                                        torch.zeros((1, 0), dtype=torch.long),
                                                        torch.tensor([2, 3]), torch.tensor([2, 3])))[0]
    assert int(torch.argmax(q)) == 2                                     # (product 1, nudge 0)
    assert float(q[1, 0]) == pytest.approx(0.6, abs=0.08) and float(q[0, 0]) == pytest.approx(0.1, abs=0.06)


def test_allowed_pairs_and_model_shapes():
    held = np.array([[True, False], [True, True]])
    mask = np.array([[True, False], [True, True]])
    ok = allowed_pairs(held, mask)
    assert ok[0].tolist() == [[False, False], [True, True]]          # product 0 held
    assert ok[1].tolist() == mask.tolist()                            # holds everything: any allowed pair
    for head in ("joint", "additive"):
        check_grid_equals_pairs(head)


def check_grid_equals_pairs(head: str) -> None:
    torch.manual_seed(0)
    net = OfferQNet(4, 6, 4, (3,), 5, OfferConfig(dim=8, hidden=8, head=head)).eval()
    with torch.no_grad():
        for p in net.parameters():           # every weight random, the zero-initialised wide terms included
            p.normal_()
    h = torch.tensor([[[0, 0, 0], [0, 0, 0], [2, 1, 2], [3, 2, 0], [2, 4, 0]]])
    prof = torch.tensor([[1]])
    grid = net.all_logits(h, prof, torch.tensor([2, 3]), torch.tensor([2, 3]))
    pairs = net.logits(h, prof, torch.tensor([[2, 2, 3, 3]]), torch.tensor([[2, 3, 2, 3]]))
    torch.testing.assert_close(grid.reshape(1, 4), pairs)             # the grid path equals the pair path


def test_an_ensemble_saves_loads_and_averages_its_members(tmp_path):
    from seqrec.training.offer_store import load_offers, save_offers

    rows, _ = uniform_log(600, 3)
    vocab = OfferVocab(("p0", "p1"), ("n0", "n1"))
    cfg = OfferConfig(history=2, dim=8, hidden=8, blocks=0, epochs=1, seed=5, ensemble=2, head="joint")
    fitted = fit_offer_q(rows, vocab, cfg)
    assert len(fitted.info["members"]) == 2 and len(fitted.model.members) == 2
    h, prof = torch.zeros((3, 2, 3), dtype=torch.long), torch.zeros((3, 0), dtype=torch.long)
    items, nudges = torch.tensor([2, 3]), torch.tensor([2, 3])
    with torch.no_grad():
        each = [m.all_logits(h, prof, items, nudges) for m in fitted.model.members]
        assert not torch.equal(each[0], each[1])                             # seeds 5 and 6: two different fits
        torch.testing.assert_close(fitted.model.all_logits(h, prof, items, nudges), (each[0] + each[1]) / 2)
        save_offers(tmp_path / "offers", fitted)
        loaded, mask = load_offers(tmp_path / "offers")
        torch.testing.assert_close(loaded.model.all_logits(h, prof, items, nudges),
                                   fitted.model.all_logits(h, prof, items, nudges))
    assert mask.all() and np.array_equal(loaded.held_out.astype(str), fitted.held_out.astype(str))


def test_the_wide_model_is_fitted_first_and_is_epoch_zero():
    rows, _ = uniform_log(3000, 4)
    rows = OfferRows(rows.user, rows.time_us, rows.item, rows.nudge, rows.propensity, rows.reward, rows.history,
                     (np.arange(len(rows)) % 2 + 1)[:, None], rows.next_row, rows.contact, rows.source_row)
    vocab = OfferVocab(("p0", "p1"), ("n0", "n1"), profile=(("segment", ("a", "b")),))
    cfg = OfferConfig(history=2, dim=8, hidden=8, blocks=0, epochs=2, seed=0, select="loss")
    fitted = fit_offer_q(rows, vocab, cfg)
    per = fitted.info["per_epoch"]
    assert len(per) == 3 and fitted.info["best_epoch"] == int(np.argmin([m["loss"] for m in per]))
    # epoch 0 is a logistic model of pairs: its loss on the held-out rows is that of the pair rates, near the
    # entropy of the truth (0.6 for one pair in four, 0.1 otherwise)
    p = np.where((rows.item == 3) & (rows.nudge == 2), 0.6, 0.1)
    entropy = float(np.mean(-(p * np.log(p) + (1 - p) * np.log(1 - p))))
    assert per[0]["loss"] == pytest.approx(entropy, abs=0.03)
