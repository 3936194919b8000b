"""Nudge bandits that log the propensity of every decision, fitted online or offline from logged decisions.

Four policies share one interface (shapes: B rows, A arms, d context width):

- `select(context, available) -> (arm, propensity)` draws an arm from `probabilities(context, available)`,
  the (A,) vector of choice probabilities (zero outside `available`, summing to 1 over it), so the logged
  propensity is the probability of the draw that was actually made.
- `update(context, arm, reward, weight=1)`; `select_batch` / `probabilities_batch` / `update_batch` do B rows.

Kinds (`BanditConfig.kind`):

- `epsilon_greedy` (Kristiana et al.): incremental-mean value per arm, Q += w (r - Q) / W. With probability
  epsilon a uniform available arm, else a greedy one; ties among greedy arms split evenly. Exact propensities.
- `ucb1`: mean + alpha * sqrt(2 ln t / n) (t all updates, n the arm's); untried available arms first; ties
  split evenly. Deterministic, so exact propensities (0 or 1/ties) unless an epsilon floor is set.
- `thompson`: Beta(prior_alpha, prior_beta) posteriors; a reward r in [0, 1] adds r to alpha and 1 - r to
  beta ("fractional", deterministic; default) or is first turned into a Bernoulli(r) trial ("bernoulli").
  The chance that each arm's posterior draw is the largest is estimated from `mc_samples` joint draws, and
  the arm is drawn from that estimate: the propensity is exact for the decision made, and that decision
  follows Thompson sampling up to the Monte-Carlo error, about sqrt(p (1 - p) / mc_samples).
  `propensity_samples` reports the sample count (0 for the exact kinds).
- `linucb` (disjoint): per arm a ridge regression of reward on the context (float vector, e.g. the user
  state): A_a = ridge I + sum w x x^T, b_a = sum w r x, theta_a = A_a^-1 b_a; score theta_a.x +
  alpha sqrt(x^T A_a^-1 x); argmax with ties split evenly, so propensities are exact.

`epsilon` mixes a uniform choice among the available arms into any kind (default 0.1 for epsilon-greedy, 0
for the others): a floor that keeps every available arm's propensity >= epsilon / |available|, which logs
need when other policies are to be evaluated on them. Context-free kinds ignore the context.

Offline fitting from logged (arm, reward, propensity) rows (`fit_offline`, by replay or importance weighting)
and saving / loading a bandit's state live in seqrec.rl.bandits.fit.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from seqrec.datasets.schema import DEFAULT_REWARDS

from seqrec.core.config import check_int, check_real

KINDS: tuple[str, ...] = ("epsilon_greedy", "ucb1", "thompson", "linucb")
CONTEXTUAL_KINDS: tuple[str, ...] = ("linucb",)  # need a context per decision (dim > 0)
THOMPSON_UPDATES: tuple[str, ...] = ("fractional", "bernoulli")


@dataclass(frozen=True)
class BanditConfig:
    """Which bandit and its settings; `create(arms, dim)` builds it (validated on creation)."""

    kind: str = "epsilon_greedy"      # one of KINDS
    epsilon: float | None = None      # uniform-exploration share; None: 0.1 for epsilon_greedy, else 0
    alpha: float = 1.0                # weight of the UCB1 / LinUCB confidence bonus
    ridge: float = 1.0                # LinUCB ridge (A_a starts at ridge * I)
    prior_alpha: float = 1.0          # Thompson Beta prior
    prior_beta: float = 1.0
    thompson_update: str = "fractional"  # how a reward in [0, 1] updates the Beta posterior (THOMPSON_UPDATES)
    mc_samples: int = 1000            # Thompson: joint posterior draws per propensity estimate
    seed: int = 0                     # seed of the bandit's numpy Generator

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {self.kind!r}")
        if self.thompson_update not in THOMPSON_UPDATES:
            raise ValueError(f"thompson_update must be one of {', '.join(THOMPSON_UPDATES)}; "
                             f"got {self.thompson_update!r}")
        if self.epsilon is not None:
            check_real("epsilon", self.epsilon, 0.0, 1.0)
        check_real("alpha", self.alpha, 0.0, math.inf)
        for name in ("ridge", "prior_alpha", "prior_beta"):
            check_real(name, getattr(self, name), 0.0, math.inf, open_low=True)
        check_int("mc_samples", self.mc_samples, 1)
        check_int("seed", self.seed, 0)

    @property
    def effective_epsilon(self) -> float:
        """The uniform-exploration share actually used."""
        if self.epsilon is not None:
            return float(self.epsilon)
        return 0.1 if self.kind == "epsilon_greedy" else 0.0

    def create(self, arms: Sequence[str], dim: int = 0) -> Bandit:
        """A fresh bandit over `arms` (ids in index order); `dim` is the context width (LinUCB only)."""
        cls = {"epsilon_greedy": EpsilonGreedy, "ucb1": UCB1, "thompson": ThompsonSampling, "linucb": LinUCB}
        return cls[self.kind](self, arms, dim)



def event_rewards(event_types: Sequence[str], rewards: Mapping[str, float] = DEFAULT_REWARDS) -> np.ndarray:
    """(N,) float64 rewards of logged event types (the training reward map); ValueError naming unknown ones."""
    unknown = sorted(set(event_types) - set(rewards))
    if unknown:
        raise ValueError(f"no reward for event type(s) {unknown}; rewards: {dict(rewards)}")
    return np.array([rewards[e] for e in event_types], dtype=np.float64)


class Bandit:
    """Shared machinery: argument checks, probabilities -> draws, batch forms. Subclasses hold the statistics."""

    def __init__(self, config: BanditConfig, arms: Sequence[str], dim: int = 0) -> None:
        arms = tuple(arms)
        if not arms or not all(isinstance(a, str) and a for a in arms) or len(set(arms)) < len(arms):
            raise ValueError(f"arms must be distinct non-empty ids, at least one; got {arms!r}")
        contextual = config.kind in CONTEXTUAL_KINDS
        check_int("dim", dim, 1 if contextual else 0)
        self.config, self.arms = config, arms
        self.dim = int(dim) if contextual else 0   # context width; 0: context-free (contexts are ignored)
        self.rng = np.random.default_rng(config.seed)
        self.updates = 0          # rows fed to update / update_batch
        self._reset()

    @property
    def n_arms(self) -> int:
        return len(self.arms)

    @property
    def propensity_samples(self) -> int:
        """Monte-Carlo draws behind each propensity; 0 means the propensities are exact."""
        return 0

    # ------------------------------------------------------------------------------ subclass hooks
    def _reset(self) -> None:
        raise NotImplementedError

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The learnt statistics (what save_bandit writes)."""
        raise NotImplementedError

    def set_state(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Restore the statistics `state_arrays` returned (load_bandit)."""
        raise NotImplementedError

    def _scores(self, x: np.ndarray | None, rows: int) -> np.ndarray:
        """(B, A) scores whose argmax is the greedy choice (deterministic kinds)."""
        raise NotImplementedError

    def _update_many(self, x: np.ndarray | None, arms: np.ndarray, rewards: np.ndarray, w: np.ndarray) -> None:
        raise NotImplementedError

    def values(self, context: object = None) -> np.ndarray:
        """(A,) point estimate of each arm's expected reward (for the context, in LinUCB)."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------ policy
    def _policy(self, x: np.ndarray | None, mask: np.ndarray) -> np.ndarray:
        """(B, A) probabilities before the epsilon floor: uniform over the top-scoring available arms."""
        s = np.where(mask, self._scores(x, len(mask)), -np.inf)
        top = mask & (s == s.max(axis=1, keepdims=True))
        return top / top.sum(axis=1, keepdims=True)

    def probabilities_batch(self, contexts: np.ndarray | None = None, available: np.ndarray | None = None,
                            rows: int | None = None) -> np.ndarray:
        """(B, A) choice probabilities; contexts (B, d) or None, available (B, A) or (A,) bool or None (all)."""
        x, mask = self.batch_inputs(contexts, available, rows)
        p = self._policy(x, mask)
        eps = self.config.effective_epsilon
        if eps > 0:
            p = eps * mask / mask.sum(axis=1, keepdims=True) + (1.0 - eps) * p
        return p

    def probabilities(self, context: object = None, available: object = None) -> np.ndarray:
        """(A,) probability of choosing each arm now; zero outside `available`, summing to 1 over it."""
        return self.probabilities_batch(self._one_context(context), self._mask(available)[None])[0]

    def select_batch(self, contexts: np.ndarray | None = None, available: np.ndarray | None = None,
                     rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(B,) arm indices drawn from probabilities_batch and (B,) their propensities."""
        p = self.probabilities_batch(contexts, available, rows)
        arm = self._draw(p)
        return arm, p[np.arange(len(p)), arm]

    def select(self, context: object = None, available: object = None) -> tuple[int, float]:
        """(arm index, propensity): an arm drawn from probabilities(context, available) and its probability.

        `available`: None (every arm), a (A,) bool mask, or arm indices or ids.
        """
        arm, prop = self.select_batch(self._one_context(context), self._mask(available)[None])
        return int(arm[0]), float(prop[0])

    def best_arm(self, context: object = None, available: object = None) -> int:
        """The available arm with the highest point estimate (first on ties)."""
        return int(np.argmax(np.where(self._mask(available), self.values(context), -np.inf)))

    def choose(self, x: np.ndarray | None, mask: np.ndarray) -> int:
        """One arm drawn from the policy for (1, d) x and (1, A) mask, without its propensity (fit_offline's replay)."""
        return int(self._draw(self.probabilities_batch(x, mask))[0])

    def _draw(self, p: np.ndarray) -> np.ndarray:
        """(B,) one arm per row of (B, A) probabilities, by inverse CDF; never an arm of probability 0."""
        cdf = np.cumsum(p, axis=1)
        u = self.rng.random(len(p)) * cdf[:, -1]
        arm = (cdf <= u[:, None]).sum(axis=1)
        last = p.shape[1] - 1 - np.argmax(p[:, ::-1] > 0, axis=1)
        return np.minimum(arm, last).astype(np.int64)

    # ------------------------------------------------------------------------------ learning
    def update(self, context: object, arm: int | str, reward: float, weight: float = 1.0) -> None:
        """Learn from one decision: `arm` (index or id) earned `reward`; `weight` > 0 (importance weight)."""
        self.update_batch(self._one_context(context), np.array([self._arm_index(arm)]),
                          np.array([reward], dtype=np.float64), np.array([weight], dtype=np.float64))

    def update_batch(self, contexts: np.ndarray | None, arms: np.ndarray, rewards: np.ndarray,
                     weights: np.ndarray | None = None) -> None:
        """Learn from B decisions at once (same result as B updates, up to float rounding)."""
        a = np.asarray(arms)
        in_range = a.ndim == 1 and np.issubdtype(a.dtype, np.integer) and ((0 <= a) & (a < self.n_arms)).all()
        if not in_range:
            raise ValueError(f"arms must be a 1-D array of indices in [0, {self.n_arms}); got {a!r}")
        r = np.asarray(rewards, dtype=np.float64)
        w = np.ones(len(a)) if weights is None else np.asarray(weights, dtype=np.float64)
        if r.shape != a.shape or w.shape != a.shape:
            raise ValueError(f"arms, rewards and weights must have one shape; got {a.shape}, {r.shape}, {w.shape}")
        if not np.isfinite(r).all():
            raise ValueError("rewards must be finite")
        if not (np.isfinite(w).all() and (w > 0).all()):
            raise ValueError("weights must be finite and > 0")
        x = self._contexts(contexts, len(a)) if self.dim else None
        self._update_many(x, a.astype(np.int64), r, w)
        self.updates += len(a)

    # ------------------------------------------------------------------------------ argument checks
    def _arm_index(self, arm: object) -> int:
        if isinstance(arm, str):
            if arm not in self.arms:
                raise ValueError(f"unknown arm {arm!r}; arms: {', '.join(self.arms)}")
            return self.arms.index(arm)
        if isinstance(arm, bool) or not isinstance(arm, numbers.Integral) or not 0 <= arm < self.n_arms:
            raise ValueError(f"arm must be an id or an index in [0, {self.n_arms}); got {arm!r}")
        return int(arm)

    def _mask(self, available: object) -> np.ndarray:
        """(A,) bool mask from None, a bool mask, or arm indices / ids; at least one arm."""
        if available is None:
            return np.ones(self.n_arms, dtype=bool)
        arr = np.asarray(available)
        if arr.dtype == bool:
            if arr.shape != (self.n_arms,):
                raise ValueError(f"available mask must have shape ({self.n_arms},); got {arr.shape}")
            mask = arr.copy()
        else:
            mask = np.zeros(self.n_arms, dtype=bool)
            mask[[self._arm_index(a) for a in available]] = True  # type: ignore[union-attr]
        if not mask.any():
            raise ValueError("no arm is available")
        return mask

    def _one_context(self, context: object) -> np.ndarray | None:
        """(1, d) float64 context, or None for context-free kinds."""
        if not self.dim:
            return None
        x = np.asarray(context, dtype=np.float64) if context is not None else None
        if x is None or x.shape != (self.dim,) or not np.isfinite(x).all():
            raise ValueError(f"{self.config.kind} needs a finite context of shape ({self.dim},); "
                             f"got {None if x is None else x.shape}")
        return x[None]

    def _contexts(self, contexts: object, rows: int) -> np.ndarray:
        x = None if contexts is None else np.asarray(contexts, dtype=np.float64)
        if x is None or x.shape != (rows, self.dim) or not np.isfinite(x).all():
            raise ValueError(f"{self.config.kind} needs finite contexts of shape ({rows}, {self.dim}); "
                             f"got {None if x is None else x.shape}")
        return x

    def batch_inputs(self, contexts: object, available: object, rows: int | None):
        """Checked batch inputs: (x (B, d) or None, mask (B, A)) with B from contexts, available or rows."""
        mask = None if available is None else np.asarray(available)
        if mask is not None and (mask.dtype != bool or mask.shape[-1:] != (self.n_arms,) or mask.ndim > 2):
            raise ValueError(f"available must be a bool array of shape (B, {self.n_arms}) or ({self.n_arms},)")
        if rows is None:
            rows = (len(contexts) if contexts is not None else  # type: ignore[arg-type]
                    len(mask) if mask is not None and mask.ndim == 2 else 1)
        mask = np.ones((rows, self.n_arms), bool) if mask is None else np.broadcast_to(mask, (rows, self.n_arms))
        if not mask.any(axis=1).all():
            raise ValueError(f"no arm is available in row(s) {np.flatnonzero(~mask.any(axis=1))[:5].tolist()}")
        return (self._contexts(contexts, rows) if self.dim else None), mask


class _MeanBandit(Bandit):
    """Weighted incremental mean per arm: W (total weight, the count when weights are 1) and Q (mean)."""

    def _reset(self) -> None:
        self.weight = np.zeros(self.n_arms)
        self.mean = np.zeros(self.n_arms)

    def state_arrays(self) -> dict[str, np.ndarray]:
        return {"weight": self.weight.copy(), "mean": self.mean.copy()}

    def set_state(self, arrays: Mapping[str, np.ndarray]) -> None:
        self.weight, self.mean = np.array(arrays["weight"]), np.array(arrays["mean"])

    def _update_many(self, x, arms, rewards, w) -> None:
        if len(arms) == 1:  # the paper's incremental mean, Q += w (r - Q) / W
            a = arms[0]
            self.weight[a] += w[0]
            self.mean[a] += w[0] * (rewards[0] - self.mean[a]) / self.weight[a]
            return
        sw = np.bincount(arms, w, self.n_arms)
        swr = np.bincount(arms, w * rewards, self.n_arms)
        total = self.weight + sw
        self.mean = np.where(sw > 0, (self.weight * self.mean + swr) / np.where(total > 0, total, 1.0), self.mean)
        self.weight = total

    def values(self, context: object = None) -> np.ndarray:
        return self.mean.copy()


class EpsilonGreedy(_MeanBandit):
    """Kristiana et al.'s policy: greedy on the incremental means, uniform with probability epsilon."""

    def _scores(self, x, rows) -> np.ndarray:
        return np.broadcast_to(self.mean, (rows, self.n_arms))


class UCB1(_MeanBandit):
    """Auer et al.'s UCB1: mean + alpha sqrt(2 ln t / n); an untried arm scores +inf."""

    def bonus(self) -> np.ndarray:
        """(A,) confidence bonus (inf for arms never updated)."""
        t = max(float(self.weight.sum()), 1.0)
        tried = self.weight > 0
        out = np.full(self.n_arms, np.inf)
        out[tried] = self.config.alpha * np.sqrt(2.0 * math.log(t) / self.weight[tried])
        return out

    def _scores(self, x, rows) -> np.ndarray:
        return np.broadcast_to(self.mean + self.bonus(), (rows, self.n_arms))


class ThompsonSampling(Bandit):
    """Bernoulli Thompson sampling with Beta posteriors; propensities estimated from mc_samples draws."""

    @property
    def propensity_samples(self) -> int:
        return self.config.mc_samples

    def _reset(self) -> None:
        self.alpha = np.full(self.n_arms, float(self.config.prior_alpha))
        self.beta = np.full(self.n_arms, float(self.config.prior_beta))

    def state_arrays(self) -> dict[str, np.ndarray]:
        return {"alpha": self.alpha.copy(), "beta": self.beta.copy()}

    def set_state(self, arrays: Mapping[str, np.ndarray]) -> None:
        self.alpha, self.beta = np.array(arrays["alpha"]), np.array(arrays["beta"])

    def _policy(self, x, mask) -> np.ndarray:
        """Share of mc_samples joint posterior draws in which each available arm is the largest.

        Rows of one batch share the draws (per distinct availability mask), which keeps a batch cheap.
        """
        theta = self.rng.beta(self.alpha, self.beta, size=(self.config.mc_samples, self.n_arms))  # (M, A)
        masks, inverse = np.unique(mask, axis=0, return_inverse=True)
        out = np.empty((len(masks), self.n_arms))
        for k, m in enumerate(masks):
            winners = np.argmax(np.where(m, theta, -np.inf), axis=1)
            out[k] = np.bincount(winners, minlength=self.n_arms) / self.config.mc_samples
        return out[inverse.reshape(-1)]

    def choose(self, x, mask) -> int:
        """Classic Thompson step (one posterior draw), with the epsilon floor: what replay needs."""
        mask = mask[0]
        if self.rng.random() < self.config.effective_epsilon:
            return int(self.rng.choice(np.flatnonzero(mask)))
        return int(np.argmax(np.where(mask, self.rng.beta(self.alpha, self.beta), -np.inf)))

    def _update_many(self, x, arms, rewards, w) -> None:
        if rewards.min() < 0 or rewards.max() > 1:
            raise ValueError("thompson rewards must lie in [0, 1]")
        if self.config.thompson_update == "bernoulli":
            rewards = (self.rng.random(len(rewards)) < rewards).astype(np.float64)
        self.alpha += np.bincount(arms, w * rewards, self.n_arms)
        self.beta += np.bincount(arms, w * (1.0 - rewards), self.n_arms)

    def values(self, context: object = None) -> np.ndarray:
        return self.alpha / (self.alpha + self.beta)


class LinUCB(Bandit):
    """Disjoint LinUCB (Li et al. 2010): a ridge regression per arm and an upper confidence bound."""

    def _reset(self) -> None:
        self.A = np.broadcast_to(self.config.ridge * np.eye(self.dim), (self.n_arms, self.dim, self.dim)).copy()
        self.b = np.zeros((self.n_arms, self.dim))
        self.A_inv = np.empty_like(self.A)   # derived from A and b, never saved
        self.theta = np.empty_like(self.b)
        self._refresh(range(self.n_arms))

    def _refresh(self, arms) -> None:
        """Recompute A_a^-1 and theta_a = A_a^-1 b_a (by solve, not the inverse) for the given arms."""
        for a in arms:
            self.A_inv[a] = np.linalg.inv(self.A[a])
            self.theta[a] = np.linalg.solve(self.A[a], self.b[a])

    def state_arrays(self) -> dict[str, np.ndarray]:
        return {"A": self.A.copy(), "b": self.b.copy()}

    def set_state(self, arrays: Mapping[str, np.ndarray]) -> None:
        self.A, self.b = np.array(arrays["A"]), np.array(arrays["b"])
        self._refresh(range(self.n_arms))

    def _scores(self, x, rows) -> np.ndarray:
        rows, d = x.shape
        mean = x @ self.theta.T                                                  # (B, A)
        xa = (x @ self.A_inv.transpose(1, 0, 2).reshape(d, -1)).reshape(rows, self.n_arms, d)  # one GEMM
        spread = (xa * x[:, None, :]).sum(axis=2)                                # (B, A): x^T A_a^-1 x
        return mean + self.config.alpha * np.sqrt(np.maximum(spread, 0.0))

    def _update_many(self, x, arms, rewards, w) -> None:
        for a in np.unique(arms):
            rows = arms == a
            xa, wa = x[rows], w[rows]                                            # (n, d), (n,)
            self.A[a] += (xa * wa[:, None]).T @ xa
            self.b[a] += xa.T @ (wa * rewards[rows])
        self._refresh(np.unique(arms))

    def values(self, context: object = None) -> np.ndarray:
        return (self._one_context(context) @ self.theta.T)[0]
