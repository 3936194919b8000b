"""The A/B test's check of off-policy evaluation against the simulator's truth.

An exploring logging policy runs one wave of contacts and logs every decision with its propensity; from that log
IPS, SNIPS, DM and DR (seqrec.rl.ope.estimators) estimate the conversion of another policy, the target. The
simulator then gives the truth twice: exactly (`Simulator.true_value`, the target's expected purchases on the
logged contacts) and by running the target on the same customers with the same seed (a first wave, so it meets
exactly the logged contacts: for a deterministic target the expected conversion of its offers is the exact
truth, and its sampled conversion differs from it by chance alone).

A decision is the joint (product, nudge) offer: action = product * A + nudge among P * A actions, propensity =
P(product | contact) * P(nudge | contact, product), the context the simulator's customer features (for the
ridge reward model of DM and DR). A logger that decided deterministically (the rules with epsilon 0: every
propensity 1) gives no overlap: the target's offers that differ from the logged one were never possible in the
log, so the check reports that share of the target's mass and prints no estimate rather than a meaningless one.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from seqrec.abtest.config import OpeCheck
from seqrec.campaign.policies import make_policy
from seqrec.campaign.records import CampaignLog
from seqrec.campaign.simulator import Simulator
from seqrec.rl.ope.data import MAX_UNSUPPORTED, unsupported_mass
from seqrec.rl.ope.estimators import (
    CellMeanModel,
    LoggedBandit,
    OpeConfig,
    RidgeModel,
    estimate_policy,
    estimators_from_names,
)


@dataclass(frozen=True)
class OpeResult:
    """What the check found: the log, the truth, and the estimates (none without overlap)."""

    logging: str                # e.g. "random" or "rules (epsilon 0.1)"
    target: str
    contacts: int
    truth: float                # exact expected purchases per contact of the target on the logged contacts
    run_expected: float         # the target run in the simulator: mean exact purchase probability of the offers drawn
    run_sampled: float          # ... and its sampled conversion
    logged_value: float         # the logger's own sampled conversion
    deterministic_share: float  # share of logged decisions with propensity 1
    unsupported: float          # target mass on offers the logger could not make (rows with propensity 1)
    overlap: bool               # False: no estimate is given
    estimates: list[dict] = field(default_factory=list)   # Estimate.as_dict() + relative_error, covers_truth
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def policy_name(name: str, epsilon: float) -> str:
    return f"{name} (epsilon {epsilon:g})" if name == "rules" and epsilon else name


def joint_log(sim: Simulator, log: CampaignLog) -> LoggedBandit:
    """The campaign's (product, nudge) decisions as a LoggedBandit over P * A actions, reward = purchase."""
    d = log.decisions
    if np.isnan(d.propensity).any() or np.isnan(d.product_propensity).any() or (d.nudge < 0).any():
        raise ValueError("the log has decisions without a nudge or a propensity: not a policy's log")
    return LoggedBandit(d.product * sim.n_arms + d.nudge, log.purchased.astype(np.float64),
                        d.product_propensity * d.propensity, n_actions=sim.n_products * sim.n_arms,
                        context=sim.context_features(log.contacts), source="simulator")


def run_ope_check(sim: Simulator, cfg: OpeCheck, contacts: int, seed: int, batch_size: int,
                  level: float) -> OpeResult:
    """Log `contacts` first contacts with the logging policy, estimate the target, compare with the truth."""
    logger = make_policy(sim, cfg.logging, cfg.logging_epsilon)
    target = make_policy(sim, cfg.target, cfg.target_epsilon)
    log = sim.run_policy(logger, contacts, np.random.default_rng(seed), batch_size=batch_size)
    run = sim.run_policy(target, contacts, np.random.default_rng(seed), batch_size=batch_size)
    bandit_log = joint_log(sim, log)
    pi = sim.check_probabilities(target, log.contacts).reshape(bandit_log.n, -1)             # (N, P * A)
    truth = sim.true_value(target, log.contacts)
    unsupported = unsupported_mass(bandit_log, pi)
    base = dict(logging=policy_name(cfg.logging, cfg.logging_epsilon),
                target=policy_name(cfg.target, cfg.target_epsilon), contacts=contacts, truth=truth,
                run_expected=float(run.probability.mean()), run_sampled=float(run.purchased.mean()),
                logged_value=float(log.purchased.mean()),
                deterministic_share=float((bandit_log.propensity >= 1.0).mean()), unsupported=unsupported)
    if unsupported > MAX_UNSUPPORTED:
        return OpeResult(**base, overlap=False)
    model = RidgeModel(cfg.ridge_l2) if cfg.reward_model == "ridge" else CellMeanModel()
    ope_cfg = OpeConfig(resamples=cfg.resamples, level=level, seed=seed % 2**32)
    estimators = estimators_from_names(list(cfg.estimators), ope_cfg, model=model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        estimates = estimate_policy(bandit_log, pi, estimators=estimators)
    rows = []
    for e in estimates:
        d = e.as_dict()
        d["relative_error"] = (e.value - truth) / truth if truth else float("nan")
        d["covers_truth"] = e.contains(truth)
        rows.append(d)
    return OpeResult(**base, overlap=True, estimates=rows, warnings=sorted({str(w.message) for w in caught}))
