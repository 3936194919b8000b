"""The go / no-go before the A/B test: arm B's decision policy valued off-policy on the training campaign's
last wave (the logged contacts nearest the test's state: the same customers one contact earlier), against the
current policy (the rules of arm A), by SNIPS or DR with paired bootstrap intervals. Go when the interval of
the difference lies above 0; no-go otherwise (not shown better, or shown worse).

Only customers the learner never trained on count (`held_out`: those its selection held out): on the rows it
was fitted to, a flexible model picks the offers that happened to sell, and the estimate would be optimistic
by points. With `refit` the deployed network also learnt from them; the gate then values the network fitted
before the refit (without them), a slightly weaker policy: a conservative estimate. The test wave comes one
contact later than the logged wave (one more contact's fatigue): the estimate is of the policy on the logged
wave's customers as they were then."""

from __future__ import annotations

import numpy as np

from seqrec.abtest.config import Gate
from seqrec.abtest.ope import joint_log
from seqrec.campaign.records import CampaignLog, Policy
from seqrec.campaign.simulator import Simulator
from seqrec.rl.ope.compare import compare_policies
from seqrec.rl.ope.estimators import OpeConfig
from seqrec.rl.ope.models import RidgeModel


def run_gate(sim: Simulator, log: CampaignLog, new: Policy, current: Policy, waves: int, cfg: Gate, level: float,
             seed: int, held_out: np.ndarray | None = None) -> dict:
    """metrics.json["gate"]: estimator, estimate, low, high, decision, and the current policy's and the
    difference's estimates, on the last wave's contacts of the `held_out` customers (all, when None)."""
    last = log.contacts.previous_contacts == waves - 1
    if held_out is not None:
        last &= np.isin(log.contacts.customer, np.asarray(held_out, np.int64))
    rows = np.flatnonzero(last)
    if not len(rows):
        raise ValueError("the gate has no logged contacts to evaluate on: no held-out customer in the last wave")
    ctx = log.contacts.take(rows)
    bandit = joint_log(sim, log).subset(rows)                                            # (N,) over P * A
    pi_new = sim.check_probabilities(new, ctx).reshape(len(rows), -1)                     # (N, P * A)
    pi_cur = sim.check_probabilities(current, ctx).reshape(len(rows), -1)
    config = OpeConfig(resamples=cfg.resamples, level=level, seed=seed % 2**32)
    c = compare_policies(bandit, pi_new, pi_cur, cfg.estimator, config,
                         RidgeModel(1.0) if cfg.estimator == "dr" else None)
    return {"estimator": c.estimator, "estimate": c.new, "low": c.new_low, "high": c.new_high,
            "decision": "go" if c.difference_low > 0 else "no-go", "level": c.level, "contacts": c.n,
            "wave": waves, "held_out_only": held_out is not None,
            "current": {"policy": "rules", "estimate": c.current, "low": c.current_low, "high": c.current_high},
            "difference": {"estimate": c.difference, "low": c.difference_low, "high": c.difference_high}}
