"""Off-policy evaluation (rl/ope.py, rl/ope_data.py, `seqrec ope`, experiments/ope_obd.py).

Synthetic logs come from a small world with a known true value: 4 context types with known frequencies, 5
actions with known click probabilities per type, a logging policy and a target policy per type; the value of
the target is sum_t P(t) sum_a target(a|t) q(t, a), exactly.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from seqrec.rl.bandits.fit import save_bandit
from seqrec.rl.bandits.policies import BanditConfig
from seqrec.rl.ope.estimators import (
    DM,
    DR,
    IPS,
    SNIPS,
    CellMeanModel,
    FixedArmPolicy,
    FixedPolicy,
    LogError,
    LoggedBandit,
    LowEffectiveSampleSize,
    NoOverlap,
    OpeConfig,
    Predictions,
    RidgeModel,
    UniformPolicy,
    action_probabilities,
    bootstrap_counts,
    estimate_policy,
    resample_order,
)

from seqrec.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
TYPES, ARMS = 4, 5


def world():
    """Fixed world: type frequencies, click probabilities (T, A), logging and target policies (T, A), truth."""
    rng = np.random.default_rng(1234)
    p_type = rng.dirichlet(np.ones(TYPES) * 3)
    q = rng.uniform(0.05, 0.6, (TYPES, ARMS))
    logger = 0.7 * rng.dirichlet(np.ones(ARMS), TYPES) + 0.3 / ARMS     # every action >= 6%
    target = rng.dirichlet(np.ones(ARMS) * 0.5, TYPES)                 # peaked, far from the logger
    truth = float(p_type @ (target * q).sum(axis=1))
    return p_type, q, logger, target, truth


def sample(n: int, seed: int, deterministic: bool = False):
    """(log with one-hot type contexts, (N, A) target probabilities, (N, A) expected rewards)."""
    p_type, q, logger, target, _ = world()
    rng = np.random.default_rng(seed)
    t = rng.choice(TYPES, n, p=p_type)
    a = (rng.random(n)[:, None] > np.cumsum(logger[t], axis=1)).sum(axis=1)
    expected = q[t]
    r = expected[np.arange(n), a] if deterministic else (rng.random(n) < expected[np.arange(n), a]).astype(float)
    log = LoggedBandit(a, r, logger[t, a], ARMS, context=np.eye(TYPES)[t])
    return log, target[t], expected


# ---------------------------------------------------------------------------------------- unbiasedness


def test_ips_and_dr_are_unbiased_and_their_intervals_cover_the_truth():
    truth = world()[4]
    cfg = OpeConfig(resamples=200, seed=0)
    seeds = range(200)
    values = {"ips": [], "dr": [], "snips": [], "dm": []}
    covered = {k: 0 for k in values}
    errors = {k: [] for k in values}
    for seed in seeds:
        log, pi, _ = sample(1000, seed)
        # DR's default model (mean per action) ignores the context: wrong, so DR leans on the propensities
        ests = [IPS(config=cfg), DR(config=cfg), SNIPS(config=cfg), DM(config=cfg)]
        for e in estimate_policy(log, pi, estimators=ests):
            values[e.estimator].append(e.value)
            covered[e.estimator] += e.contains(truth)
            errors[e.estimator].append(e.std_error)
    for name in ("ips", "dr"):
        v = np.array(values[name])
        # unbiased: the mean over 200 logs is within 3 standard errors of the truth
        assert abs(v.mean() - truth) < 3 * v.std(ddof=1) / np.sqrt(len(v)), (name, v.mean(), truth)
        # 95% intervals: expect ~190 of 200 to cover; 170 is 6 binomial sd below
        assert covered[name] >= 170, (name, covered[name])
        # the bootstrap standard error matches the spread of the estimates across logs (within 20%)
        assert np.mean(errors[name]) == pytest.approx(v.std(ddof=1), rel=0.2)
    assert covered["snips"] >= 170
    # ... while DM with that same wrong model is biased (about 19 standard errors low here): DR's unbiasedness
    # comes from the propensities, not from the model
    dm = np.array(values["dm"])
    assert (truth - dm.mean()) > 5 * dm.std(ddof=1) / np.sqrt(len(dm))


def test_dr_with_exact_reward_model_is_exact_even_with_wrong_propensities():
    log, pi, expected = sample(2000, 3, deterministic=True)
    conditional_truth = float((pi * expected).sum(axis=1).mean())
    wrong = LoggedBandit(log.action, log.reward, np.random.default_rng(0).uniform(0.05, 1.0, log.n), ARMS)
    for lg in (log, wrong):
        est = DR(Predictions(expected), config=OpeConfig(resamples=50)).estimate(lg, pi)
        assert est.value == pytest.approx(conditional_truth, abs=1e-12)


def test_dm_with_exact_model_equals_truth_and_dr_beats_ips_in_variance():
    log, pi, expected = sample(3000, 4)
    conditional_truth = float((pi * expected).sum(axis=1).mean())
    cfg = OpeConfig(resamples=300)
    assert DM(Predictions(expected), config=cfg).estimate(log, pi).value == pytest.approx(conditional_truth, abs=1e-12)
    ips, dr = IPS(config=cfg).estimate(log, pi), DR(Predictions(expected), config=cfg).estimate(log, pi)
    assert dr.std_error < ips.std_error
    assert "held fixed" in dr.note


def test_snips_equals_ips_when_weights_average_one():
    p = np.array([0.1, 0.2, 0.3, 0.4])
    action = np.random.default_rng(0).permutation(np.repeat(np.arange(4), [100, 200, 300, 400]))
    reward = np.random.default_rng(1).random(1000)
    log = LoggedBandit(action, reward, p[action], 4)
    pi = np.tile([0.5, 0.1, 0.1, 0.3], (1000, 1))     # mean weight = sum_a (n_a / N) pi_a / p_a = 1
    cfg = OpeConfig(resamples=20)
    assert SNIPS(config=cfg).estimate(log, pi).value == pytest.approx(IPS(config=cfg).estimate(log, pi).value,
                                                                      abs=1e-12)
    same = IPS(config=cfg).estimate(log, np.tile(p, (1000, 1)))  # target = logger: every weight is 1
    assert same.value == pytest.approx(reward.mean()) and same.ess == pytest.approx(1000)


def test_cell_mean_model_refit_per_resample_matches_an_explicit_refit():
    rng = np.random.default_rng(5)
    n, a = 600, 6
    action, pos = rng.integers(0, a, n), rng.integers(0, 3, n)
    log = LoggedBandit(action, (rng.random(n) < 0.3).astype(float), np.full(n, 1 / a), a, position=pos)
    pi = rng.dirichlet(np.ones(a), n)
    for model in (CellMeanModel(), CellMeanModel(by_position=False), CellMeanModel(smoothing=2.0)):
        for cls in (DM, DR):
            fast = cls(model, config=OpeConfig(resamples=0)).estimate(log, pi)
            fixed = cls(Predictions(model.fit_predict(log)), config=OpeConfig(resamples=0)).estimate(log, pi)
            assert fast.value == pytest.approx(fixed.value, abs=1e-12)
            # one resample: its value is the interval; refit the model on the resampled rows by hand
            cfg = OpeConfig(resamples=1, seed=7)
            one = cls(model, config=cfg).estimate(log, pi)
            rows = np.repeat(resample_order(log), bootstrap_counts(n, cfg)[0][0].astype(int))
            again = cls(model, config=OpeConfig(resamples=0)).estimate(log.subset(rows), pi[rows])
            assert one.low == one.high == pytest.approx(again.value, abs=1e-12)


def test_ridge_model_fits_a_linear_truth():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4000, 3))
    action = rng.integers(0, 2, 4000)
    theta = np.array([[0.5, 1.0, -1.0, 0.2], [0.1, -0.5, 0.3, 0.9]])
    truth = np.hstack([np.ones((4000, 1)), x]) @ theta.T
    log = LoggedBandit(action, truth[np.arange(4000), action], np.full(4000, 0.5), 2, context=x)
    assert np.abs(RidgeModel(l2=1e-6).fit_predict(log) - truth).max() < 1e-6


# ---------------------------------------------------------------------------------------- checks and errors


@pytest.mark.parametrize("propensity, message", [
    ([0.5, 0.5, np.nan, 0.5], r"propensity: row 2 \(source row 12\) is missing \(NaN\)"),
    ([0.5, 0.0, 0.5, 0.5], r"propensity: row 1 \(source row 11\) is zero"),
    ([0.5, 0.5, 0.5, -0.2], r"propensity: row 3 \(source row 13\) is negative"),
    ([1.5, 0.5, 0.5, 1.2], r"propensity: row 0 \(source row 10\) is above 1 .*2 bad rows in all"),
    (None, r"propensity is missing"),
    ([0.5, 0.5, 0.5], r"propensity has 3 rows but action has 4"),
])
def test_bad_propensities_name_field_and_row(propensity, message):
    with pytest.raises(LogError, match=message):
        LoggedBandit([0, 1, 0, 1], [1.0, 0.0, 0.0, 1.0], propensity, row_ids=[10, 11, 12, 13])


@pytest.mark.parametrize("kwargs, message", [
    (dict(reward=[1.0, np.inf, 0.0, 1.0]), r"reward: row 1 is not finite"),
    (dict(n_actions=1), r"action: row 1 is not below n_actions = 1"),
    (dict(action=[0, -1, 0, 1]), r"action: row 1 is negative"),
    (dict(position=[0, 1, 2]), r"position has 3 rows but action has 4"),
    (dict(available=np.array([[True, True], [True, False], [True, True], [True, True]])),
     r"available: row 1 does not include the logged action"),
    (dict(context=np.array([[0.0], [np.nan], [1.0], [2.0]])), r"context: row 1 has a value that is not finite"),
])
def test_bad_logs_name_field_and_row(kwargs, message):
    args = dict(action=[0, 1, 0, 1], reward=[1.0, 0.0, 0.0, 1.0], propensity=[0.5] * 4) | kwargs
    with pytest.raises(LogError, match=message):
        LoggedBandit(**args)


def test_bad_target_probabilities_name_the_row():
    log = LoggedBandit([0, 1, 0], [1.0, 0.0, 1.0], [0.5] * 3, 2, available=np.array([[1, 1], [1, 1], [1, 0]], bool))
    with pytest.raises(LogError, match=r"target probabilities: row 1 does not sum to 1"):
        action_probabilities(log, np.array([[0.5, 0.5], [0.7, 0.7], [1.0, 0.0]]))
    with pytest.raises(LogError, match=r"target probabilities: row 2 puts mass on unavailable actions"):
        action_probabilities(log, np.array([[0.5, 0.5], [0.5, 0.5], [0.5, 0.5]]))
    with pytest.raises(LogError, match=r"shape \(3, 2\)"):
        action_probabilities(log, np.ones((3, 3)) / 3)
    assert np.allclose(action_probabilities(log, UniformPolicy()), [[0.5, 0.5], [0.5, 0.5], [1.0, 0.0]])
    with pytest.raises(LogError, match="empty"):
        IPS().estimate(LoggedBandit([], [], [], 2), np.zeros((0, 2)))


def test_low_effective_sample_size_warns_with_its_own_class():
    rng = np.random.default_rng(0)
    p = np.array([0.99, 0.01])
    action = (rng.random(2000) < 0.01).astype(int)
    log = LoggedBandit(action, rng.random(2000), p[action], 2)
    with pytest.warns(LowEffectiveSampleSize, match="effective sample size"):
        IPS(config=OpeConfig(resamples=10)).estimate(log, np.tile([0.0, 1.0], (2000, 1)))  # only the rare action
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        est = IPS(config=OpeConfig(resamples=10)).estimate(log, np.tile(p, (2000, 1)))
    assert est.ess == pytest.approx(2000)


def test_a_deterministic_logger_cannot_evaluate_another_policy():
    rng = np.random.default_rng(0)
    log = LoggedBandit(np.zeros(500, int), rng.random(500), np.ones(500), 3)   # a rule: always action 0
    with pytest.warns(NoOverlap, match="could not take"):
        est = IPS(config=OpeConfig(resamples=10)).estimate(log, UniformPolicy())
    assert est.unsupported == pytest.approx(2 / 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = estimate_policy(log, FixedArmPolicy(0), OpeConfig(resamples=10))
    assert all(e.unsupported == 0 and e.value == pytest.approx(log.reward.mean()) for e in same)


def test_determinism_by_seed_and_shared_resamples():
    log, pi, _ = sample(1500, 9)
    a = estimate_policy(log, pi, OpeConfig(resamples=300, seed=3))
    b = estimate_policy(log, pi, OpeConfig(resamples=300, seed=3))
    c = estimate_policy(log, pi, OpeConfig(resamples=300, seed=4))
    assert a == b
    assert [x.value for x in a] == [x.value for x in c] and [x.low for x in a] != [x.low for x in c]
    # evaluate shares one set of resamples; each estimator alone draws the same ones from the same seed
    alone = [cls(config=OpeConfig(resamples=300, seed=3)).estimate(log, pi) for cls in (IPS, SNIPS, DM, DR)]
    assert alone == a


def test_clipping_is_reported_and_lowers_ips():
    log, pi, _ = sample(2000, 11)
    full = IPS(config=OpeConfig(resamples=50)).estimate(log, pi)
    clipped = IPS(clip=2.0, config=OpeConfig(resamples=50)).estimate(log, pi)
    w = pi[np.arange(log.n), log.action] / log.propensity
    assert clipped.clip == 2.0 and clipped.clipped == int((w > 2).sum()) > 0
    assert clipped.value < full.value and clipped.max_weight == full.max_weight == pytest.approx(w.max())
    assert clipped.ess > full.ess
    with pytest.raises(ValueError, match="clip"):
        IPS(clip=0)


def test_policies_by_position_and_bandits():
    rng = np.random.default_rng(1)
    n, a = 300, 4
    log = LoggedBandit(rng.integers(0, a, n), rng.random(n), np.full(n, 0.25), a, position=rng.integers(0, 3, n))
    table = rng.dirichlet(np.ones(a), 3).T                                   # (A, K)
    per_row = np.broadcast_to(table, (n, a, 3))                              # (N, A, K), OBP's action_dist
    assert np.allclose(action_probabilities(log, FixedPolicy(table)), action_probabilities(log, per_row))
    assert np.allclose(action_probabilities(log, FixedPolicy(table)), table[:, log.position].T)
    bandit = BanditConfig(kind="epsilon_greedy", epsilon=0.3).create(["a", "b", "c", "d"])
    bandit.update_batch(None, np.array([0, 1, 2]), np.array([0.1, 0.9, 0.2]))
    from_bandit = IPS(config=OpeConfig(resamples=20)).estimate(log, bandit)
    from_array = IPS(config=OpeConfig(resamples=20)).estimate(log, bandit.probabilities_batch(None, None, n))
    assert from_bandit == from_array


def test_bootstrap_on_ten_thousand_rows():
    """1000 resamples of 10k rows give every estimator a finite value and interval (its speed is
    benchmarked, not tested)."""
    rng = np.random.default_rng(0)
    n = 10_000
    log = LoggedBandit(rng.integers(0, 10, n), rng.random(n), np.full(n, 0.1), 10, position=rng.integers(0, 3, n))
    pi = rng.dirichlet(np.ones(10), n)
    ests = estimate_policy(log, pi, OpeConfig(resamples=1000))
    assert [e.estimator for e in ests] == ["ips", "snips", "dm", "dr"]
    assert all(np.isfinite([e.value, e.low, e.high]).all() and e.low < e.high and e.resamples == 1000 for e in ests)


# ---------------------------------------------------------------------------------------- by hand on five rows
# A log of 5 rows, 3 actions, known propensities; the target is [.2, .3, .5] in rows 0-2 and [.6, .2, .2] in
# rows 3-4. Every expected number below is worked out by hand in the comments.

HAND_ACTION = [0, 1, 2, 0, 1]
HAND_REWARD = [1.0, 0.0, 1.0, 0.0, 1.0]
HAND_PROPENSITY = [0.5, 0.25, 0.25, 0.5, 0.25]
HAND_PI = np.array([[0.2, 0.3, 0.5]] * 3 + [[0.6, 0.2, 0.2]] * 2)      # (N, A)
QUIET = {"min_ess": 0.0, "min_ess_fraction": 0.0}                       # five rows: no low-ESS warning


def hand_log() -> LoggedBandit:
    return LoggedBandit(np.array(HAND_ACTION), np.array(HAND_REWARD), np.array(HAND_PROPENSITY), 3)


def hand_value(estimator) -> float:
    return estimator.estimate(hand_log(), HAND_PI).value


def test_ips_snips_and_clipping_by_hand():
    # w = pi(a|x) / p: .2/.5 = .4, .3/.25 = 1.2, .5/.25 = 2.0, .6/.5 = 1.2, .2/.25 = .8 (sum 5.6)
    # w * r = .4, 0, 2.0, 0, .8 (sum 3.2)
    cfg = OpeConfig(resamples=0, **QUIET)
    assert hand_value(IPS(config=cfg)) == pytest.approx(3.2 / 5)            # 0.64
    assert hand_value(SNIPS(config=cfg)) == pytest.approx(3.2 / 5.6)        # 0.5714...
    # clip 1: w = .4, 1, 1, 1, .8 (rows 1, 2, 3 lowered); w * r = .4, 0, 1, 0, .8 (sum 2.2)
    clipped = IPS(clip=1.0, config=cfg).estimate(hand_log(), HAND_PI)
    assert clipped.value == pytest.approx(2.2 / 5) and clipped.clipped == 3 and clipped.max_weight == 2.0
    # Kish ESS of the clipped weights: (sum w)^2 / sum w^2 = 4.2^2 / (.16 + 1 + 1 + 1 + .64) = 17.64 / 3.8
    assert clipped.ess == pytest.approx(17.64 / 3.8)
    unclipped = IPS(config=cfg).estimate(hand_log(), HAND_PI)   # 5.6^2 / (.16 + 1.44 + 4 + 1.44 + .64)
    assert unclipped.ess == pytest.approx(31.36 / 7.68) and unclipped.clipped == 0


def test_dm_and_dr_with_the_cell_mean_model_by_hand():
    cfg = OpeConfig(resamples=0, **QUIET)
    # mean reward per action: q(0) = (1 + 0) / 2 = .5, q(1) = (0 + 1) / 2 = .5, q(2) = 1 / 1 = 1
    # rows 0-2: .2*.5 + .3*.5 + .5*1 = .75; rows 3-4: .6*.5 + .2*.5 + .2*1 = .6
    dm = (3 * 0.75 + 2 * 0.6) / 5                                           # 0.69
    assert hand_value(DM(config=cfg)) == pytest.approx(dm)
    # residuals r - q(a): .5, -.5, 0, -.5, .5; times w (.4, 1.2, 2, 1.2, .8): .2, -.6, 0, -.6, .4 (sum -.6)
    assert hand_value(DR(config=cfg)) == pytest.approx(dm - 0.6 / 5)        # 0.57: a non-zero correction


def test_dm_and_dr_with_a_wrong_reward_model_by_hand():
    cfg = OpeConfig(resamples=0, **QUIET)
    wrong = Predictions(np.full((5, 3), 0.5))                               # q = .5 everywhere
    # DM: sum_a pi(a) * .5 = .5 in every row
    assert hand_value(DM(wrong, cfg)) == pytest.approx(0.5)
    # correction w * (r - .5): .4*.5 = .2, 1.2*-.5 = -.6, 2*.5 = 1, 1.2*-.5 = -.6, .8*.5 = .4 (sum .4)
    assert hand_value(DR(wrong, config=cfg)) == pytest.approx(0.5 + 0.4 / 5)            # 0.58
    # clipped at 1: .4*.5 = .2, 1*-.5 = -.5, 1*.5 = .5, 1*-.5 = -.5, .8*.5 = .4 (sum .1)
    assert hand_value(DR(wrong, clip=1.0, config=cfg)) == pytest.approx(0.5 + 0.1 / 5)  # 0.52
    # a row-dependent wrong model: q = (row index) / 10 for every action, so DM = mean(0, .1, .2, .3, .4) = .2
    # and the correction is w * (r - q_i): .4*1 = .4, 1.2*-.1 = -.12, 2*.8 = 1.6, 1.2*-.3 = -.36, .8*.6 = .48
    by_row = Predictions(np.repeat(np.arange(5)[:, None] / 10, 3, axis=1))
    assert hand_value(DM(by_row, cfg)) == pytest.approx(0.2)
    assert hand_value(DR(by_row, config=cfg)) == pytest.approx(0.2 + (0.4 - 0.12 + 1.6 - 0.36 + 0.48) / 5)  # 0.6


def test_interval_level_widens_and_a_constant_statistic_has_zero_width():
    log = hand_log()
    ests = {lv: IPS(config=OpeConfig(resamples=2000, level=lv, seed=3, **QUIET)).estimate(log, HAND_PI)
            for lv in (0.5, 0.8, 0.99)}
    # the same seed gives the same resamples: a higher level takes outer quantiles of the same values
    assert ests[0.99].low < ests[0.8].low < ests[0.5].low < ests[0.5].high < ests[0.8].high < ests[0.99].high
    assert all(e.level == lv and e.resamples == 2000 for lv, e in ests.items())
    # the bootstrap values lie between the smallest and largest possible resample (all rows the min / max w*r):
    # w * r ranges over 0 .. 2.0, so every IPS resample is in [0, 2]
    assert 0.0 <= ests[0.99].low and ests[0.99].high <= 2.0
    # SNIPS with every reward 1 is sum c w / sum c w = 1 in every resample: a zero-width interval at 1
    ones = LoggedBandit(np.array(HAND_ACTION), np.ones(5), np.array(HAND_PROPENSITY), 3)
    for lv in (0.5, 0.99):
        snips = SNIPS(config=OpeConfig(resamples=200, level=lv, **QUIET)).estimate(ones, HAND_PI)
        assert snips.value == pytest.approx(1.0) and snips.low == pytest.approx(1.0) == snips.high
        assert snips.std_error == pytest.approx(0.0, abs=1e-12)
    # ... and IPS with equal weights (target = logger) and equal rewards is constant too: w = 1, r = 1 -> 1
    same = np.zeros((5, 3))
    same[np.arange(5), HAND_ACTION] = 1.0                                   # pi(logged) = 1 ...
    logged = LoggedBandit(np.array(HAND_ACTION), np.ones(5), np.ones(5), 3)  # ... and p = 1: w = 1
    ips = IPS(config=OpeConfig(resamples=200, level=0.9, **QUIET)).estimate(logged, same)
    assert (ips.value, ips.low, ips.high) == (1.0, 1.0, 1.0)


def test_interval_is_the_percentile_of_the_resampled_ips():
    """IPS's interval at level L is the (1 - L)/2 and (1 + L)/2 quantiles of sum_i c_i w_i r_i / N over the
    resamples' row counts c (rows taken by action, as resample_order says)."""
    log, cfg = hand_log(), OpeConfig(resamples=300, level=0.8, seed=5, **QUIET)
    counts = np.vstack(bootstrap_counts(5, cfg))                            # (B, N), rows in resample order
    order = resample_order(log)
    assert order.tolist() == [0, 3, 1, 4, 2]                                # actions 0, 0, 1, 1, 2
    wr = np.array([0.4, 0.0, 2.0, 0.0, 0.8])                                # w * r by hand (see above)
    values = [sum(c[j] * wr[order[j]] for j in range(5)) / 5 for c in counts]
    est = IPS(config=cfg).estimate(log, HAND_PI)
    assert (est.low, est.high) == pytest.approx(tuple(np.quantile(values, [0.1, 0.9])))


