"""Joint (product, nudge) decisions with honest propensities: one distribution over the allowed cells, one draw from it.

Shapes: B rows (contacts), P products, A nudge arms, C = P * A cells, d context width. A decision policy first turns
estimated values (B, P, A) and the allowed cells (held products, forbidden nudges, the catalogue) into the
probability of each cell (`joint_probabilities`), then `draw` samples one cell per row from exactly those
probabilities and returns its propensity, so the logged propensity is the probability of the decision made and the
next round's off-policy evaluation (IPS, SNIPS, DR over the P * A joint actions) is valid.

Kinds (`JointConfig.kind`): `greedy` (all mass on the first maximum), `epsilon_greedy` (greedy, plus epsilon spread
uniformly over the allowed cells), `softmax` (Boltzmann at `temperature`), `thompson` (the chance that each cell is
the arg-max when every value gets independent normal noise of sd `spread`; a Monte-Carlo estimate from `samples`
draws: numpy has no normal CDF to integrate with, and the estimate is what is drawn from, so the propensity stays
exact for the decision made) and `linucb` (epsilon-greedy over upper confidence bounds, e.g. `JointLinUCB.values`).

`JointLinUCB` is LinUCB over the joint arms with one shared ridge model on crossed features,
phi(x, p, a) = [x (x) onehot(p), x (x) onehot(a)] (optionally + x (x) onehot(p, a)): the value of an offer is a
product term and a nudge term, each depending on the context (segment x product and segment x nudge). One
observation then teaches both the product's and the nudge's coefficients, where disjoint models per (p, a) split the
data P * A ways (11 x 11 = 121 on the campaign catalogue) and learn nothing about a pair never offered.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np

from seqrec.core.config import check_choice, check_int, check_real

JOINT_KINDS: tuple[str, ...] = ("greedy", "epsilon_greedy", "softmax", "thompson", "linucb")
MC_CHUNK = 1 << 22  # Thompson: at most this many normal draws in memory at once (samples x rows x cells)
LINUCB_FORMAT = 1


@dataclass(frozen=True)
class JointConfig:
    """How joint (product, nudge) decisions are made; validated on creation (ValueError naming the field)."""

    kind: str = "epsilon_greedy"  # one of JOINT_KINDS
    epsilon: float = 0.1          # uniform share over the allowed cells (epsilon_greedy, linucb)
    temperature: float = 0.05     # softmax temperature (in units of the values), > 0
    alpha: float = 1.0            # LinUCB confidence-bonus weight
    samples: int = 1000           # Thompson: Monte-Carlo draws per probability estimate
    seed: int = 0                 # seed of the Generator used when none is passed
    ridge: float = 1.0            # LinUCB: the ridge (A starts at ridge * I), > 0

    def __post_init__(self) -> None:
        check_choice("kind", self.kind, JOINT_KINDS)
        check_real("epsilon", self.epsilon, 0.0, 1.0)
        check_real("temperature", self.temperature, 0.0, math.inf, open_low=True)
        check_real("alpha", self.alpha, 0.0, math.inf)
        check_int("samples", self.samples, 1)
        check_int("seed", self.seed, 0)
        check_real("ridge", self.ridge, 0.0, math.inf, open_low=True)


def _checked(values: np.ndarray, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B, C) float64 values and (B, C) bool mask from (B, P, A) inputs; ValueError naming the bad row."""
    v = np.asarray(values, dtype=np.float64)
    m = np.asarray(allowed)
    if v.ndim != 3:
        raise ValueError(f"values must have shape (B, P, A); got {v.shape}")
    if m.dtype != bool or m.shape != v.shape:
        raise ValueError(f"allowed must be a bool array of the values' shape {v.shape}; got {m.dtype} {m.shape}")
    v, m = v.reshape(len(v), -1), m.reshape(len(m), -1)
    empty = ~m.any(axis=1)
    if empty.any():
        raise ValueError(f"row {int(np.argmax(empty))} has no allowed (product, nudge) cell")
    bad = (m & ~np.isfinite(v)).any(axis=1)
    if bad.any():
        raise ValueError(f"row {int(np.argmax(bad))} has a non-finite value in an allowed cell")
    return v, m


def _greedy(v: np.ndarray, m: np.ndarray) -> np.ndarray:
    """(B, C) one-hot of the first maximum over the allowed cells."""
    best = np.argmax(np.where(m, v, -np.inf), axis=1)
    out = np.zeros(v.shape)
    out[np.arange(len(v)), best] = 1.0
    return out


