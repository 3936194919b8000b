"""Actions d3rlpy's discrete algorithms never choose: padding, OOV and what a catalogue forbids.

d3rlpy's targets take the arg-max of Q over every action (DQN over the target network's Q, Double DQN, CQL and
BCQ over the online one's), CQL's conservative term a logsumexp over every action, and d3rlpy has no action
mask. Its public seam for the Q function is the Q-function factory: `MaskedQFunctionFactory` builds d3rlpy's own
mean Q function (same modules, same state dict) with a forwarder whose Q vectors put the masked actions below all
others, and is saved in d3rlpy's config, so a loaded algorithm masks the same actions. BCQ's choice also passes
through its imitator, which `mask_imitator` keeps from ever admitting a masked action.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from seqrec.datasets.schema import FIRST_ITEM
from torch import nn
from torch.distributions import Categorical

from .quiet import d3rlpy

Q_FUNCTION_TYPE = "seqrec_masked_mean"

# A masked action's Q value sits MASK_GAP below the state's lowest allowed one: out of every arg-max, e^-50 of the
# mass in CQL's logsumexp, and close enough that BCQ's min-shifted values keep float32 precision (a constant like
# -1e9 would not: BCQ subtracts the row's minimum). BCQ's imitator puts a masked action IMITATOR_GAP below the
# threshold `action_flexibility` sets, so it never passes the filter and takes no real probability mass.
MASK_GAP = 50.0
IMITATOR_GAP = 10.0


def mask_q(q: torch.Tensor, blocked: torch.Tensor) -> torch.Tensor:
    """(B, I) Q values with the `blocked` (I,) actions set MASK_GAP below the row's lowest unblocked value
    (detached: no gradient reaches them)."""
    blocked = blocked.to(q.device)
    floor = q.detach().masked_fill(blocked, torch.inf).amin(dim=1, keepdim=True) - MASK_GAP  # (B, 1)
    return torch.where(blocked, floor, q)  # (B, I)


class MaskedQForwarder(d3rlpy.models.torch.DiscreteMeanQFunctionForwarder):
    """d3rlpy's mean-Q forwarder whose Q vectors (expected Q, and the target with no action given) put the blocked
    actions below every other; the value of a given action and the TD error are d3rlpy's own."""

    def __init__(self, q_func: Any, action_size: int, masked: list[int]) -> None:
        super().__init__(q_func, action_size)
        self.blocked = torch.zeros(action_size, dtype=torch.bool)  # (I,)
        self.blocked[masked] = True

    def compute_expected_q(self, x: Any) -> torch.Tensor:
        return mask_q(super().compute_expected_q(x), self.blocked)  # (B, I)

    def compute_target(self, x: Any, action: torch.Tensor | None = None) -> torch.Tensor:
        if action is None:
            return mask_q(super().compute_target(x), self.blocked)  # (B, I)
        return super().compute_target(x, action)  # (B, 1)


@dataclass()
class MaskedQFunctionFactory(d3rlpy.models.q_functions.MeanQFunctionFactory):
    """d3rlpy's mean Q function (same modules and weights) with a `MaskedQForwarder`: `masked` lists the action
    ids never to choose (padding and OOV, and those a catalogue forbids). Saved in d3rlpy's config."""

    masked: list[int] = field(default_factory=lambda: list(range(FIRST_ITEM)))

    def create_discrete(self, encoder: Any, hidden_size: int, action_size: int) -> tuple[Any, MaskedQForwarder]:
        q_func = d3rlpy.models.torch.DiscreteMeanQFunction(encoder, hidden_size, action_size)
        return q_func, MaskedQForwarder(q_func, action_size, self.masked)

    @staticmethod
    def get_type() -> str:
        return Q_FUNCTION_TYPE


def blocked_actions(algo: Any) -> torch.Tensor | None:
    """(I,) bool: the actions a built algorithm never chooses (its MaskedQFunctionFactory's), None if unmasked."""
    factory = algo.config.q_func_factory
    if not isinstance(factory, MaskedQFunctionFactory):
        return None
    blocked = torch.zeros(algo.impl.action_size, dtype=torch.bool)
    blocked[factory.masked] = True
    return blocked


def mask_imitator(algo: Any) -> None:
    """Discrete BCQ: its imitator's log-probabilities of the blocked actions set IMITATOR_GAP below the
    threshold of its filter, so BCQ's choice (target and predict) never passes them. No-op for the others."""
    blocked = blocked_actions(algo)
    if not isinstance(algo, d3rlpy.algos.DiscreteBCQ) or blocked is None:
        return
    gap = IMITATOR_GAP - math.log(algo.config.action_flexibility)

    def hook(module: nn.Module, inputs: Any, dist: Categorical) -> Categorical:
        logp = dist.logits  # (B, I) normalised
        low = logp.detach().masked_fill(blocked.to(logp.device), -torch.inf).amax(dim=1, keepdim=True) - gap
        return Categorical(logits=torch.where(blocked.to(logp.device), low, logp))

    algo.impl.modules.imitator.register_forward_hook(hook)
