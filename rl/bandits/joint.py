"""TEMPORARY stand-in (replaced by the decision-layer branch): greedy / epsilon-greedy joint probabilities."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class JointConfig:
    kind: str = "epsilon_greedy"
    epsilon: float = 0.1
    temperature: float = 0.05
    alpha: float = 1.0
    samples: int = 1000
    seed: int = 0


def joint_probabilities(values, allowed, cfg, spread=None, rng=None):
    b = len(values)
    flat = np.where(allowed, values, -np.inf).reshape(b, -1)
    best = np.argmax(flat, axis=1)
    pi = np.zeros_like(flat)
    pi[np.arange(b), best] = 1.0
    eps = cfg.epsilon if cfg.kind == "epsilon_greedy" else 0.0
    uni = allowed.reshape(b, -1) / allowed.reshape(b, -1).sum(axis=1, keepdims=True)
    return ((1 - eps) * pi + eps * uni).reshape(values.shape)
