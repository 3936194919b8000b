"""Reward models for the direct method and doubly robust estimators (rl/ope.py): q(x, a) for every logged row.

- `CellMeanModel` (default): the mean reward per action, or per (action, position) in a log with positions,
  optionally shrunk towards the log's mean. Its fit is per-cell sums, so rl/ope.py refits it in every
  bootstrap resample at the cost of a few reductions.
- `RidgeModel`: a ridge regression per action on [1, context, position one-hot] (numpy).
- `Predictions`: an external model's (N, A) predictions, e.g. a network's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from seqrec.core.config import check_real

from .data import LogError, LoggedBandit


class RewardModel(Protocol):
    """Predicted reward of every action at every logged row (the row's context and position)."""

    def fit_predict(self, log: LoggedBandit, weights: np.ndarray | None = None) -> np.ndarray:
        """(N, A) predictions of a model fit on the log (rows weighted by `weights`, (N,), if given)."""
        ...


@dataclass(frozen=True)
class CellMeanModel:
    """Mean logged reward per action, or per (action, position) when the log has positions and `by_position`.

    `smoothing` adds that many pseudo-rows at the log's mean reward to every cell (0: plain means); a cell with
    no rows (and no smoothing) predicts the log's mean. Refit in every bootstrap resample.
    """

    by_position: bool = True
    smoothing: float = 0.0

    def __post_init__(self) -> None:
        check_real("smoothing", self.smoothing, 0.0, math.inf)

    def cells(self, log: LoggedBandit) -> tuple[np.ndarray, int]:
        """(N,) cell of each row, position * A + action (action alone without positions), and the cell count."""
        if self.by_position and log.n_positions > 1:
            return log.positions() * log.n_actions + log.action, log.n_actions * log.n_positions
        return log.action, log.n_actions

    def table(self, sums: np.ndarray, counts: np.ndarray, mean: np.ndarray) -> np.ndarray:
        """(B, C) cell means from per-cell reward sums and row counts (B, C) and the log's mean reward (B, 1)."""
        den = counts + self.smoothing
        return np.where(den > 0, (sums + self.smoothing * mean) / np.where(den > 0, den, 1.0), mean)

    def fit_predict(self, log: LoggedBandit, weights: np.ndarray | None = None) -> np.ndarray:
        w = np.ones(log.n) if weights is None else np.asarray(weights, dtype=np.float64)
        cell, n_cells = self.cells(log)
        mean = np.array([[w @ log.reward / w.sum() if w.sum() > 0 else 0.0]])
        sums = np.bincount(cell, w * log.reward, n_cells)[None]
        table = self.table(sums, np.bincount(cell, w, n_cells)[None], mean)[0]
        if n_cells == log.n_actions:
            return np.broadcast_to(table, (log.n, log.n_actions)).copy()
        return table.reshape(log.n_positions, log.n_actions)[log.positions()]


@dataclass(frozen=True)
class RidgeModel:
    """Ridge regression of reward per action on [1, context, one-hot position] (intercept not penalised).

    Linear in the context, so a linear-in-context truth is fit exactly in the limit; for clicks (0/1) it is a
    linear probability model, a simple stand-in for logistic regression. Held fixed in bootstrap resamples.
    """

    l2: float = 1.0

    def __post_init__(self) -> None:
        check_real("l2", self.l2, 0.0, math.inf, open_low=True)

    def features(self, log: LoggedBandit) -> np.ndarray:
        """(N, 1 + d + K - 1) design matrix."""
        parts = [np.ones((log.n, 1))]
        if log.context is not None:
            parts.append(log.context)
        if log.n_positions > 1:
            parts.append(np.eye(log.n_positions)[log.positions()][:, 1:])
        return np.hstack(parts)

    def fit_predict(self, log: LoggedBandit, weights: np.ndarray | None = None) -> np.ndarray:
        phi = self.features(log)
        w = np.ones(log.n) if weights is None else np.asarray(weights, dtype=np.float64)
        penalty = self.l2 * np.eye(phi.shape[1])
        penalty[0, 0] = 0.0
        theta = np.zeros((log.n_actions, phi.shape[1]))
        mean = float(w @ log.reward / w.sum()) if w.sum() > 0 else 0.0
        for a in range(log.n_actions):
            rows = log.action == a
            if not (w[rows] > 0).any():
                theta[a, 0] = mean   # an action never logged: the log's mean
                continue
            x, wa = phi[rows], w[rows]
            gram = (x * wa[:, None]).T @ x + penalty
            theta[a] = np.linalg.lstsq(gram, x.T @ (wa * log.reward[rows]), rcond=None)[0]
        return phi @ theta.T


@dataclass(frozen=True)
class Predictions:
    """An external reward model's predictions: (N, A), or (N, A, K) per position. Held fixed in resamples."""

    values: np.ndarray

    def fit_predict(self, log: LoggedBandit, weights: np.ndarray | None = None) -> np.ndarray:
        q = np.asarray(self.values, dtype=np.float64)
        if q.ndim == 3 and q.shape[:2] == (log.n, log.n_actions) and q.shape[2] >= log.n_positions:
            q = q[np.arange(log.n), :, log.positions()]
        if q.shape != (log.n, log.n_actions) or not np.isfinite(q).all():
            raise LogError(f"reward predictions must be a finite ({log.n}, {log.n_actions}) array "
                           f"(or ({log.n}, {log.n_actions}, K)); got {q.shape}")
        return q


def grouped_sums(values: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    """(B, G) sums of (B, N) values by the (N,) group of each column: one reduceat over the runs when the groups
    are sorted (fast), else one bincount."""
    b, n = values.shape
    if n and (np.diff(group) >= 0).all():
        starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
        out = np.zeros((b, n_groups))
        out[:, group[starts]] = np.add.reduceat(values, starts, axis=1)
        return out
    index = (np.arange(b)[:, None] * n_groups + group[None, :]).ravel()
    return np.bincount(index, values.ravel(), b * n_groups).reshape(b, n_groups)
