"""Which d3rlpy algorithms a run may name, and their own hyper-parameters (no d3rlpy import here).

A run picks `algorithm = "d3rlpy.dqn"` (or double_dqn, discrete_cql, discrete_bcq) in its TOML file; the
encoder, batch size, learning rate and discount are the run's own [encoder], train.batch_size, train.lr
and head.gamma, so a d3rlpy row and an SQN row differ only in the algorithm. The defaults below are ours,
not d3rlpy's: d3rlpy's discrete defaults (batch 32, learning rate 6.25e-5, target copy every 8,000 steps)
suit Atari runs of millions of steps, and in a run of a few thousand steps the target would never move.
"""

from __future__ import annotations

from dataclasses import dataclass

D3RLPY_ALGORITHMS = ("d3rlpy.dqn", "d3rlpy.double_dqn", "d3rlpy.discrete_cql", "d3rlpy.discrete_bcq")


@dataclass(frozen=True)
class D3rlpyConfig:
    """The [d3rlpy] table: what only d3rlpy's algorithms use."""

    target_update_interval: int = 200  # steps between hard copies of the Q network to its target
    n_critics: int = 1                 # Q networks in the ensemble (ranked by their mean)
    alpha: float = 1.0                 # discrete CQL: weight of the conservative (logsumexp) term
    action_flexibility: float = 0.3    # discrete BCQ: an action needs imitator prob >= this x the best one's
    beta: float = 0.5                  # discrete BCQ: penalty on the imitator's logits

    def __post_init__(self) -> None:
        for name in ("target_update_interval", "n_critics"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.alpha < 0 or self.beta < 0:
            raise ValueError(f"alpha and beta must be >= 0, got {self.alpha}, {self.beta}")
        if not 0.0 < self.action_flexibility < 1.0:
            raise ValueError(f"action_flexibility must be in (0, 1), got {self.action_flexibility}")
