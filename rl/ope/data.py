"""Logged bandit feedback for off-policy evaluation, its checks, and target policies as probabilities.

A log is N decisions (shapes: N rows, A actions, K positions, d context width): the action the logging
policy took, the reward that followed, and the logging policy's probability of that action (its propensity),
optionally with the context it saw, the slot (position) the action was shown in and the actions that were
available. Estimators (rl/ope.py) need, besides the log, the target policy's probability of every action at
every logged row: an (N, A) array, which `action_probabilities(log, policy)` makes from

- a plain array: (N, A), or (N, A, K) with the row's position picking the last axis (the Open Bandit
  Pipeline's `action_dist` layout, where a position has its own distribution over items);
- an object with `action_probabilities(log) -> (N, A)` (this module's policies: `UniformPolicy`,
  `FixedPolicy`, `FixedArmPolicy`, `EpsilonGreedyPolicy`);
- an object with `probabilities_batch(contexts, available, rows) -> (N, A)`: the bandits of rl/bandits.py.

Positions: with positions, a row is one (slot, action) decision and its propensity is the logging policy's
probability of that action *at that slot*; the target probabilities of a row are those of its slot. So one
impression with three slots is three rows, and a value is an expected reward per slot-decision, as in the
Open Bandit Pipeline.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from seqrec.core.config import check_real

PROPENSITY_TOLERANCE = 1e-9   # propensities up to 1 + this are read as 1 (float rounding in logs)
SUM_TOLERANCE = 1e-6          # target probabilities of a row must sum to 1 within this
MIN_ESS = 100.0               # default: warn when the effective sample size is below this many rows ...
MIN_ESS_FRACTION = 0.01       # ... or below this share of the log's rows
MAX_UNSUPPORTED = 0.01        # default: warn when more target mass than this lies outside the logger's support


class LogError(ValueError):
    """A log (or target policy) that cannot be evaluated; the message names the field and the first bad row."""


class LowEffectiveSampleSize(UserWarning):
    """The importance weights concentrate on few rows: estimates rest on little data and intervals may be off."""


class NoOverlap(UserWarning):
    """The target puts mass on actions the logger provably could not take (rows logged with propensity 1):
    IPS, SNIPS and DR cannot see that mass, and DM only extrapolates to it."""


@dataclass(frozen=True)
class LoggedBandit:
    """N logged decisions, checked on construction (LogError naming field and row otherwise).

    Arrays are converted (copied only when the dtype changes) and stored read-only.
    """

    action: np.ndarray                   # (N,) int64 in [0, n_actions): the logged action
    reward: np.ndarray                   # (N,) float64, finite: the reward that followed
    propensity: np.ndarray               # (N,) float64 in (0, 1]: logging probability of the logged action
    n_actions: int | None = None         # A; default max(action) + 1
    context: np.ndarray | None = None    # (N, d) float64, finite: what the policies saw
    position: np.ndarray | None = None   # (N,) int64 in [0, n_positions): the slot the action was shown in
    n_positions: int | None = None       # K; default max(position) + 1 (1 without positions)
    available: np.ndarray | None = None  # (N, A) bool: actions that could be chosen; the logged one must be
    row_ids: np.ndarray | None = None    # (N,) int64: row labels in the source (e.g. file line numbers), for errors
    source: str = ""                     # where the log came from, for errors

    def __post_init__(self) -> None:
        n = _length(self.action, "action")
        put = object.__setattr__  # frozen: normalise fields once, here
        for name in ("reward", "propensity", "position", "context", "available", "row_ids"):
            value = getattr(self, name)
            if value is not None and _length(value, name) != n:
                raise LogError(self._where(f"{name} has {_length(value, name)} rows but action has {n}"))
        if self.row_ids is not None:
            put(self, "row_ids", _frozen(np.asarray(self.row_ids).reshape(n)))
        put(self, "action", _frozen(self._integers("action", self.action, self.n_actions, "n_actions")))
        a = int(self.action.max()) + 1 if n else 1
        n_actions = a if self.n_actions is None else self.n_actions
        if isinstance(n_actions, bool) or not isinstance(n_actions, int | np.integer) or n_actions < max(a, 1):
            raise LogError(self._where(f"n_actions must be an integer >= {max(a, 1)}; got {n_actions!r}"))
        put(self, "n_actions", int(n_actions))
        reward = np.asarray(self.reward, dtype=np.float64).reshape(n)
        self._first_bad("reward", ~np.isfinite(reward), reward, "is not finite")
        put(self, "reward", _frozen(reward))
        put(self, "propensity", _frozen(self._propensities(self.propensity, n)))
        if self.position is None:
            if self.n_positions not in (None, 1):
                raise LogError(self._where("n_positions is given but position is not"))
            put(self, "n_positions", 1)
        else:
            position = self._integers("position", self.position, self.n_positions, "n_positions")
            k = int(position.max()) + 1 if n else 1
            n_positions = k if self.n_positions is None else self.n_positions
            if isinstance(n_positions, bool) or not isinstance(n_positions, int | np.integer) or n_positions < k:
                raise LogError(self._where(f"n_positions must be an integer >= {k}; got {n_positions!r}"))
            put(self, "position", _frozen(position))
            put(self, "n_positions", int(n_positions))
        if self.context is not None:
            x = np.asarray(self.context, dtype=np.float64)
            if x.ndim != 2:
                raise LogError(self._where(f"context must have shape (N, d); got {x.shape}"))
            self._first_bad("context", ~np.isfinite(x).all(axis=1), x, "has a value that is not finite")
            put(self, "context", _frozen(x))
        if self.available is not None:
            mask = np.asarray(self.available)
            if mask.dtype != bool or mask.shape != (n, self.n_actions):
                raise LogError(self._where(f"available must be a bool array of shape ({n}, {self.n_actions}); "
                                           f"got {mask.dtype} {mask.shape}"))
            self._first_bad("available", ~mask[np.arange(n), self.action], self.action,
                            "does not include the logged action")
            put(self, "available", _frozen(mask))

    def __len__(self) -> int:
        return len(self.action)

    @property
    def n(self) -> int:
        """Number of logged decisions N."""
        return len(self.action)

    def positions(self) -> np.ndarray:
        """(N,) int64 position of each row (zeros for a log without positions)."""
        return self.position if self.position is not None else np.zeros(self.n, np.int64)

    def subset(self, rows: np.ndarray) -> LoggedBandit:
        """The log restricted to `rows` (indices or a bool mask), same action and position counts."""
        def take(v: np.ndarray | None) -> np.ndarray | None:
            return None if v is None else v[rows]
        return LoggedBandit(self.action[rows], self.reward[rows], self.propensity[rows], self.n_actions,
                            take(self.context), take(self.position),
                            self.n_positions if self.position is not None else None,
                            take(self.available), take(self.row_ids), self.source)

    # ------------------------------------------------------------------------------ checks
    def _where(self, message: str) -> str:
        return f"{self.source}: {message}" if self.source else message

    def _row(self, i: int) -> str:
        return f"row {i}" + (f" (source row {self.row_ids[i]})" if self.row_ids is not None else "")

    def _first_bad(self, name: str, bad: np.ndarray, values: np.ndarray, problem: str) -> None:
        """LogError naming the field, the first bad row (and its value) and how many rows are bad."""
        rows = np.flatnonzero(bad)
        if rows.size:
            i = int(rows[0])
            more = f"; {rows.size} bad rows in all, the first at rows {rows[:5].tolist()}" if rows.size > 1 else ""
            value = values[i].tolist() if hasattr(values[i], "tolist") else values[i]
            shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
            raise LogError(self._where(f"{name}: {self._row(i)} {problem} (value {shown}){more}"))

    def _integers(self, name: str, values: Any, upper: int | None, upper_name: str) -> np.ndarray:
        arr = np.asarray(values)
        if arr.ndim != 1:
            raise LogError(self._where(f"{name} must have shape (N,); got {arr.shape}"))
        if arr.dtype.kind == "f":
            self._first_bad(name, ~np.isfinite(arr) | (arr != np.round(arr)), arr, "is not an integer")
        elif arr.dtype.kind not in "iu" and arr.size:
            raise LogError(self._where(f"{name} must hold integers; got dtype {arr.dtype}"))
        arr = arr.astype(np.int64)
        self._first_bad(name, arr < 0, arr, "is negative")
        if upper is not None and isinstance(upper, int | np.integer):
            self._first_bad(name, arr >= upper, arr, f"is not below {upper_name} = {upper}")
        return arr

    def _propensities(self, values: Any, n: int) -> np.ndarray:
        if values is None:
            raise LogError(self._where("propensity is missing: off-policy evaluation needs the logging "
                                       "policy's probability of every logged action"))
        try:
            p = np.asarray(values, dtype=np.float64).reshape(n)
        except (TypeError, ValueError):
            raise LogError(self._where("propensity must be numbers (NaN for missing ones)")) from None
        self._first_bad("propensity", np.isnan(p), p, "is missing (NaN)")
        self._first_bad("propensity", p == 0, p, "is zero: an action the logger could not choose")
        self._first_bad("propensity", p < 0, p, "is negative")
        self._first_bad("propensity", p > 1 + PROPENSITY_TOLERANCE, p, "is above 1")
        return np.minimum(p, 1.0)


def _length(value: Any, name: str) -> int:
    shape = np.shape(value)
    if not shape:
        raise LogError(f"{name} must be an array with one row per decision; got a scalar")
    return shape[0]


def _frozen(arr: np.ndarray) -> np.ndarray:
    """A read-only copy (the caller's array is left as it was)."""
    arr = np.array(arr, copy=True)
    arr.flags.writeable = False
    return arr


# ---------------------------------------------------------------------------------------- weights and ESS


def importance_weights(log: LoggedBandit, pi: np.ndarray) -> np.ndarray:
    """(N,) pi(logged action | row) / propensity, from (N, A) target probabilities."""
    return pi[np.arange(log.n), log.action] / log.propensity


def effective_sample_size(weights: np.ndarray) -> float:
    """Kish's effective sample size (sum w)^2 / sum w^2: N for equal weights, ~1 when one row dominates."""
    w = np.asarray(weights, dtype=np.float64)
    sq = float(np.dot(w, w))
    return float(w.sum()) ** 2 / sq if sq > 0 else 0.0


def check_ess(ess: float, n: int, min_ess: float = MIN_ESS, min_fraction: float = MIN_ESS_FRACTION,
              stacklevel: int = 3) -> bool:
    """Warn (LowEffectiveSampleSize) when ess < min_ess rows or < min_fraction * n; True when it warned."""
    if n and (ess < min_ess or ess < min_fraction * n):
        warnings.warn(f"effective sample size {ess:,.1f} of {n:,} logged rows is below the threshold "
                      f"(min {min_ess:g} rows and {min_fraction:.0%} of the log): the target policy puts its mass "
                      "where the logger rarely acted, so estimates rest on few rows and intervals may be too "
                      "narrow", LowEffectiveSampleSize, stacklevel=stacklevel)
        return True
    return False


def unsupported_mass(log: LoggedBandit, pi: np.ndarray) -> float:
    """Mean over rows of the target's mass on actions other than the logged one, in rows where the logger chose
    with probability 1 (a deterministic logger: no other action could have been logged there). A lower bound
    on the target's mass outside the logger's support; 0 when no row has propensity 1."""
    sure = log.propensity >= 1.0
    if not sure.any():
        return 0.0
    return float(np.where(sure, 1.0 - pi[np.arange(log.n), log.action], 0.0).mean())


def check_overlap(mass: float, max_mass: float = MAX_UNSUPPORTED, stacklevel: int = 3) -> bool:
    """Warn (NoOverlap) when more than max_mass of the target's mass lies where the logger could not act."""
    if mass > max_mass:
        warnings.warn(f"{mass:.1%} of the target policy's probability mass is on actions the logging policy "
                      "could not take (rows logged with propensity 1): importance-weighted estimates leave it out "
                      "and the direct method only extrapolates to it, so the log cannot evaluate this policy",
                      NoOverlap, stacklevel=stacklevel)
        return True
    return False


# ---------------------------------------------------------------------------------------- target policies


@runtime_checkable
class TargetPolicy(Protocol):
    """A policy to evaluate: its probability of every action at every logged row."""

    def action_probabilities(self, log: LoggedBandit) -> np.ndarray:
        """(N, A) probabilities, rows summing to 1, zero outside `log.available`."""
        ...


def action_probabilities(log: LoggedBandit, policy: Any) -> np.ndarray:
    """(N, A) target probabilities from an array, a TargetPolicy or a bandit (see the module docstring), checked:
    finite, >= 0, each row summing to 1, no mass on unavailable actions (LogError naming the row otherwise)."""
    n, a = log.n, log.n_actions
    if isinstance(policy, TargetPolicy):
        pi = np.asarray(policy.action_probabilities(log), dtype=np.float64)
    elif hasattr(policy, "probabilities_batch"):  # rl.bandits.Bandit
        if getattr(policy, "n_arms", a) != a:
            raise LogError(f"the policy has {policy.n_arms} arms but the log has {a} actions")
        contexts = log.context if getattr(policy, "dim", 0) else None
        if getattr(policy, "dim", 0) and contexts is None:
            raise LogError(f"the policy needs {policy.dim}-dimensional contexts but the log has none")
        pi = np.asarray(policy.probabilities_batch(contexts, log.available, n), dtype=np.float64)
    else:
        pi = np.asarray(policy, dtype=np.float64)
        if pi.ndim == 3 and pi.shape[:2] == (n, a) and pi.shape[2] >= log.n_positions:
            pi = pi[np.arange(n), :, log.positions()]
    if pi.shape != (n, a):
        raise LogError(f"target probabilities must have shape ({n}, {a}) (or ({n}, {a}, K) for a log with "
                       f"K positions); got {pi.shape}")
    bad = ~np.isfinite(pi).all(axis=1) | (pi < 0).any(axis=1)
    log._first_bad("target probabilities", bad, pi, "has a negative or non-finite value")
    total = pi.sum(axis=1)
    log._first_bad("target probabilities", np.abs(total - 1) > SUM_TOLERANCE, total, "does not sum to 1")
    if log.available is not None:
        off = np.where(log.available, 0.0, pi).sum(axis=1)
        log._first_bad("target probabilities", off > SUM_TOLERANCE, off, "puts mass on unavailable actions")
    return pi


def _mask(log: LoggedBandit) -> np.ndarray:
    return log.available if log.available is not None else np.ones((log.n, log.n_actions), bool)


def _uniform_over(mask: np.ndarray) -> np.ndarray:
    return mask / mask.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class UniformPolicy:
    """Uniform over the available actions of each row."""

    def action_probabilities(self, log: LoggedBandit) -> np.ndarray:
        return _uniform_over(_mask(log))


@dataclass(frozen=True)
class FixedPolicy:
    """A context-free policy: one distribution over actions, (A,), or one per position, (A, K) (OBP layout).

    With an availability mask, the mass of unavailable actions is spread over the available ones in
    proportion to their probabilities (uniformly where none of them has any).
    """

    table: np.ndarray

    def __post_init__(self) -> None:
        t = np.array(self.table, dtype=np.float64)
        if t.ndim not in (1, 2) or not np.isfinite(t).all() or (t < 0).any():
            raise ValueError(f"table must be a finite, non-negative (A,) or (A, K) array; got shape {t.shape}")
        if np.abs(t.sum(axis=0) - 1).max() > SUM_TOLERANCE:
            raise ValueError(f"each distribution must sum to 1; sums {np.round(t.sum(axis=0), 6).tolist()}")
        t.flags.writeable = False
        object.__setattr__(self, "table", t)

    def action_probabilities(self, log: LoggedBandit) -> np.ndarray:
        t = self.table if self.table.ndim == 2 else self.table[:, None]
        if t.shape[0] != log.n_actions:
            raise LogError(f"the policy has {t.shape[0]} actions but the log has {log.n_actions}")
        if t.shape[1] > 1 and (log.position is None or t.shape[1] < log.n_positions):
            raise LogError(f"the policy has {t.shape[1]} positions but the log has "
                           f"{log.n_positions if log.position is not None else 'none'}")
        pi = t[:, log.positions() if t.shape[1] > 1 else np.zeros(log.n, np.int64)].T  # (N, A)
        return _restrict(pi, log.available)


@dataclass(frozen=True)
class FixedArmPolicy:
    """Always the same action (e.g. a rule's fixed nudge); uniform over the available ones where it is not."""

    arm: int

    def action_probabilities(self, log: LoggedBandit) -> np.ndarray:
        if not 0 <= self.arm < log.n_actions:
            raise LogError(f"arm {self.arm} is outside [0, {log.n_actions})")
        pi = np.zeros((log.n, log.n_actions))
        pi[:, self.arm] = 1.0
        return _restrict(pi, log.available)


@dataclass(frozen=True)
class EpsilonGreedyPolicy:
    """Greedy on per-row scores (N, A) (e.g. a reward model's predictions), uniform with probability epsilon;
    ties among the best available actions split evenly."""

    scores: np.ndarray
    epsilon: float = 0.1

    def __post_init__(self) -> None:
        check_real("epsilon", self.epsilon, 0.0, 1.0)

    def action_probabilities(self, log: LoggedBandit) -> np.ndarray:
        s = np.asarray(self.scores, dtype=np.float64)
        if s.shape != (log.n, log.n_actions) or np.isnan(s).any():
            raise LogError(f"scores must be an ({log.n}, {log.n_actions}) array without NaN; got {s.shape}")
        mask = _mask(log)
        s = np.where(mask, s, -np.inf)
        top = mask & (s == s.max(axis=1, keepdims=True))
        return self.epsilon * _uniform_over(mask) + (1.0 - self.epsilon) * _uniform_over(top)


def _restrict(pi: np.ndarray, available: np.ndarray | None) -> np.ndarray:
    """Renormalise (N, A) probabilities over the available actions (uniform where none had mass)."""
    if available is None:
        return pi
    kept = np.where(available, pi, 0.0)
    total = kept.sum(axis=1, keepdims=True)
    return np.where(total > 0, kept / np.where(total > 0, total, 1.0), _uniform_over(available))