def mix_uniform(probabilities: np.ndarray, allowed: np.ndarray, epsilon: float) -> np.ndarray:
    """(1 - epsilon) * probabilities + epsilon uniform over the allowed cells (any shape, last axes the cells)."""
    m = np.asarray(allowed, dtype=np.float64)
    cells = m.reshape(len(m), -1)
    uniform = (cells / cells.sum(axis=1, keepdims=True)).reshape(m.shape)
    return (1.0 - epsilon) * probabilities + epsilon * uniform


def _softmax(v: np.ndarray, m: np.ndarray, temperature: float) -> np.ndarray:
    z = np.where(m, v, -np.inf) / temperature
    e = np.where(m, np.exp(z - z.max(axis=1, keepdims=True)), 0.0)
    return e / e.sum(axis=1, keepdims=True)


def _thompson(v: np.ndarray, m: np.ndarray, spread: np.ndarray, samples: int,
              rng: np.random.Generator) -> np.ndarray:
    """(B, C) share of `samples` draws of values + spread * N(0, 1) in which each allowed cell is the largest."""
    b, c = v.shape
    mean = np.where(m, v, -np.inf)
    sd = np.where(m, spread, 0.0)
    out = np.empty((b, c))
    step = max(1, MC_CHUNK // (samples * c))
    for lo in range(0, b, step):
        mu, s = mean[lo:lo + step], sd[lo:lo + step]  # (b', C)
        n = len(mu)
        theta = mu[None] + s[None] * rng.standard_normal((samples, n, c))  # (S, b', C); -inf where not allowed
        winner = np.argmax(theta, axis=2) + c * np.arange(n)[None]  # (S, b') flat cell index
        out[lo:lo + step] = np.bincount(winner.ravel(), minlength=n * c).reshape(n, c) / samples
    return out


def joint_probabilities(values: np.ndarray, allowed: np.ndarray, cfg: JointConfig, spread: np.ndarray | None = None,
                        rng: np.random.Generator | None = None) -> np.ndarray:
    """(B, P, A) probability of offering product p with nudge a: each row sums to 1 over its allowed cells and is
    exactly 0 elsewhere. `spread` (B, P, A) is Thompson's noise sd (>= 0 where allowed); `rng` its draws (default:
    a Generator seeded by cfg.seed, so the same call gives the same probabilities)."""
    v, m = _checked(values, allowed)
    shape = np.shape(values)
    if cfg.kind == "greedy":
        p = _greedy(v, m)
    elif cfg.kind in ("epsilon_greedy", "linucb"):  # linucb: `values` are the upper confidence bounds
        p = mix_uniform(_greedy(v, m), m, cfg.epsilon)
    elif cfg.kind == "softmax":
        p = _softmax(v, m, cfg.temperature)
    else:
        if spread is None:
            raise ValueError("thompson needs `spread`, the (B, P, A) sd of each value")
        s = np.asarray(spread, dtype=np.float64)
        if s.shape != shape:
            raise ValueError(f"spread must have the values' shape {shape}; got {s.shape}")
        s = s.reshape(len(s), -1)
        bad = (m & ~(np.isfinite(s) & (s >= 0))).any(axis=1)
        if bad.any():
            raise ValueError(f"row {int(np.argmax(bad))} has a negative or non-finite spread in an allowed cell")
        p = _thompson(v, m, s, cfg.samples, rng if rng is not None else np.random.default_rng(cfg.seed))
    p[~m] = 0.0
    return p.reshape(shape)


def draw(probabilities: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One cell per row of (B, P, A) probabilities, by inverse CDF (never a cell of probability 0):
    (product (B,), nudge (B,), propensity (B,) = probabilities[row, product, nudge])."""
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 3 or p.shape[0] == 0 or p.shape[1] * p.shape[2] == 0:
        raise ValueError(f"probabilities must have shape (B, P, A) with P, A >= 1; got {p.shape}")
    flat = p.reshape(len(p), -1)  # (B, C)
    total = flat.sum(axis=1)
    bad = ~(np.isfinite(flat).all(axis=1) & (flat >= 0).all(axis=1) & (np.abs(total - 1.0) < 1e-9))
    if bad.any():
        raise ValueError(f"row {int(np.argmax(bad))} of probabilities is not a distribution (>= 0, summing to 1)")
    cdf = np.cumsum(flat, axis=1)
    u = rng.random(len(flat)) * cdf[:, -1]
    cell = (cdf <= u[:, None]).sum(axis=1)
    last = flat.shape[1] - 1 - np.argmax(flat[:, ::-1] > 0, axis=1)
    cell = np.minimum(cell, last)
    n_nudges = p.shape[2]
    return cell // n_nudges, cell % n_nudges, flat[np.arange(len(flat)), cell]


def decide(values: np.ndarray, allowed: np.ndarray, cfg: JointConfig, spread: np.ndarray | None = None,
           rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """joint_probabilities then draw with the same Generator: (product (B,), nudge (B,), propensity (B,),
    probabilities (B, P, A))."""
    rng = rng if rng is not None else np.random.default_rng(cfg.seed)
    p = joint_probabilities(values, allowed, cfg, spread, rng)
    product, nudge, propensity = draw(p, rng)
    return product, nudge, propensity, p


def joint_propensity(product_propensity: np.ndarray, nudge_propensity: np.ndarray) -> np.ndarray:
    """P(product, nudge) = P(product) * P(nudge | product), elementwise (float64)."""
    return np.asarray(product_propensity, dtype=np.float64) * np.asarray(nudge_propensity, dtype=np.float64)


class JointLinUCB:
    """LinUCB over (product, nudge) arms: one ridge regression on phi(x, p, a) = [x (x) e_p, x (x) e_a
    (, x (x) e_pa)], score theta.phi + alpha sqrt(phi^T A^-1 phi); `probabilities` is the arg-max with epsilon."""

    def __init__(self, cfg: JointConfig, n_products: int, n_nudges: int, dim: int, pair_terms: bool = False) -> None:
        check_int("n_products", n_products, 1)
        check_int("n_nudges", n_nudges, 1)
        check_int("dim", dim, 1)
        self.cfg, self.n_products, self.n_nudges, self.dim = cfg, int(n_products), int(n_nudges), int(dim)
        self.pair_terms = bool(pair_terms)
        p, a = self.n_products, self.n_nudges
        self.n_blocks = p + a + (p * a if self.pair_terms else 0)  # K blocks of d features each
        cell = np.arange(p * a)
        blocks = [cell // a, p + cell % a] + ([p + a + cell] if self.pair_terms else [])
        self.blocks = np.stack(blocks, axis=1)  # (C, m) the feature blocks of each cell
        size = self.n_blocks * self.dim  # D
        self.A = cfg.ridge * np.eye(size)  # (D, D)
        self.b = np.zeros(size)  # (D,)
        self.updates = 0
        self._derived: tuple[np.ndarray, np.ndarray] | None = None

    # ------------------------------------------------------------------------------ model
    def _model(self) -> tuple[np.ndarray, np.ndarray]:
        """Per cell (C, d) coefficients and (C, d, d) covariance of x's contribution, from A and b (cached)."""
        if self._derived is None:
            k, d = self.n_blocks, self.dim
            cov = np.linalg.inv(self.A)
            cov = 0.5 * (cov + cov.T)
            theta = np.linalg.solve(self.A, self.b).reshape(k, d)
            cov4 = cov.reshape(k, d, k, d)
            coef = theta[self.blocks].sum(axis=1)  # (C, d)
            gram = np.zeros((len(self.blocks), d, d))
            for u in range(self.blocks.shape[1]):
                for v in range(self.blocks.shape[1]):
                    gram += cov4[self.blocks[:, u], :, self.blocks[:, v], :]  # (C, d, d)
            self._derived = coef, gram
        return self._derived

    def _x(self, x: np.ndarray) -> np.ndarray:
        arr = np.asarray(x, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != self.dim or not np.isfinite(arr).all():
            raise ValueError(f"x must be finite contexts of shape (B, {self.dim}); got {arr.shape}")
        return arr

    def posterior(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, P, A) point estimates theta.phi and (B, P, A) their sd sqrt(phi^T A^-1 phi) (Thompson's spread)."""
        x = self._x(x)
        coef, gram = self._model()
        c, d = coef.shape
        mean = x @ coef.T  # (B, C)
        quad = np.empty_like(mean)
        step = max(1, MC_CHUNK // (c * d))
        flat = gram.transpose(1, 0, 2).reshape(d, c * d)  # (d, C d)
        for lo in range(0, len(x), step):
            xs = x[lo:lo + step]
            quad[lo:lo + step] = ((xs @ flat).reshape(len(xs), c, d) * xs[:, None, :]).sum(axis=2)
        shape = (len(x), self.n_products, self.n_nudges)
        return mean.reshape(shape), np.sqrt(np.maximum(quad, 0.0)).reshape(shape)

    def values(self, x: np.ndarray) -> np.ndarray:
        """(B, P, A) upper confidence bounds: mean + alpha * sd."""
        mean, sd = self.posterior(x)
        return mean + self.cfg.alpha * sd

    def probabilities(self, x: np.ndarray, allowed: np.ndarray) -> np.ndarray:
        """(B, P, A): the first arg-max of the UCB among the allowed cells, with cfg.epsilon spread uniformly."""
        return joint_probabilities(self.values(x), allowed, replace(self.cfg, kind="linucb"))

    def update(self, x: np.ndarray, product: np.ndarray, nudge: np.ndarray, reward: np.ndarray,
               weight: np.ndarray | None = None) -> None:
        """Learn from N decisions: context x (N, d), offered product (N,), nudge (N,), reward (N,), optional
        weight (N,) > 0 (e.g. an importance weight)."""
        x = self._x(x)
        n = len(x)
        prod, nud = np.asarray(product), np.asarray(nudge)
        for name, arr, hi in (("product", prod, self.n_products), ("nudge", nud, self.n_nudges)):
            if arr.shape != (n,) or not np.issubdtype(arr.dtype, np.integer) or ((arr < 0) | (arr >= hi)).any():
                raise ValueError(f"{name} must be ({n},) integers in [0, {hi}); got {arr!r}")
        r = np.asarray(reward, dtype=np.float64)
        w = np.ones(n) if weight is None else np.asarray(weight, dtype=np.float64)
        if r.shape != (n,) or not np.isfinite(r).all():
            raise ValueError(f"reward must be ({n},) finite numbers")
        if w.shape != (n,) or not (np.isfinite(w) & (w > 0)).all():
            raise ValueError(f"weight must be ({n},) finite numbers > 0")
        d, size = self.dim, self.A.shape[0]
        blk = self.blocks[prod * self.n_nudges + nud]  # (N, m)
        i = np.arange(d)
        step = max(1, MC_CHUNK // (blk.shape[1] ** 2 * d * d))
        for lo in range(0, n, step):
            xs, ws, bs = x[lo:lo + step], w[lo:lo + step], blk[lo:lo + step]
            outer = ws[:, None, None] * xs[:, :, None] * xs[:, None, :]  # (n', d, d)
            for u in range(bs.shape[1]):
                for v in range(bs.shape[1]):
                    rows = (bs[:, u, None] * d + i)[:, :, None]  # (n', d, 1)
                    cols = (bs[:, v, None] * d + i)[:, None, :]  # (n', 1, d)
                    flat = (rows * size + cols).ravel()
                    self.A += np.bincount(flat, outer.ravel(), size * size).reshape(size, size)
        for u in range(blk.shape[1]):
            idx = (blk[:, u, None] * d + i).ravel()
            self.b += np.bincount(idx, ((w * r)[:, None] * x).ravel(), size)
        self.updates += n
        self._derived = None

    # ------------------------------------------------------------------------------ saving
    def to_dict(self) -> dict:
        """A JSON-able dict of everything (config, shapes, A, b): from_dict rebuilds the same model exactly."""
        return {"format": LINUCB_FORMAT, "config": asdict(self.cfg), "n_products": self.n_products,
                "n_nudges": self.n_nudges, "dim": self.dim, "pair_terms": self.pair_terms, "updates": self.updates,
                "A": self.A.tolist(), "b": self.b.tolist()}

    @classmethod
    def from_dict(cls, data: dict) -> JointLinUCB:
        """The model `to_dict` saved; ValueError naming a missing key or a wrong shape."""
        keys = ("format", "config", "n_products", "n_nudges", "dim", "pair_terms", "updates", "A", "b")
        missing = [k for k in keys if k not in data]
        if missing:
            raise ValueError(f"JointLinUCB dict lacks key(s) {missing}")
        if data["format"] != LINUCB_FORMAT:
            raise ValueError(f"JointLinUCB dict has format {data['format']!r}; this version reads {LINUCB_FORMAT}")
        model = cls(JointConfig(**data["config"]), data["n_products"], data["n_nudges"], data["dim"],
                    data["pair_terms"])
        a, b = np.asarray(data["A"], dtype=np.float64), np.asarray(data["b"], dtype=np.float64)
        if a.shape != model.A.shape or b.shape != model.b.shape:
            raise ValueError(f"JointLinUCB dict: A {a.shape} and b {b.shape}, expected {model.A.shape} and "
                             f"{model.b.shape}")
        model.A, model.b, model.updates = a, b, int(data["updates"])
        return model
