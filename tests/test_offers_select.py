"""Selection by held-out off-policy value beyond the epoch: the conservative rule on constructed logs (estimates
by hand), the wide model's cross set and ridge chosen inside the fit, the exploration share under a floor, and
the config's errors."""

from __future__ import annotations

import numpy as np
import pytest
from seqrec.datasets.offers import OfferRows, OfferVocab
from seqrec.rl.bandits.joint import JointConfig
from seqrec.rl.offers.config import OfferConfig
from seqrec.rl.offers.select import choose_candidate, compare_candidates, one_hot, select_epsilon
from seqrec.rl.ope.data import LoggedBandit
from seqrec.rl.ope.estimators import OpeConfig

from seqrec.abtest.config import load_abtest_config
from seqrec.abtest.report import selection_sentence
from seqrec.core.config import ConfigError, from_dict
from seqrec.training.offers import fit_offer_q

BOOT = OpeConfig(resamples=200, seed=0)


def cycled_log(hits: list[int], per_action: int = 100) -> LoggedBandit:
    """A uniform log over len(hits) actions, each logged `per_action` times, action k paying 1 in hits[k] rows."""
    k = len(hits)
    action = np.repeat(np.arange(k), per_action)
    reward = np.concatenate([(np.arange(per_action) < h).astype(float) for h in hits])
    return LoggedBandit(action, reward, np.full(k * per_action, 1.0 / k), n_actions=k)


def test_selection_picks_the_candidate_of_higher_value_and_keeps_the_default_within_chance():
    log = cycled_log([50, 52, 90, 0])
    always = [one_hot(np.full(log.n, a), 4) for a in range(4)]
    est = compare_candidates(log, always, "snips", BOOT)
    # SNIPS of "always action a" on a uniform log is the mean reward of a's rows: 0.50, 0.52, 0.90, 0.00
    assert [e["estimate"] for e in est] == pytest.approx([0.5, 0.52, 0.9, 0.0])
    assert est[0]["difference"] == 0 and est[2]["difference"] == pytest.approx(0.4)
    assert est[2]["low"] < 0.9 < est[2]["high"]
    assert choose_candidate(est) == 2                        # 0.90 against 0.50: far beyond chance
    assert choose_candidate(est[:2]) == 0                    # 0.52 against 0.50 on 100 rows each: within chance
    assert est[1]["difference_low"] < 0 < est[1]["difference_high"]
    assert choose_candidate(est, eligible=[True, True, False, True]) == 0   # the best one not allowed: the default
    from_3 = compare_candidates(log, always, "snips", BOOT, base=3)   # differences from "always action 3"
    assert from_3[1]["difference"] == pytest.approx(0.52)
    assert choose_candidate(from_3, base=3, eligible=[True, True, False, True]) == 1   # 0.52 against 0: beyond


def test_select_epsilon_takes_the_least_exploration_the_floor_allows():
    # two pairs (P = 2, A = 1), logged uniformly; pair 0 always pays, pair 1 never; the values rank pair 0 first
    log = cycled_log([100, 0])
    values, allowed = np.tile([[[1.0], [0.0]]], (log.n, 1, 1)), np.ones((log.n, 2, 1), bool)
    keep = np.ones(log.n, bool)
    decision = JointConfig(kind="epsilon_greedy", epsilon=0.2)
    chosen, report = select_epsilon(log, values, allowed, keep, decision, (0.1, 0.02), 0.02, 2, "snips", BOOT)
    # epsilon e puts 1 - e / 2 on pair 0, so SNIPS = 1 - e / 2: 0.90, 0.95, 0.99; 0.02 / 2 is below the floor 0.02
    assert [c["estimate"] for c in report["candidates"]] == pytest.approx([0.9, 0.95, 0.99])
    assert [c["eligible"] for c in report["candidates"]] == [True, True, False]
    assert chosen.epsilon == 0.1 and report["chosen"] == 1 and report["default"] == 0
    # by point estimate: a tiny gain is taken (the shares mix the same two policies); none keeps the default
    flat = cycled_log([50, 49])
    kept = select_epsilon(flat, values, allowed, keep, decision, (0.1,), 0.0, 2, "snips", BOOT)
    assert kept[0].epsilon == 0.1 and kept[1]["candidates"][1]["difference_low"] < 0   # 0.5 - e / 2 * 0.01
    worse = cycled_log([40, 60])                                 # the values' favourite pays less than the other
    assert select_epsilon(worse, values, allowed, keep, decision, (0.1,), 0.0, 2, "snips", BOOT)[0].epsilon == 0.2
    # no floor: the least exploration; a default below the floor gives way to the smallest share above it
    assert select_epsilon(log, values, allowed, keep, decision, (0.1, 0.02), 0.0, 2, "snips", BOOT)[0].epsilon == 0.02
    low = JointConfig(kind="epsilon_greedy", epsilon=0.01)
    assert select_epsilon(log, values, allowed, keep, low, (0.5, 0.1), 0.02, 2, "snips", BOOT)[1]["default"] == 2
    with pytest.raises(ValueError, match="offers.min_propensity = 0.4 needs epsilon >= 0.8"):
        select_epsilon(log, values, allowed, keep, decision, (0.1,), 0.4, 2, "snips", BOOT)
    with pytest.raises(ValueError, match="epsilon_greedy"):
        select_epsilon(log, values, allowed, keep, JointConfig(kind="softmax"), (0.1,), 0.0, 2, "snips", BOOT)


