"""Bandits from logs and on disk: `fit_offline` (replay or importance weighting over logged decisions) and
`save_bandit` / `load_bandit`, an exact round trip of a bandit's state (JSON + .npz, no pickle)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from seqrec.rl.bandits.policies import Bandit, BanditConfig

from seqrec.core.io import atomic_write, atomic_write_text

FIT_METHODS: tuple[str, ...] = ("replay", "ips")
STATE_FORMAT = 1


# ---------------------------------------------------------------------------------------- offline fitting


@dataclass(frozen=True)
class FitResult:
    """What fit_offline did: the (updated) bandit and its counts."""

    bandit: Bandit
    method: str
    rows: int                 # logged decisions offered
    used: int                 # rows that updated the bandit
    matched: int | None       # replay: rows where the bandit's own draw equalled the logged arm (= used)
    value: float              # replay: mean reward over matched rows (Li et al.'s estimate of the value of
                              # the policy being fitted); ips: self-normalised IPS value of the uniform policy


def fit_offline(bandit: Bandit, arms: np.ndarray | Sequence[str], rewards: np.ndarray,
                propensities: np.ndarray | None = None, contexts: np.ndarray | None = None,
                available: np.ndarray | None = None, method: str = "replay") -> FitResult:
    """Fit `bandit` (in place) on N logged decisions, in log order.

    arms (N,) indices or ids; rewards (N,); propensities (N,) in (0, 1] (needed by ips); contexts (N, d)
    for LinUCB; available (N, A) or (A,) bool (the logged arm must be available).

    - replay (default; Li et al. 2011): at each row the bandit draws from its current policy; only rows where
      its draw equals the logged arm update it. Unbiased when the logger chose uniformly at random; with
      another logger the rows it learns from over-represent the contexts where that logger favoured the arm.
      (Thompson sampling draws from one posterior sample here; its Monte-Carlo propensities are not needed.)
    - ips: every row updates its logged arm with weight (1 / |available|) / propensity, i.e. the statistics a
      uniformly random logger would have gathered (self-normalised); the bandit's own choices play no part.
    """
    if method not in FIT_METHODS:
        raise ValueError(f"method must be one of {', '.join(FIT_METHODS)}; got {method!r}")
    a = _arm_indices(bandit, arms)
    n = len(a)
    r = np.asarray(rewards, dtype=np.float64)
    if r.shape != (n,):
        raise ValueError(f"rewards must have shape ({n},); got {r.shape}")
    p = None if propensities is None else np.asarray(propensities, dtype=np.float64)
    if p is not None and (p.shape != (n,) or not ((p > 0) & (p <= 1)).all()):
        raise ValueError(f"propensities must have shape ({n},) and lie in (0, 1]")
    if method == "ips" and p is None:
        raise ValueError("method 'ips' needs the logged propensities")
    x, mask = bandit.batch_inputs(contexts, available, n)
    if n and not mask[np.arange(n), a].all():
        bad = np.flatnonzero(~mask[np.arange(n), a])
        raise ValueError(f"logged arm not available in row(s) {bad[:5].tolist()}")
    if method == "ips":
        w = 1.0 / (mask.sum(axis=1) * p) if n else np.zeros(0)
        if n:
            bandit.update_batch(x, a, r, w)
        value = float((w * r).sum() / w.sum()) if n else math.nan
        return FitResult(bandit, method, n, n, None, value)
    matched, total = 0, 0.0
    for i in range(n):
        xi = None if x is None else x[i:i + 1]
        if bandit.choose(xi, mask[i:i + 1]) == a[i]:
            bandit.update_batch(xi, a[i:i + 1], r[i:i + 1])
            matched += 1
            total += r[i]
    return FitResult(bandit, method, n, matched, matched, total / matched if matched else math.nan)


def _arm_indices(bandit: Bandit, arms: np.ndarray | Sequence[str]) -> np.ndarray:
    """(N,) int64 arm indices from indices or ids (ValueError naming the first bad one)."""
    arr = np.asarray(arms)
    if np.issubdtype(arr.dtype, np.integer):
        bad = np.flatnonzero((arr < 0) | (arr >= bandit.n_arms))
        if bad.size:
            raise ValueError(f"arm index {arr[bad[0]]} in row {bad[0]} is outside [0, {bandit.n_arms})")
        return arr.astype(np.int64).reshape(-1)
    index = {a: i for i, a in enumerate(bandit.arms)}
    out = np.array([index.get(a, -1) for a in arr.reshape(-1).tolist()], dtype=np.int64)
    if (out < 0).any():
        i = int(np.flatnonzero(out < 0)[0])
        raise ValueError(f"unknown arm {arr.reshape(-1).tolist()[i]!r} in row {i}; arms: {', '.join(bandit.arms)}")
    return out


# ---------------------------------------------------------------------------------------- save / load


def save_bandit(bandit: Bandit, folder: str | Path, name: str = "bandit") -> Path:
    """Write NAME.npz (statistics) then NAME.json (config, arms, RNG state) into folder, each atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = bandit.state_arrays()

    def savez(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a path
            np.savez(f, **arrays)

    atomic_write(folder / f"{name}.npz", savez)
    meta = {"format": STATE_FORMAT, "config": asdict(bandit.config), "arms": list(bandit.arms),
            "dim": bandit.dim, "updates": bandit.updates, "rng_state": bandit.rng.bit_generator.state,
            "arrays": sorted(arrays), "propensity_samples": bandit.propensity_samples}
    atomic_write_text(folder / f"{name}.json", json.dumps(meta, indent=1) + "\n")
    return folder / f"{name}.json"


def load_bandit(folder: str | Path, name: str = "bandit") -> Bandit:
    """The bandit save_bandit wrote: same statistics, config, arms and RNG state (so the same future draws)."""
    folder = Path(folder)
    path = folder / f"{name}.json"
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no saved bandit here") from None
    if meta.get("format") != STATE_FORMAT:
        raise ValueError(f"{path}: format {meta.get('format')!r}, this code reads {STATE_FORMAT}")
    try:
        bandit = BanditConfig(**meta["config"]).create(meta["arms"], meta["dim"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: bad saved config ({e})") from None
    with np.load(folder / f"{name}.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    expected = bandit.state_arrays()
    for k, v in expected.items():
        if k not in arrays or arrays[k].shape != v.shape:
            raise ValueError(f"{folder / (name + '.npz')}: array {k!r} missing or of the wrong shape "
                             f"(want {v.shape})")
    bandit.set_state(arrays)
    bandit.rng.bit_generator.state = meta["rng_state"]
    bandit.updates = int(meta["updates"])
    return bandit
