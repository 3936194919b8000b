"""Choosing among candidate decision policies by their off-policy value on held-out logged offers, conservatively:
the default candidate (the simplest, or the configured one) is kept unless the candidate of the highest estimate
beats it beyond chance (the paired bootstrap interval of the difference lies above 0). On a uniformly exploring
log a deterministic policy's estimate has a standard error of points, more than settings usually differ by, so
a plain arg-max would choose by noise. Shapes: N logged rows, C candidates, A joint actions (P * A pairs).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from seqrec.rl.bandits.joint import JointConfig, joint_probabilities
from seqrec.rl.ope.compare import compare_policies
from seqrec.rl.ope.data import LoggedBandit
from seqrec.rl.ope.estimators import OpeConfig
from seqrec.rl.ope.models import Predictions, RewardModel


def compare_candidates(log: LoggedBandit, policies: list[np.ndarray], estimator: str, config: OpeConfig,
                       base: int = 0, model: RewardModel | None = None) -> list[dict]:
    """Each candidate's estimate with its interval and its paired difference from candidate `base` (C dicts);
    policies: C arrays (N, A) of probabilities. DR without a model uses a zero reward model (IPS terms only)."""
    if estimator == "dr" and model is None:
        model = Predictions(np.zeros((log.n, log.n_actions)))
    out = []
    for pi in policies:
        c = compare_policies(log, pi, policies[base], estimator, config, model if estimator == "dr" else None)
        out.append({"estimate": c.new, "low": c.new_low, "high": c.new_high, "difference": c.difference,
                    "difference_low": c.difference_low, "difference_high": c.difference_high})
    return out


def choose_candidate(estimates: list[dict], base: int = 0, eligible: list[bool] | None = None) -> int:
    """Index of the chosen candidate: the eligible one of the highest estimate when its difference from `base`
    has an interval above 0, else `base` (estimates as `compare_candidates` gives them)."""
    ok = [True] * len(estimates) if eligible is None else list(eligible)
    values = np.array([e["estimate"] if k and np.isfinite(e["estimate"]) else -np.inf
                       for e, k in zip(estimates, ok)])
    if not np.isfinite(values).any():
        return base
    best = int(np.argmax(values))
    return best if best != base and estimates[best]["difference_low"] > 0 else base


def one_hot(actions: np.ndarray, n_actions: int) -> np.ndarray:
    """(N, A) probabilities of a deterministic policy from its (N,) actions."""
    out = np.zeros((len(actions), n_actions))
    out[np.arange(len(actions)), actions] = 1.0
    return out


def select_epsilon(log: LoggedBandit, values: np.ndarray, allowed: np.ndarray, keep: np.ndarray,
                   decision: JointConfig, grid: tuple[float, ...], floor: float, n_pairs: int, estimator: str,
                   config: OpeConfig) -> tuple[JointConfig, dict]:
    """The exploration share of an epsilon-greedy decision layer, chosen among decision.epsilon (the default)
    and `grid` on held-out offers (values, allowed (N, P, A); keep (N,) the rows of `log`). Exploration always
    costs value, so only shares that give each of the `n_pairs` pairs a customer may be offered at least the
    propensity `floor` are eligible (epsilon / n_pairs >= floor); among them the one of the highest estimate is
    taken. By point estimate, not beyond chance as for models: every candidate mixes the same two policies
    (greedy, uniform), so V(epsilon) is linear in epsilon and the choice is the sign of one comparison, greedy
    against uniform, whose point estimate is the best guess; no model is swapped on noise, and the floor, not
    the estimate, bounds how little is explored. Ties keep the default; a default below the floor gives way to
    the smallest eligible share."""
    if decision.kind != "epsilon_greedy":
        raise ValueError(f"offers.grid_epsilon chooses an epsilon_greedy decision layer; decision.kind is "
                         f"{decision.kind!r}")
    shares = list(dict.fromkeys((decision.epsilon, *grid)))
    eligible = [e / n_pairs >= floor * (1 - 1e-9) for e in shares]
    if not any(eligible):
        raise ValueError(f"offers.min_propensity = {floor:g} needs epsilon >= {floor * n_pairs:g} over {n_pairs} "
                         f"pairs; none of decision.epsilon and offers.grid_epsilon {shares} reaches it")
    base = 0 if eligible[0] else min((e, i) for i, e in enumerate(shares) if eligible[i])[1]
    n = len(values)
    policies = [joint_probabilities(values, allowed, replace(decision, epsilon=e)).reshape(n, -1)[keep]
                for e in shares]                                                              # (N, P * A) each
    estimates = compare_candidates(log, policies, estimator, config, base)
    gain = np.array([e["difference"] if ok else -np.inf for e, ok in zip(estimates, eligible)])
    chosen = int(np.argmax(gain)) if gain.max() > 0 else base
    report = {"estimator": estimator, "rule": "point estimate under the floor", "min_propensity": floor,
              "pairs": n_pairs, "default": base, "chosen": chosen,
              "candidates": [{"epsilon": e, "min_propensity": e / n_pairs, "eligible": ok, **est}
                             for e, ok, est in zip(shares, eligible, estimates)]}
    return replace(decision, epsilon=shares[chosen]), report
