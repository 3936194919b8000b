"""The TD and actor losses of SQN, SAC, SNQN and SA2C (Xin et al. 2020, 2022) as plain tensor functions.

Every function takes tensors already on the right device and returns a scalar loss (or a target); the
learner (rl/qlearning.py) decides which network learns in each batch and computes the double-Q value of
the next state (`double_q_value`: two copies trained alternately, each valued by the other).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

VARIANTS = ("ce", "sqn", "sac", "snqn", "sa2c")


@dataclass(frozen=True)
class HeadConfig:
    """Which learning signal trains the shared encoder, and its hyper-parameters (papers' defaults)."""

    variant: str = "ce"             # ce (plain supervised) | sqn | sac | snqn | sa2c
    gamma: float = 0.5              # discount
    negatives: int = 10             # SNQN / SA2C: uniformly sampled negative actions per positive
    warmup_steps: int = 0           # SAC: plain CE before weighting by Q; SA2C: SNQN pre-training steps
    advantage_min: float = 0.0      # SA2C: clip of the advantage (the released code clips to [0, 10])
    advantage_max: float = 10.0
    td_weight: float = 1.0          # weight of the TD loss next to the supervised loss

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if not 0.0 <= self.gamma < 1.0:
            raise ValueError(f"gamma must be in [0, 1), got {self.gamma}")
        if self.negatives < 1:
            raise ValueError(f"negatives must be >= 1, got {self.negatives}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.advantage_min > self.advantage_max:
            raise ValueError("advantage_min must not exceed advantage_max")
        if self.td_weight < 0:
            raise ValueError(f"td_weight must be >= 0, got {self.td_weight}")


def td_target(reward: torch.Tensor, done: torch.Tensor, future: torch.Tensor, gamma: float) -> torch.Tensor:
    """r + gamma * future, with no future value at the end of a session. All (B,); detached."""
    return (reward + gamma * (1.0 - done.float()) * future).detach()


def td_loss(q_taken: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared TD error over the batch (and negatives, if q_taken is (B, N))."""
    return F.mse_loss(q_taken, target.detach())


def advantage(q_pos: torch.Tensor, q_neg: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """SA2C: Q(s, a+) minus the mean Q over the positive and its negatives, clipped, detached. (B,)"""
    mean = torch.cat([q_pos.unsqueeze(1), q_neg], dim=1).mean(dim=1)  # (B,)
    return (q_pos - mean).clamp(low, high).detach()


def weighted_ce(logits: torch.Tensor, action: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy over the whole catalogue, optionally weighted per sample (SAC: by Q, SA2C: by A)."""
    ce = F.cross_entropy(logits, action, reduction="none")  # (B,)
    return (ce * weight).mean() if weight is not None else ce.mean()
