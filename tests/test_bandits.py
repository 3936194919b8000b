"""Tests for the nudge bandits (seqrec.rl.bandits.policies and .fit): propensities, hand-computed updates, convergence,
offline fitting from logs, save/load."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from seqrec.datasets.schema import DEFAULT_REWARDS
from seqrec.rl.bandits.fit import fit_offline, load_bandit, save_bandit
from seqrec.rl.bandits.policies import KINDS, BanditConfig, LinUCB, ThompsonSampling, event_rewards

ARMS = ("a", "b", "c", "d", "e")


def make(kind: str, arms=ARMS, dim: int = 3, **kw):
    return BanditConfig(kind=kind, **kw).create(arms, dim)


def feed(bandit, rng: np.random.Generator, n: int, dim: int = 3) -> None:
    """n random updates with rewards in [0, 1]."""
    for _ in range(n):
        bandit.update(rng.normal(size=dim), int(rng.integers(bandit.n_arms)), float(rng.random()))


def z_bound(p: np.ndarray, n: int) -> np.ndarray:
    """4.5 binomial standard errors (plus a hair for p = 0 or 1)."""
    return 4.5 * np.sqrt(p * (1 - p) / n) + 1e-9


# ------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize("kwargs, fragment", [
    ({"kind": "softmax"}, "kind must be one of"),
    ({"epsilon": 1.5}, "epsilon"),
    ({"epsilon": -0.1}, "epsilon"),
    ({"alpha": -1.0}, "alpha"),
    ({"ridge": 0.0}, "ridge"),
    ({"prior_alpha": 0}, "prior_alpha"),
    ({"mc_samples": 0}, "mc_samples"),
    ({"mc_samples": 10.5}, "mc_samples"),
    ({"seed": -1}, "seed"),
    ({"thompson_update": "coin"}, "thompson_update"),
])
def test_config_rejects_bad_values(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        BanditConfig(**kwargs)


def test_effective_epsilon_defaults_per_kind():
    assert BanditConfig().effective_epsilon == 0.1
    assert all(BanditConfig(kind=k).effective_epsilon == 0.0 for k in ("ucb1", "thompson", "linucb"))
    assert BanditConfig(kind="ucb1", epsilon=0.3).effective_epsilon == 0.3


@pytest.mark.parametrize("arms, dim, fragment", [
    ((), 0, "arms must be distinct"),
    (("a", "a"), 0, "arms must be distinct"),
])
def test_create_rejects_bad_arms(arms, dim, fragment):
    with pytest.raises(ValueError, match=fragment):
        BanditConfig().create(arms, dim)


def test_linucb_needs_a_context_width_and_context():
    with pytest.raises(ValueError, match="dim"):
        BanditConfig(kind="linucb").create(ARMS, 0)
    bandit = make("linucb", dim=3)
    for bad in (None, np.zeros(2), np.array([0.0, np.nan, 1.0])):
        with pytest.raises(ValueError, match=r"finite context of shape \(3,\)"):
            bandit.select(bad)
        with pytest.raises(ValueError, match=r"finite context of shape \(3,\)"):
            bandit.update(bad, 0, 1.0)


def test_context_free_kinds_ignore_context_and_dim():
    bandit = make("epsilon_greedy", dim=7)
    assert bandit.dim == 0
    assert bandit.select(np.ones(99))[0] in range(len(ARMS))


def test_argument_errors_name_the_problem():
    bandit = make("epsilon_greedy")
    with pytest.raises(ValueError, match="unknown arm 'zz'"):
        bandit.update(None, "zz", 1.0)
    with pytest.raises(ValueError, match="no arm is available"):
        bandit.select(None, np.zeros(len(ARMS), bool))
    with pytest.raises(ValueError, match="no arm is available"):
        bandit.select(None, [])
    with pytest.raises(ValueError, match="rewards must be finite"):
        bandit.update(None, 0, math.nan)
    with pytest.raises(ValueError, match="weights must be finite and > 0"):
        bandit.update(None, 0, 1.0, weight=0.0)
    with pytest.raises(ValueError, match=r"index in \[0, 5\)"):
        bandit.update(None, 5, 1.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        make("thompson").update(None, 0, 1.5)


def test_event_rewards_follow_the_training_map():
    assert event_rewards(["view", "purchase", "cart"]).tolist() == [
        DEFAULT_REWARDS["view"], DEFAULT_REWARDS["purchase"], DEFAULT_REWARDS["cart"]]
    assert event_rewards(["share"], {"share": 0.3}).tolist() == [0.3]
    with pytest.raises(ValueError, match="no reward for event type"):
        event_rewards(["view", "share"])


# ------------------------------------------------------------------------------------ propensities


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(KINDS), seed=st.integers(0, 2**16), n=st.integers(0, 30),
       mask_bits=st.integers(1, 2 ** len(ARMS) - 1), epsilon=st.sampled_from([None, 0.0, 0.25, 1.0]))
def test_probabilities_sum_to_one_over_available_arms(kind, seed, n, mask_bits, epsilon):
    bandit = make(kind, seed=seed, epsilon=epsilon, mc_samples=200)
    rng = np.random.default_rng(seed)
    feed(bandit, rng, n)
    mask = np.array([(mask_bits >> i) & 1 for i in range(len(ARMS))], bool)
    x = rng.normal(size=3)
    p = bandit.probabilities(x, mask)
    assert p.shape == (len(ARMS),)
    assert np.all(p >= 0) and np.all(p[~mask] == 0)
    assert abs(p.sum() - 1.0) < 1e-12
    eps = bandit.config.effective_epsilon
    assert np.all(p[mask] >= eps / mask.sum() - 1e-12)     # the epsilon floor holds
    arm, prop = bandit.select(x, mask)
    assert mask[arm] and prop > 0
    if kind != "thompson":                                 # exact: the logged propensity is the vector's
        assert prop == pytest.approx(bandit.probabilities(x, mask)[arm], abs=1e-15)


@pytest.mark.parametrize("kind", ["epsilon_greedy", "ucb1", "linucb"])
def test_exact_propensities_match_selection_frequencies(kind):
    bandit = make(kind, epsilon=0.3, seed=3)
    feed(bandit, np.random.default_rng(0), 40)
    x = np.array([0.5, -1.0, 2.0])
    mask = np.array([True, True, False, True, True])
    p = bandit.probabilities(x, mask)
    n = 20_000
    arms, props = bandit.select_batch(np.tile(x, (n, 1)), mask)
    freq = np.bincount(arms, minlength=len(ARMS)) / n
    assert np.all(np.abs(freq - p) <= z_bound(p, n))
    np.testing.assert_array_equal(props, p[arms])
    # the single-decision path draws from the same distribution
    m = 4000
    single = np.array([bandit.select(x, mask)[0] for _ in range(m)])
    assert np.all(np.abs(np.bincount(single, minlength=len(ARMS)) / m - p) <= z_bound(p, m))


def test_tied_greedy_arms_split_the_greedy_share_evenly():
    bandit = make("epsilon_greedy", epsilon=0.2, arms=("w", "x", "y", "z"))
    for arm, r in [(0, 0.5), (1, 0.5), (2, 0.1)]:
        bandit.update(None, arm, r)
    np.testing.assert_allclose(bandit.probabilities(), [0.05 + 0.4, 0.05 + 0.4, 0.05, 0.05], atol=1e-15)
    mask = np.array([True, False, True, True])   # arm 1 gone: arm 0 is the only greedy arm
    np.testing.assert_allclose(bandit.probabilities(None, mask), [0.2 / 3 + 0.8, 0, 0.2 / 3, 0.2 / 3],
                               atol=1e-15)
    assert bandit.probabilities(None, ["y", "z"]).tolist() == pytest.approx([0, 0, 0.8 + 0.1, 0.1])


def _beta_beats(a1: float, b1: float, a0: float, b0: float) -> float:
    """P(Beta(a1, b1) > Beta(a0, b0)) for integer a1, in closed form (Evan Miller's formula)."""
    def log_b(a: float, b: float) -> float:
        return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    return sum(math.exp(log_b(a0 + i, b0 + b1) - math.log(b1 + i) - log_b(1 + i, b1) - log_b(a0, b0))
               for i in range(int(a1)))


def test_thompson_propensities_match_the_exact_two_arm_probability_and_selection_frequencies():
    bandit = make("thompson", arms=("lo", "hi"), mc_samples=1000, seed=5)
    for r in (1, 0, 0, 0, 1, 0):
        bandit.update(None, "lo", r)          # Beta(3, 5)
    for r in (1, 1, 0, 1, 0):
        bandit.update(None, "hi", r)          # Beta(4, 3)
    assert bandit.alpha.tolist() == [3, 4] and bandit.beta.tolist() == [5, 3]
    exact = _beta_beats(4, 3, 3, 5)
    assert exact == pytest.approx(0.791375, abs=1e-6)
    assert bandit.propensity_samples == 1000
    p = bandit.probabilities()
    assert p.sum() == pytest.approx(1.0, abs=1e-12)
    assert abs(p[1] - exact) <= 4.5 * math.sqrt(exact * (1 - exact) / 1000)
    n = 2000
    picks = np.array([bandit.select()[0] for _ in range(n)])
    assert abs(picks.mean() - exact) <= z_bound(np.array(exact), n) + 4.5 * math.sqrt(exact * (1 - exact) / 1000)


# ------------------------------------------------------------------------------- hand-computed updates


def test_incremental_mean_is_the_papers_update():
    bandit = make("epsilon_greedy")
    for r in (1.0, 0.0, 0.5, 0.25):
        bandit.update(None, "c", r)
    assert bandit.mean[2] == pytest.approx(0.4375) and bandit.weight[2] == 4
    bandit.update(None, "a", 1.0, weight=2.0)
    bandit.update(None, "a", 0.0, weight=1.0)
    assert bandit.mean[0] == pytest.approx(2 / 3) and bandit.weight[0] == 3
    twin = make("epsilon_greedy")
    twin.update_batch(None, np.array([2, 2, 0]), np.array([1.0, 0.0, 1.0]), np.array([1, 1, 2.0]))
    twin.update_batch(None, np.array([2, 2, 0]), np.array([0.5, 0.25, 0.0]))   # merges with what is there
    np.testing.assert_allclose(twin.mean, bandit.mean, rtol=1e-14)
    np.testing.assert_array_equal(twin.weight, bandit.weight)
    assert twin.updates == bandit.updates == 6


def test_ucb1_bonus_by_hand_and_untried_arms_first():
    bandit = make("ucb1", arms=("x", "y", "z"))
    np.testing.assert_allclose(bandit.probabilities(), [1 / 3] * 3)     # all untried: tie
    bandit.update(None, "x", 1.0)
    bandit.update(None, "x", 0.0)
    bandit.update(None, "y", 0.2)
    assert bandit.probabilities().tolist() == [0, 0, 1]                # z untried goes first
    assert bandit.probabilities(None, ["x", "y"]).tolist() == [0, 1, 0]
    bonus = np.sqrt(2 * math.log(3) / np.array([2, 1]))
    np.testing.assert_allclose(bandit.bonus()[:2], bonus, rtol=1e-14)
    assert np.isinf(bandit.bonus()[2])
    assert 0.5 + bonus[0] < 0.2 + bonus[1]                             # hence y above
    bandit = make("ucb1", arms=("x", "y"), alpha=0.0)
    bandit.update(None, "x", 1.0)
    bandit.update(None, "y", 0.2)
    assert bandit.probabilities().tolist() == [1, 0]                   # alpha 0: greedy on means


def test_linucb_matches_the_ridge_solution_and_bonus_by_hand():
    rng = np.random.default_rng(7)
    d, ridge, alpha = 4, 0.7, 0.9
    bandit = make("linucb", arms=("p", "q", "r"), dim=d, ridge=ridge, alpha=alpha)
    x = rng.normal(size=(60, d))
    a = rng.integers(3, size=60)
    r = rng.random(60)
    for i in range(60):
        bandit.update(x[i], int(a[i]), float(r[i]))
    probe = rng.normal(size=d)
    scores = []
    for k in range(3):
        xa, ra = x[a == k], r[a == k]
        gram = ridge * np.eye(d) + xa.T @ xa
        theta = np.linalg.solve(gram, xa.T @ ra)
        np.testing.assert_allclose(bandit.theta[k], theta, rtol=1e-10, atol=1e-12)
        scores.append(theta @ probe + alpha * math.sqrt(probe @ np.linalg.solve(gram, probe)))
    np.testing.assert_allclose(bandit._scores(probe[None], 1)[0], scores, rtol=1e-10)
    np.testing.assert_allclose(bandit.values(probe), [bandit.theta[k] @ probe for k in range(3)])
    assert bandit.probabilities(probe)[int(np.argmax(scores))] == 1.0
    twin = make("linucb", arms=("p", "q", "r"), dim=d, ridge=ridge, alpha=alpha)
    twin.update_batch(x, a, r)
    np.testing.assert_allclose(twin.A, bandit.A, rtol=1e-12)
    np.testing.assert_allclose(twin.theta, bandit.theta, rtol=1e-9, atol=1e-12)
    weighted = make("linucb", arms=("p", "q", "r"), dim=d, ridge=ridge)
    w = rng.uniform(0.5, 3.0, size=60)
    weighted.update_batch(x, a, r, w)                  # importance weights: weighted ridge regression
    xa, ra, wa = x[a == 1], r[a == 1], w[a == 1]
    theta = np.linalg.solve(ridge * np.eye(d) + (xa * wa[:, None]).T @ xa, xa.T @ (wa * ra))
    np.testing.assert_allclose(weighted.theta[1], theta, rtol=1e-10, atol=1e-12)


def test_linucb_fresh_arms_tie_and_split_evenly():
    bandit = make("linucb", dim=3)
    np.testing.assert_allclose(bandit.probabilities(np.array([1.0, 2.0, 3.0])), [0.2] * 5)


def test_thompson_fractional_and_bernoulli_updates():
    frac = make("thompson", arms=("x", "y"), prior_alpha=2.0, prior_beta=1.0)
    frac.update(None, "x", 0.6)
    frac.update(None, "x", 0.2, weight=2.0)
    assert frac.alpha.tolist() == pytest.approx([2 + 0.6 + 0.4, 2]) and frac.beta.tolist() == pytest.approx(
        [1 + 0.4 + 1.6, 1])
    bern = make("thompson", arms=("x", "y"), thompson_update="bernoulli", seed=1)
    rewards = np.full(4000, 0.3)
    bern.update_batch(None, np.zeros(4000, np.int64), rewards)
    successes = bern.alpha[0] - 1
    assert successes == int(successes) and successes + bern.beta[0] - 1 == 4000   # whole trials
    assert abs(successes / 4000 - 0.3) < 4.5 * math.sqrt(0.21 / 4000)


# ------------------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_decisions(kind):
    def run(seed: int) -> list[tuple[int, float]]:
        bandit = make(kind, seed=seed, epsilon=0.5, mc_samples=50)
        rng = np.random.default_rng(0)
        out = []
        for _ in range(60):
            x = rng.normal(size=3)
            arm, p = bandit.select(x)
            bandit.update(x, arm, float(rng.random()))
            out.append((arm, p))
        return out
    assert run(1) == run(1)
    assert run(1) != run(2)


# ------------------------------------------------------------------------------------- convergence


@pytest.mark.parametrize("kind", KINDS)
def test_two_arm_problem_converges_to_the_better_arm(kind):
    bandit = make(kind, arms=("worse", "better"), dim=1, seed=11, mc_samples=200, epsilon=0.05)
    env = np.random.default_rng(12)
    means = (0.3, 0.6)
    picks = []
    for _ in range(1500):
        arm, _ = bandit.select(np.ones(1))
        bandit.update(np.ones(1), arm, float(env.random() < means[arm]))
        picks.append(arm)
    assert np.mean(picks[-500:]) > 0.85
    assert bandit.best_arm(np.ones(1)) == 1
    assert bandit.probabilities(np.ones(1))[1] > 0.9


def test_linucb_learns_a_different_best_arm_per_context():
    bandit = make("linucb", arms=("left", "right"), dim=2, seed=2, alpha=0.5)
    env = np.random.default_rng(3)
    segments = np.array([[1.0, 0.0], [0.0, 1.0]])
    means = np.array([[0.7, 0.2], [0.1, 0.5]])                  # (segment, arm)
    for _ in range(1500):
        s = int(env.integers(2))
        arm, _ = bandit.select(segments[s])
        bandit.update(segments[s], arm, float(env.random() < means[s, arm]))
    assert bandit.best_arm(segments[0]) == 0 and bandit.best_arm(segments[1]) == 1
    assert bandit.probabilities(segments[0])[0] == 1.0 and bandit.probabilities(segments[1])[1] == 1.0


# -------------------------------------------------------------------------------- offline fitting


def uniform_log(n: int, means: tuple[float, ...], seed: int = 0):
    """A log of a uniformly random logger over len(means) Bernoulli arms."""
    rng = np.random.default_rng(seed)
    arms = rng.integers(len(means), size=n)
    rewards = (rng.random(n) < np.asarray(means)[arms]).astype(float)
    return arms, rewards, np.full(n, 1 / len(means))


@pytest.mark.parametrize("kind", KINDS)
def test_replay_on_a_logged_uniform_policy_recovers_the_better_arm(kind):
    arms, rewards, props = uniform_log(3000, (0.2, 0.5, 0.8))
    bandit = make(kind, arms=("x", "y", "z"), dim=1, seed=4, mc_samples=100)
    fit = fit_offline(bandit, arms, rewards, props, contexts=np.ones((3000, 1)))
    assert fit.bandit is bandit and fit.method == "replay" and fit.rows == 3000
    assert fit.used == fit.matched == bandit.updates
    assert 0.25 * 3000 < fit.matched < 0.42 * 3000            # about a third match under a uniform logger
    assert bandit.best_arm(np.ones(1)) == 2
    assert fit.value > 0.6                                     # the fitted policy mostly plays the 0.8 arm


def test_replay_with_contexts_recovers_the_best_arm_per_segment():
    rng = np.random.default_rng(9)
    n = 4000
    seg = rng.integers(2, size=n)
    contexts = np.eye(2)[seg]
    arms = rng.integers(2, size=n)
    means = np.array([[0.7, 0.2], [0.1, 0.5]])
    rewards = (rng.random(n) < means[seg, arms]).astype(float)
    bandit = make("linucb", arms=("left", "right"), dim=2, alpha=0.3)
    fit = fit_offline(bandit, arms, rewards, np.full(n, 0.5), contexts=contexts)
    assert fit.matched > n / 3
    assert bandit.best_arm(np.eye(2)[0]) == 0 and bandit.best_arm(np.eye(2)[1]) == 1


def test_ips_fit_weights_rows_by_the_logged_propensity():
    # arm 0 logged mostly where it pays (propensity 0.9, reward 1) and rarely where it does not (0.1, 0):
    # the plain mean is 0.9, the importance-weighted one (as under a uniform logger) 0.5
    arms = np.array([0] * 10 + [1] * 2)
    rewards = np.array([1.0] * 9 + [0.0] + [0.4, 0.4])
    props = np.array([0.9] * 9 + [0.1] + [0.5, 0.5])
    bandit = make("epsilon_greedy", arms=("x", "y"))
    fit = fit_offline(bandit, ["x"] * 10 + ["y"] * 2, rewards, props, method="ips")
    assert (fit.rows, fit.used, fit.matched) == (12, 12, None)
    assert bandit.mean[0] == pytest.approx(0.5) and bandit.mean[1] == pytest.approx(0.4)
    w = 0.5 / props
    assert bandit.weight.tolist() == pytest.approx([w[:10].sum(), w[10:].sum()])
    assert fit.value == pytest.approx((w * rewards).sum() / w.sum())
    plain = make("epsilon_greedy", arms=("x", "y"))
    plain.update_batch(None, arms, rewards)                    # unweighted: the logger's skew stays
    assert plain.mean[0] == pytest.approx(0.9)


def test_fit_offline_errors():
    bandit = make("epsilon_greedy", arms=("x", "y"))
    with pytest.raises(ValueError, match="needs the logged propensities"):
        fit_offline(bandit, [0, 1], [1.0, 0.0], method="ips")
    with pytest.raises(ValueError, match="method must be one of"):
        fit_offline(bandit, [0, 1], [1.0, 0.0], method="dm")
    with pytest.raises(ValueError, match=r"propensities must have shape \(2,\) and lie in \(0, 1\]"):
        fit_offline(bandit, [0, 1], [1.0, 0.0], [0.5, 0.0])
    with pytest.raises(ValueError, match="unknown arm 'q' in row 1"):
        fit_offline(bandit, ["x", "q"], [1.0, 0.0])
    with pytest.raises(ValueError, match=r"arm index 2 in row 0"):
        fit_offline(bandit, [2, 0], [1.0, 0.0])
    with pytest.raises(ValueError, match=r"not available in row\(s\) \[1\]"):
        fit_offline(bandit, [0, 1], [1.0, 0.0], available=np.array([[True, True], [True, False]]))
    with pytest.raises(ValueError, match=r"rewards must have shape \(2,\)"):
        fit_offline(bandit, [0, 1], [1.0])
    with pytest.raises(ValueError, match=r"contexts of shape \(2, 2\)"):
        fit_offline(make("linucb", arms=("x", "y"), dim=2), [0, 1], [1.0, 0.0])
    assert bandit.updates == 0                                 # nothing learnt from a rejected log


# ------------------------------------------------------------------------------------- save / load


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip_is_exact(kind, tmp_path):
    bandit = make(kind, seed=8, mc_samples=64, epsilon=0.2)
    feed(bandit, np.random.default_rng(1), 50)
    for _ in range(7):                        # move the RNG on: load must restore its state, not the seed's
        bandit.select(np.ones(3))
    save_bandit(bandit, tmp_path / "run")
    meta = json.loads((tmp_path / "run" / "bandit.json").read_text())
    assert meta["config"]["kind"] == kind and meta["arms"] == list(ARMS) and meta["updates"] == 50
    loaded = load_bandit(tmp_path / "run")
    assert type(loaded) is type(bandit) and loaded.config == bandit.config and loaded.arms == bandit.arms
    assert loaded.updates == bandit.updates and loaded.dim == bandit.dim
    for name, value in bandit.state_arrays().items():
        np.testing.assert_array_equal(loaded.state_arrays()[name], value)
    if isinstance(bandit, LinUCB):
        np.testing.assert_array_equal(loaded.theta, bandit.theta)
        np.testing.assert_array_equal(loaded.A_inv, bandit.A_inv)
    rng = np.random.default_rng(2)
    for _ in range(20):                       # same RNG state: the same future decisions and propensities
        x = rng.normal(size=3)
        assert loaded.select(x) == bandit.select(x)
        r = float(rng.random())
        loaded.update(x, 1, r)
        bandit.update(x, 1, r)
    if isinstance(bandit, ThompsonSampling):
        assert loaded.propensity_samples == 64


def test_load_errors(tmp_path):
    with pytest.raises(ValueError, match="no saved bandit here"):
        load_bandit(tmp_path)
    save_bandit(make("ucb1"), tmp_path, name="nudge")
    meta = json.loads((tmp_path / "nudge.json").read_text())
    meta["format"] = 99
    (tmp_path / "nudge.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="format 99"):
        load_bandit(tmp_path, name="nudge")
    meta["format"], meta["config"]["kind"] = 1, "softmax"
    (tmp_path / "nudge.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="bad saved config"):
        load_bandit(tmp_path, name="nudge")
    meta["config"]["kind"] = "linucb"          # arrays on disk are a UCB1's
    meta["dim"] = 2
    (tmp_path / "nudge.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="array 'A' missing"):
        load_bandit(tmp_path, name="nudge")