def segment_log(n: int, seed: int) -> tuple[OfferRows, OfferVocab]:
    """A uniform log over 2 products x 2 nudges whose best pair depends on the segment (column 0): (1, 0) pays 0.6
    in segment a, (0, 1) pays 0.6 in segment b, the rest 0.1; column 1 is noise."""
    rng = np.random.default_rng(seed)
    p, a = rng.integers(0, 2, n), rng.integers(0, 2, n)
    seg, noise = rng.integers(1, 3, n), rng.integers(1, 3, n)
    best = np.where(seg == 1, (p == 1) & (a == 0), (p == 0) & (a == 1))
    reward = (rng.random(n) < np.where(best, 0.6, 0.1)).astype(float)
    rows = OfferRows(np.arange(n), np.zeros(n, np.int64), p + 2, a + 2, np.full(n, 0.25), reward,
                     np.zeros((n, 2, 3), np.int64), np.stack([seg, noise], axis=1), np.full(n, -1),
                     np.zeros(n, np.int64), np.arange(n))
    vocab = OfferVocab(("p0", "p1"), ("n0", "n1"), profile=(("segment", ("a", "b")), ("noise", ("x", "y"))))
    return rows, vocab


def test_the_fit_chooses_the_cross_set_by_value_and_keeps_the_default_ridge_within_chance():
    rows, vocab = segment_log(4000, 0)
    cfg = OfferConfig(history=2, dim=8, hidden=8, blocks=0, epochs=1, seed=0, profile=("segment", "noise"),
                      cross=("noise",), wide_l2=10.0, grid_cross=(("segment",),), grid_wide_l2=(10.5,))
    fitted = fit_offer_q(rows, vocab, cfg)
    wide = fitted.info["selection"]["wide"]
    cands = wide["candidates"]
    assert [(c["cross"], c["wide_l2"]) for c in cands] == [(["noise"], 10.0), (["noise"], 10.5),
                                                           (["segment"], 10.0), (["segment"], 10.5)]
    # without the segment cross one pair for everyone (0.35 at best); with it each segment's best pair (0.6)
    assert cands[0]["estimate"] < 0.45 and cands[2]["estimate"] > 0.5 and cands[2]["difference_low"] > 0
    # a ridge of 10.5 against 10 gives the same offers: no difference, the default ridge stays
    assert cands[1]["difference"] == 0
    assert wide["chosen"] in (2, 3) and fitted.config.cross == ("segment",)
    assert fitted.config.wide_l2 == cands[wide["chosen"]]["wide_l2"]
    assert "decision" not in fitted.info["selection"] and fitted.decision is None   # no decision layer given
    # the decision layer's share, chosen on the same held-out customers
    cfg_eps = OfferConfig(history=2, dim=8, hidden=8, blocks=0, epochs=1, seed=0, profile=("segment", "noise"),
                          cross=("segment",), grid_epsilon=(0.05,), min_propensity=0.01)
    fitted = fit_offer_q(rows, vocab, cfg_eps, decision=JointConfig(kind="epsilon_greedy", epsilon=0.2))
    report = fitted.info["selection"]["decision"]
    assert [c["epsilon"] for c in report["candidates"]] == [0.2, 0.05] and report["pairs"] == 4
    assert fitted.decision.epsilon == 0.05 and report["candidates"][1]["difference_low"] > 0
    # a grid with no decision layer to choose for (a run file's learner) says so rather than dropping it silently
    skipped = fit_offer_q(rows, vocab, cfg_eps)
    assert "no decision layer" in skipped.info["selection"]["decision"]["skipped"] and skipped.decision is None


