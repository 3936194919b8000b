"""Two target policies compared on one log: the difference of their values with a paired bootstrap interval
(the same resamples for both, so what the policies share cancels), for the go / no-go of a new policy against
the current one. Shapes: N logged rows, A actions."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .data import LoggedBandit, importance_weights
from .estimators import OpeConfig, bootstrap_counts
from .models import RewardModel

COMPARED = ("snips", "dr")


@dataclass(frozen=True)
class Comparison:
    """Values of a new and a current policy on one log and their difference, each with its interval."""

    estimator: str
    new: float
    new_low: float
    new_high: float
    current: float
    current_low: float
    current_high: float
    difference: float        # new - current
    difference_low: float
    difference_high: float
    level: float
    n: int

    def as_dict(self) -> dict:
        return asdict(self)


def compare_policies(log: LoggedBandit, pi_new: np.ndarray, pi_current: np.ndarray | None, estimator: str = "snips",
                     config: OpeConfig | None = None, model: RewardModel | None = None) -> Comparison:
    """SNIPS, or DR with `model` (held fixed), of both policies (N, A) and of their difference, with percentile
    intervals from the same bootstrap resamples. `pi_current` None: the current policy is the logger itself
    (weights 1: its value is the logged mean reward, by either estimator)."""
    if estimator not in COMPARED:
        raise ValueError(f"estimator must be one of {', '.join(COMPARED)}; got {estimator!r}")
    config = config or OpeConfig()
    n = log.n
    if estimator == "snips":
        w = np.stack([importance_weights(log, pi) if pi is not None else np.ones(n)
                      for pi in (pi_new, pi_current)], axis=1)                               # (N, 2)
        wr = w * log.reward[:, None]

        def stat(c: np.ndarray) -> np.ndarray:                                               # (B, N) -> (B, 2)
            den = c @ w
            return np.where(den > 0, (c @ wr) / np.where(den > 0, den, 1.0), np.nan)
    else:
        if model is None:
            raise ValueError("DR needs a reward model")
        q = model.fit_predict(log)                                                           # (N, A)
        rows = np.arange(n)
        psi = np.stack([(pi * q).sum(axis=1) + importance_weights(log, pi) * (log.reward - q[rows, log.action])
                        if pi is not None else log.reward for pi in (pi_new, pi_current)], axis=1)   # (N, 2)

        def stat(c: np.ndarray) -> np.ndarray:
            return (c @ psi) / n
    point = stat(np.ones((1, n)))[0]
    boot = np.concatenate([stat(c) for c in bootstrap_counts(n, config)]) if config.resamples else np.zeros((0, 2))
    boot = boot[np.isfinite(boot).all(axis=1)]
    tail = (1 - config.level) / 2

    def interval(x: np.ndarray) -> tuple[float, float]:
        return tuple(float(v) for v in np.quantile(x, [tail, 1 - tail])) if len(x) else (np.nan, np.nan)

    (nl, nh), (cl, ch) = interval(boot[:, 0]), interval(boot[:, 1])
    dl, dh = interval(boot[:, 0] - boot[:, 1])
    return Comparison(estimator, float(point[0]), nl, nh, float(point[1]), cl, ch, float(point[0] - point[1]),
                      dl, dh, float(config.level), n)