# ---------------------------------------------------------------------------------------- seqrec ope


HEADER = "user_id,session_id,item_id,event_type,timestamp,nudge_id,propensity\n"
TINY = [  # (user, session, item, event, time, nudge, propensity)
    (1, 1, 10, "view", 100, "social_proof", 0.5),
    (1, 1, 10, "purchase", 160, "", ""),
    (1, 1, 11, "view", 200, "urgency", 0.25),
    (2, 2, 12, "view", 300, "social_proof", 0.5),
    (2, 2, 12, "cart", 330, "", ""),
    (2, 2, 13, "view", 400, "reminder", 0.1),
    (3, 3, 14, "view", 500, "incentive", 0.05),
    (3, 3, 14, "purchase", 560, "", ""),
]


def write_log(path: Path, rows) -> Path:
    path.write_text(HEADER + "".join(",".join(str(v) for v in r) + "\n" for r in rows))
    return path


def test_cli_ope_uniform_on_a_tiny_log(tmp_path, capsys):
    path = write_log(tmp_path / "log.csv", TINY)
    out_json = tmp_path / "est.json"
    assert main(["ope", "--log", str(path), "--policy", "uniform", "--bootstrap", "200", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    # five decisions: rewards purchase 1.0, view 0.2, cart 0.6, view 0.2, purchase 1.0; 11 arms, uniform
    rewards = np.array([1.0, 0.2, 0.6, 0.2, 1.0])
    props = np.array([0.5, 0.25, 0.5, 0.1, 0.05])
    expected = float(np.mean(rewards / 11 / props))
    assert "5 nudge decisions (11 arms)" in out
    ips = next(line for line in out.splitlines() if line.startswith("| IPS"))
    assert float(ips.split("|")[2]) == pytest.approx(expected, rel=1e-5)
    assert all(f"| {name} |" in out for name in ("SNIPS", "DM", "DR"))
    assert '"estimator": "dr"' in out_json.read_text()


def test_cli_ope_stops_at_bad_propensities(tmp_path, capsys):
    zero = [r if i != 3 else (2, 2, 12, "view", 300, "social_proof", 0) for i, r in enumerate(TINY)]
    assert main(["ope", "--log", str(write_log(tmp_path / "zero.csv", zero)), "--policy", "uniform"]) == 2
    err = capsys.readouterr().err
    assert "row 5, field propensity: propensity_out_of_range" in err      # line 5 of the file (header = line 1)
    missing = [r if i != 3 else (2, 2, 12, "view", 300, "social_proof", "") for i, r in enumerate(TINY)]
    assert main(["ope", "--log", str(write_log(tmp_path / "missing.csv", missing)), "--policy", "uniform"]) == 2
    err = capsys.readouterr().err
    assert "propensity: row 2 (source row 5) is missing (NaN)" in err


def test_cli_ope_with_a_saved_bandit_and_other_policies(tmp_path, capsys):
    from seqrec.nudging.catalogue import load_catalogue

    path = write_log(tmp_path / "log.csv", TINY)
    bandit = BanditConfig(kind="epsilon_greedy", epsilon=0.5).create(load_catalogue().ids)
    save_bandit(bandit, tmp_path / "run")
    assert main(["ope", "--log", str(path), "--policy", str(tmp_path / "run"), "--bootstrap", "20"]) == 0
    assert "epsilon_greedy bandit" in capsys.readouterr().out
    assert main(["ope", "--log", str(path), "--policy", "arm:social_proof", "--bootstrap", "20",
                 "--estimators", "ips,snips"]) == 0
    out = capsys.readouterr().out
    assert "always social_proof" in out and "| DM |" not in out
    assert main(["ope", "--log", str(path), "--policy", "arm:nope"]) == 2
    assert "unknown arm" in capsys.readouterr().err


def test_cli_ope_on_a_prepared_folder(tmp_path, capsys):
    from seqrec.datasets.adapters import source_spec
    from seqrec.datasets.prepare import PrepareConfig, prepare
    from seqrec.datasets.synthetic import SyntheticConfig, write_events

    write_events(SyntheticConfig(users=150, items=40, seed=2), tmp_path / "ev.parquet")
    prepare([tmp_path / "ev.parquet"], lambda p: source_spec("events", p), PrepareConfig(), tmp_path / "data")
    capsys.readouterr()
    assert main(["ope", "--log", str(tmp_path / "data"), "--policy", "greedy", "--bootstrap", "50"]) == 0
    out = capsys.readouterr().out
    assert "epsilon-greedy (0.1)" in out and "| DR |" in out


# ---------------------------------------------------------------------------------------- Open Bandit Dataset


def obd_module():
    spec = importlib.util.spec_from_file_location("ope_obd", ROOT / "experiments" / "ope_obd.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["ope_obd"] = module   # dataclasses look their module up while the class is being made
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def obd(shared_file):
    shared_file("open_bandit_dataset_sample/random/all", "all.csv")   # skips with the reason when absent
    shared_file("open_bandit_dataset_sample/bts/all", "all.csv")
    return obd_module()


def test_obd_loaders(obd, shared_data):
    items = {"all": 80, "men": 34, "women": 46}
    for campaign, n_items in items.items():
        random_log = obd.load_obd(shared_data, "random", campaign)
        bts_log = obd.load_obd(shared_data, "bts", campaign)
        for log in (random_log, bts_log):
            assert log.n == 10_000 and log.n_actions == n_items and log.n_positions == 3
            assert set(np.unique(log.position)) == {0, 1, 2}
        assert np.allclose(random_log.propensity, 1 / n_items)       # uniform: 1 / items in every slot
        table, sums = obd.ts_policy_from_log(bts_log)
        assert table.shape == (n_items, 3) and np.allclose(table.sum(axis=0), 1)
        # the size-bias-corrected per-slot probabilities already nearly sum to 1 before normalising
        assert ((sums > 1.0) & (sums < 1.2)).all(), sums
    assert obd.load_obd(shared_data, "bts", "all").reward.sum() == 42     # OBP's 42 clicks in 10,000 rounds


def test_obd_ips_for_all_matches_the_open_bandit_pipeline(obd, shared_data):
    random_log = obd.load_obd(shared_data, "random", "all")
    alpha, beta = obd.load_prior()["all"]
    prior = obd.ts_policy_from_prior(alpha, beta, n_sim=20_000, seed=0)
    est = IPS(config=OpeConfig(resamples=200)).estimate(random_log, FixedPolicy(prior))
    # OBP reports about 0.00455 (its Monte-Carlo policy, 100,000 draws). Our 20,000 draws move the estimate by
    # about 5e-5 (sd over simulation seeds), so 2e-4 is 4 such sd; the estimate's own sampling error is ~0.002,
    # so this checks the pipeline (positions, propensities, the simulated policy), not the data.
    assert est.value == pytest.approx(0.00455, abs=2e-4)
    from_log = IPS(config=OpeConfig(resamples=200)).estimate(random_log, FixedPolicy(obd.ts_policy_from_log(
        obd.load_obd(shared_data, "bts", "all"))[0]))
    assert from_log.value == pytest.approx(0.00455, abs=2e-4) and from_log.contains(0.0042)


def fake_obd(folder: Path, campaign: str = "men", items: int = 34, rows: int = 400) -> Path:
    """A tiny folder in the OBD sample's layout (same columns), so the script's smoke test needs no real data."""
    rng = np.random.default_rng(0)
    for behavior in ("random", "bts"):
        d = folder / behavior / campaign
        d.mkdir(parents=True)
        item = rng.integers(0, items, rows)
        prop = np.full(rows, 1 / items) if behavior == "random" else rng.uniform(0.01, 0.9, rows)
        lines = [",timestamp,item_id,position,click,propensity_score,user_feature_0"]
        lines += [f"{i},2019-11-24 00:00:00+00:00,{item[i]},{i % 3 + 1},{int(rng.random() < 0.1)},{prop[i]},x"
                  for i in range(rows)]
        (d / f"{campaign}.csv").write_text("\n".join(lines) + "\n")
        (d / "item_context.csv").write_text(",item_id,item_feature_0\n" + "".join(
            f"{i},{i},0.0\n" for i in range(items)))
    return folder


def test_obd_experiment_script_runs(tmp_path):
    data = fake_obd(tmp_path / "open_bandit_dataset_sample")
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "ope_obd.py"), "--data", str(data),
                          "--campaigns", "men", "--bootstrap", "50", "--n-sim", "2000",
                          "--out", str(tmp_path / "t.md")],
                         capture_output=True, text=True, check=True, timeout=300)
    rows = [line for line in out.stdout.splitlines() if line.startswith("| men |")]
    assert len(rows) == 8 + 1, out.stdout         # 2 policy sources x 4 estimators, plus the shift row
    assert (tmp_path / "t.md").read_text().count("| men |") == 9