@pytest.mark.parametrize("table, message", [
    ({"grid_wide_l2": [-1.0]}, "offers.grid_wide_l2 must be a number in [0, 1e+09]"),
    ({"grid_cross": ["segment"]}, "offers.grid_cross must be a list of lists"),
    ({"grid_cross": [["segment", "town"]]}, "offers.grid_cross: ['segment', 'town'] must be"),
    ({"grid_epsilon": [1.5]}, "offers.grid_epsilon must be a number in [0, 1]"),
    ({"min_propensity": -0.1}, "offers.min_propensity must be a number"),
    ({"grid_wide_l2": [1.0], "valid_fraction": 0.0}, "offers.grid_wide_l2 needs held-out customers"),
    ({"grid_cross": [["segment"]], "head": "joint"}, "need offers.wide = true"),
    ({"grid_epsilon": [0.01], "select": "loss"}, "offers.grid_epsilon chooses by off-policy value"),
])
def test_grid_errors_name_the_key(table, message):
    with pytest.raises(ConfigError) as e:
        from_dict(OfferConfig, {"profile": ["segment", "job"], **table}, "offers")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_the_abtest_config_reads_the_grids_and_refuses_a_grid_epsilon_without_epsilon_greedy(tmp_path):
    base = (tmp_path / "sim.toml")
    base.write_text("")
    path = tmp_path / "ab.toml"
    path.write_text('simulator = "sim.toml"\n[offers]\ngrid_wide_l2 = [3.0, 30]\ngrid_cross = [["segment", "job"]]\n'
                    'grid_epsilon = [0.01]\nmin_propensity = 1e-4\n')
    cfg = load_abtest_config(path)
    assert cfg.offers.grid_wide_l2 == (3.0, 30.0) and cfg.offers.grid_cross == (("segment", "job"),)
    assert cfg.offers.grid_epsilon == (0.01,) and cfg.offers.min_propensity == 1e-4
    path.write_text('simulator = "sim.toml"\n[offers]\ngrid_epsilon = [0.01]\n[decision]\nkind = "softmax"\n')
    with pytest.raises(ConfigError, match="offers.grid_epsilon chooses the exploration share of an epsilon_greedy"):
        load_abtest_config(path)


def test_the_report_names_each_candidate_and_the_choice():
    est = {"estimate": 0.12, "low": 0.08, "high": 0.17, "difference": 0.0, "difference_low": 0.0,
           "difference_high": 0.0}
    sel = {"wide": {"estimator": "snips", "default": 0, "chosen": 0,
                    "candidates": [{"wide_l2": 10.0, "cross": ["segment"], **est},
                                   {"wide_l2": 3.0, "cross": ["segment"], **est, "estimate": 0.14}]},
           "decision": {"estimator": "snips", "min_propensity": 2.5e-5, "pairs": 89, "default": 0, "chosen": 1,
                        "candidates": [{"epsilon": 0.02, "eligible": True, **est},
                                       {"epsilon": 0.0025, "eligible": True, **est},
                                       {"epsilon": 0.001, "eligible": False, **est}]}}
    text = selection_sentence(sel)
    assert "wide_l2 3, cross segment: 14.00% [8.00%, 17.00%]" in text and "chosen wide_l2 10, cross segment." in text
    assert "epsilon 0.001: 12.00% [8.00%, 17.00%] (below the floor)" in text and "chosen epsilon 0.0025." in text
    assert selection_sentence({}) == ""
