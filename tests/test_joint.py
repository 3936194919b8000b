"""Tests for joint (product, nudge) decisions (seqrec.rl.bandits.joint): distributions over the allowed cells for every
kind, hand-computed probabilities, draws that follow them, Thompson against brute force, the joint LinUCB."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from seqrec.rl.bandits.joint import (
    JOINT_KINDS,
    JointConfig,
    JointLinUCB,
    decide,
    draw,
    joint_probabilities,
    joint_propensity,
)

# the 2 x 3 case: product 0 / 1 rows, nudges 0..2; cell (1, 2) holds the largest value but is not allowed
VALUES = np.array([[[1.0, 2.0, 0.0], [2.0, 0.0, 3.0]]])  # (1, 2, 3)
ALLOWED = np.array([[[True, True, True], [True, True, False]]])


def sd_bound(p: np.ndarray, n: int) -> np.ndarray:
    """4.5 binomial standard errors of a frequency over n draws (plus a hair for p = 0 or 1)."""
    return 4.5 * np.sqrt(p * (1 - p) / n) + 1e-9


def phi(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


# ------------------------------------------------------------------------------------------- config and inputs


@pytest.mark.parametrize("kwargs, fragment", [
    ({"kind": "ucb1"}, "kind must be one of"),
    ({"epsilon": 1.5}, "epsilon"),
    ({"epsilon": -0.1}, "epsilon"),
    ({"temperature": 0.0}, "temperature"),
    ({"alpha": -1.0}, "alpha"),
    ({"samples": 0}, "samples"),
    ({"samples": 2.5}, "samples"),
    ({"seed": -1}, "seed"),
    ({"ridge": 0.0}, "ridge"),
])
def test_bad_config_names_the_field(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        JointConfig(**kwargs)


def test_bad_inputs_name_the_row():
    allowed = np.ones((3, 2, 2), bool)
    allowed[1] = False
    with pytest.raises(ValueError, match="row 1 has no allowed"):
        joint_probabilities(np.zeros((3, 2, 2)), allowed, JointConfig())
    values = np.zeros((3, 2, 2))
    values[2, 1, 0] = np.nan
    with pytest.raises(ValueError, match="row 2 has a non-finite value"):
        joint_probabilities(values, np.ones((3, 2, 2), bool), JointConfig())
    values[2, 1, 0] = np.inf  # a non-finite value where the cell is not allowed is ignored
    allowed = np.ones((3, 2, 2), bool)
    allowed[2, 1, 0] = False
    assert joint_probabilities(values, allowed, JointConfig())[2, 1, 0] == 0.0
    with pytest.raises(ValueError, match="needs `spread`"):
        joint_probabilities(VALUES, ALLOWED, JointConfig(kind="thompson"))
    with pytest.raises(ValueError, match="row 0 has a negative or non-finite spread"):
        joint_probabilities(VALUES, ALLOWED, JointConfig(kind="thompson"), spread=-np.ones((1, 2, 3)))
    with pytest.raises(ValueError, match="shape"):
        joint_probabilities(VALUES[0], ALLOWED[0], JointConfig())
    with pytest.raises(ValueError, match="row 0 of probabilities is not a distribution"):
        draw(np.full((1, 2, 3), 0.5), np.random.default_rng(0))


# ------------------------------------------------------------------------------------------- every kind


@st.composite
def problems(draw_):
    """(values (B, P, A) with ties, allowed (B, P, A) with at least one cell per row, spread (B, P, A))."""
    b, p, a = draw_(st.integers(1, 4)), draw_(st.integers(1, 5)), draw_(st.integers(1, 4))
    rng = np.random.default_rng(draw_(st.integers(0, 2**32 - 1)))
    values = np.round(rng.normal(size=(b, p, a)), 1)  # rounding makes ties common
    allowed = rng.random((b, p, a)) < draw_(st.floats(0.05, 1.0))
    flat = allowed.reshape(b, -1)
    flat[np.arange(b), rng.integers(flat.shape[1], size=b)] = True
    values[~allowed] = rng.choice([np.nan, np.inf, 1e9], size=int((~allowed).sum()))  # ignored where not allowed
    spread = np.where(rng.random((b, p, a)) < 0.3, 0.0, rng.random((b, p, a)))
    return values, allowed, spread


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(), st.sampled_from(JOINT_KINDS), st.floats(0.0, 1.0))
def test_every_kind_is_a_distribution_over_the_allowed_cells(problem, kind, epsilon):
    values, allowed, spread = problem
    cfg = JointConfig(kind=kind, epsilon=epsilon, temperature=0.3, samples=50)
    p = joint_probabilities(values, allowed, cfg, spread=spread, rng=np.random.default_rng(1))
    assert p.shape == values.shape
    assert (p[~allowed] == 0.0).all() and (p >= 0).all()
    np.testing.assert_allclose(p.reshape(len(p), -1).sum(axis=1), 1.0, rtol=0, atol=1e-12)
    flat_v = np.where(allowed, values, -np.inf).reshape(len(p), -1)
    first = np.argmax(flat_v, axis=1)  # the first maximum
    k = allowed.reshape(len(p), -1).sum(axis=1)
    rows = np.arange(len(p))
    if kind == "greedy":
        assert (p.reshape(len(p), -1)[rows, first] == 1.0).all()
    if kind in ("epsilon_greedy", "linucb"):
        np.testing.assert_allclose(p.reshape(len(p), -1)[rows, first], 1 - epsilon + epsilon / k, atol=1e-12)
        assert (p[allowed] >= (epsilon / k)[:, None, None].repeat(p.shape[1], 1).repeat(p.shape[2], 2)[allowed]
                - 1e-12).all()
    if kind == "softmax":
        assert (p[allowed] > 0).all()
    product, nudge, propensity = draw(p, np.random.default_rng(2))
    assert allowed[rows, product, nudge].all()  # never a forbidden cell
    assert np.array_equal(propensity, p[rows, product, nudge]) and (propensity > 0).all()


# ------------------------------------------------------------------------------------------- by hand


def test_greedy_epsilon_greedy_and_softmax_by_hand_on_a_2x3_case():
    # the largest allowed value, 2.0, is at (0, 1) and (1, 0): the first index wins
    greedy = joint_probabilities(VALUES, ALLOWED, JointConfig(kind="greedy"))
    np.testing.assert_array_equal(greedy[0], [[0, 1, 0], [0, 0, 0]])
    # five allowed cells: 0.1 / 5 = 0.02 each, plus 0.9 on the greedy one; the forbidden cell 0
    eps = joint_probabilities(VALUES, ALLOWED, JointConfig(kind="epsilon_greedy", epsilon=0.1))
    np.testing.assert_allclose(eps[0], [[0.02, 0.92, 0.02], [0.02, 0.02, 0.0]], rtol=0, atol=1e-15)
    # temperature 1 / ln 2: exp(v / T) = 2 ** v -> weights 2, 4, 1, 4, 1 (sum 12) and 0 on the forbidden cell
    soft = joint_probabilities(VALUES, ALLOWED, JointConfig(kind="softmax", temperature=1 / math.log(2)))
    np.testing.assert_allclose(soft[0], [[2 / 12, 4 / 12, 1 / 12], [4 / 12, 1 / 12, 0.0]], rtol=1e-12)
    assert soft[0, 1, 2] == 0.0 and eps[0, 1, 2] == 0.0
    # a huge value in the forbidden cell changes nothing
    big = VALUES.copy()
    big[0, 1, 2] = 1e300
    np.testing.assert_array_equal(joint_probabilities(big, ALLOWED, JointConfig(kind="softmax",
                                                                                temperature=1 / math.log(2))), soft)


def test_joint_propensity_is_the_product():
    np.testing.assert_array_equal(joint_propensity(np.array([1.0, 0.5]), np.array([0.25, 0.2])), [0.25, 0.1])


# ------------------------------------------------------------------------------------------- draws


def test_draws_follow_the_probabilities():
    p = joint_probabilities(VALUES, ALLOWED, JointConfig(kind="softmax", temperature=1 / math.log(2)))[0]  # (2, 3)
    n = 60_000
    product, nudge, propensity = draw(np.broadcast_to(p, (n, 2, 3)), np.random.default_rng(7))
    freq = np.bincount(product * 3 + nudge, minlength=6).reshape(2, 3) / n
    assert (np.abs(freq - p) <= sd_bound(p, n)).all(), (freq, p)
    assert freq[1, 2] == 0.0  # probability 0: never drawn
    np.testing.assert_array_equal(propensity, p[product, nudge])
    # chi-square over the five allowed cells (4 degrees of freedom; 18.47 is the 0.999 quantile)
    counts, expected = (freq * n)[ALLOWED[0]], (p * n)[ALLOWED[0]]
    assert ((counts - expected) ** 2 / expected).sum() < 18.47


def test_the_same_seed_gives_the_same_draws():
    p = np.broadcast_to(np.full((1, 2, 2), 0.25), (50, 2, 2))
    a = draw(p, np.random.default_rng(3))
    b = draw(p, np.random.default_rng(3))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


# ------------------------------------------------------------------------------------------- Thompson


def test_thompson_matches_the_normal_formula_on_two_cells():
    # P(X0 > X1) for X0 ~ N(1, 0.5^2), X1 ~ N(1.3, 1.2^2): Phi((1 - 1.3) / sqrt(0.25 + 1.44))
    values, spread = np.array([[[1.0, 1.3]]]), np.array([[[0.5, 1.2]]])
    n = 200_000
    p = joint_probabilities(values, np.ones((1, 1, 2), bool), JointConfig(kind="thompson", samples=n),
                            spread=spread, rng=np.random.default_rng(0))
    want = phi(-0.3 / math.sqrt(0.25 + 1.44))
    assert abs(p[0, 0, 0] - want) <= sd_bound(np.array(want), n)
    assert p[0, 0, 0] + p[0, 0, 1] == pytest.approx(1.0, abs=1e-12)


def test_thompson_matches_brute_force_monte_carlo():
    rng = np.random.default_rng(5)
    values = rng.normal(size=(3, 2, 3))
    spread = rng.uniform(0.2, 1.0, size=(3, 2, 3))
    allowed = np.ones((3, 2, 3), bool)
    allowed[0, 0, 0] = allowed[1, 1, :] = False
    n, m = 100_000, 400_000
    p = joint_probabilities(values, allowed, JointConfig(kind="thompson", samples=n), spread=spread,
                            rng=np.random.default_rng(11))
    # brute force: m independent Thompson decisions per row, one at a time in spirit (argmax of one noisy draw)
    brute = np.zeros((3, 6))
    other = np.random.default_rng(99)
    for r in range(3):
        theta = values[r].ravel() + spread[r].ravel() * other.standard_normal((m, 6))
        theta[:, ~allowed[r].ravel()] = -np.inf
        brute[r] = np.bincount(theta.argmax(axis=1), minlength=6) / m
    brute = brute.reshape(3, 2, 3)
    tol = 4.5 * np.sqrt(brute * (1 - brute) * (1 / n + 1 / m)) + 1e-9
    assert (np.abs(p - brute) <= tol).all()
    assert (p[~allowed] == 0).all()


def test_thompson_with_no_spread_is_greedy_and_decide_draws_what_it_reports():
    spread = np.zeros((1, 2, 3))
    cfg = JointConfig(kind="thompson", samples=20)
    np.testing.assert_array_equal(joint_probabilities(VALUES, ALLOWED, cfg, spread=spread),
                                  joint_probabilities(VALUES, ALLOWED, JointConfig(kind="greedy")))
    values = np.broadcast_to(VALUES, (500, 2, 3))
    allowed = np.broadcast_to(ALLOWED, (500, 2, 3))
    product, nudge, propensity, p = decide(values, allowed, JointConfig(kind="thompson", samples=64),
                                           spread=np.ones((500, 2, 3)), rng=np.random.default_rng(4))
    rows = np.arange(500)
    np.testing.assert_array_equal(propensity, p[rows, product, nudge])  # the logged propensity is what was drawn from
    assert (propensity > 0).all() and allowed[rows, product, nudge].all()
    assert len({tuple(r) for r in p.reshape(500, -1)}) > 1  # each row's own Monte-Carlo estimate


# ------------------------------------------------------------------------------------------- joint LinUCB


def test_linucb_scores_by_hand():
    cfg = JointConfig(kind="linucb", alpha=1.0, ridge=2.0)
    lin = JointLinUCB(cfg, n_products=3, n_nudges=2, dim=2)
    x = np.array([[1.0, 1.0]])  # |x|^2 = 2
    # untrained: theta 0, A^-1 = I / 2, phi has x in a product block and a nudge block: phi^T phi / 2 = 2
    np.testing.assert_allclose(lin.values(x), np.full((1, 3, 2), math.sqrt(2.0)))
    lin.update(x, np.array([1]), np.array([0]), np.array([1.0]))
    mean, sd = lin.posterior(x)
    # theta = phi r / (ridge + |phi|^2) with |phi|^2 = 4: the offered cell phi.theta = 4 / 6; a cell sharing one block
    # with it (same product or same nudge) has phi'.phi = 2: 2 / 6; a cell sharing neither: 0
    want = np.array([[0, 0], [4, 2], [0, 0]], float)
    want[[0, 2], 0] = 2
    np.testing.assert_allclose(mean[0], want / 6, atol=1e-12)
    # A^-1 = (I - phi phi^T / (ridge + |phi|^2)) / ridge: sd^2 = (|phi'|^2 - (phi'.phi)^2 / 6) / 2 = (4 - 16 / 6) / 2
    # on the offered cell, (4 - 4 / 6) / 2 on a cell sharing one block, 4 / 2 on the others
    var = np.full((3, 2), 2.0)
    var[1, 0] = 2 / 3
    var[1, 1] = var[0, 0] = var[2, 0] = 5 / 3
    np.testing.assert_allclose(sd[0] ** 2, var, atol=1e-12)


def segment_world(n_segments: int = 3):
    """Mean rewards (S, P, A) = product effect + nudge effect, both by segment: the best offer differs by segment."""
    product = np.array([[0.5, 0.2, 0.1], [0.1, 0.45, 0.2], [0.2, 0.1, 0.5]])  # (S, P)
    nudge = np.array([[0.1, 0.0], [0.0, 0.15], [0.1, 0.0]])  # (S, A)
    return product[:, :, None] + nudge[:, None, :]


def test_linucb_learns_the_best_joint_arm_of_each_segment():
    mu = segment_world()
    s_count, p_count, a_count = mu.shape
    best = [np.unravel_index(np.argmax(mu[s]), mu[s].shape) for s in range(s_count)]
    assert len(set(best)) == 3  # the best offer depends on the segment
    lin = JointLinUCB(JointConfig(kind="linucb", alpha=0.5, epsilon=0.1), p_count, a_count, dim=s_count)
    rng = np.random.default_rng(0)
    allowed = np.ones((20, p_count, a_count), bool)
    hits = []
    for _ in range(200):
        seg = rng.integers(s_count, size=20)
        x = np.eye(s_count)[seg]  # (20, S) segment one-hot
        probs = lin.probabilities(x, allowed)
        product, nudge, propensity = draw(probs, rng)
        np.testing.assert_array_equal(propensity, probs[np.arange(20), product, nudge])
        reward = (rng.random(20) < mu[seg, product, nudge]).astype(float)
        lin.update(x, product, nudge, reward)
        hits.append([(p, a) == best[s] for s, p, a in zip(seg, product, nudge, strict=True)])
    mean, _ = lin.posterior(np.eye(s_count))
    for s in range(s_count):
        assert np.unravel_index(np.argmax(mean[s]), mean[s].shape) == best[s]
    assert np.mean(hits[-50:]) > 0.75  # greedy share 0.9 (+ 0.1 / 6) when it has learnt; uniform would be 1 / 6


def test_linucb_with_pair_terms_learns_an_interaction_the_additive_model_cannot():
    # one segment; nudge 1 works only with product 1: mu = [[0.3, 0.1], [0.1, 0.4]]; additive fits get (0, 0) or
    # (1, 1) wrong in their ranking of the pair effects, the pair model gets the cell means
    mu = np.array([[0.3, 0.1], [0.1, 0.4]])
    rng = np.random.default_rng(1)
    x = np.ones((4000, 1))
    product, nudge = rng.integers(2, size=4000), rng.integers(2, size=4000)
    reward = mu[product, nudge] + rng.normal(0, 0.05, 4000)
    pair = JointLinUCB(JointConfig(kind="linucb", ridge=1.0), 2, 2, dim=1, pair_terms=True)
    pair.update(x, product, nudge, reward)
    mean, _ = pair.posterior(np.ones((1, 1)))
    np.testing.assert_allclose(mean[0], mu, atol=0.02)
    additive = JointLinUCB(JointConfig(kind="linucb", ridge=1.0), 2, 2, dim=1)
    additive.update(x, product, nudge, reward)
    flat, _ = additive.posterior(np.ones((1, 1)))
    assert np.abs(flat[0] - mu).max() > 0.05  # it cannot represent the interaction


def test_linucb_probabilities_mask_epsilon_and_save_load():
    lin = JointLinUCB(JointConfig(kind="linucb", epsilon=0.2, seed=3), 3, 2, dim=2, pair_terms=True)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(30, 2))
    lin.update(x, rng.integers(3, size=30), rng.integers(2, size=30), rng.random(30),
               weight=rng.uniform(0.5, 2.0, 30))
    allowed = rng.random((5, 3, 2)) < 0.6
    allowed[:, 0, 0] = True
    p = lin.probabilities(x[:5], allowed)
    k = allowed.reshape(5, -1).sum(axis=1)
    assert (p[~allowed] == 0).all()
    for r in range(5):
        assert (p[r][allowed[r]] >= 0.2 / k[r] - 1e-12).all()
        assert p[r].max() == pytest.approx(0.8 + 0.2 / k[r])
    copy = JointLinUCB.from_dict(json.loads(json.dumps(lin.to_dict())))
    assert copy.updates == 30 and copy.pair_terms and copy.cfg == lin.cfg
    np.testing.assert_array_equal(copy.values(x), lin.values(x))
    with pytest.raises(ValueError, match="lacks key"):
        JointLinUCB.from_dict({"format": 1})
    with pytest.raises(ValueError, match="product must be"):
        lin.update(x[:1], np.array([3]), np.array([0]), np.array([1.0]))


def test_linucb_batch_update_equals_one_at_a_time():
    rng = np.random.default_rng(8)
    x, product, nudge, reward = rng.normal(size=(40, 3)), rng.integers(4, size=40), rng.integers(3, size=40), \
        rng.random(40)
    batch, single = (JointLinUCB(JointConfig(kind="linucb"), 4, 3, dim=3, pair_terms=True) for _ in range(2))
    batch.update(x, product, nudge, reward)
    for i in range(40):
        single.update(x[i:i + 1], product[i:i + 1], nudge[i:i + 1], reward[i:i + 1])
    np.testing.assert_allclose(batch.A, single.A, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(batch.values(x), single.values(x), rtol=1e-9)
