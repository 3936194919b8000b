"""The TD and actor losses of SQN, SAC, SNQN and SA2C (Xin et al. 2020, 2022) as plain tensor functions.

Every function takes tensors already on the right device and returns a scalar loss (or a target); the
learner (rl/qlearning.py) decides which network learns in each batch and computes the double-Q value of
the next state (`double_q_value`: two copies trained alternately, each valued by the other).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from seqrec.models.catalogue import padded_scores

from .recipe import check_recipe

VARIANTS = ("ce", "sqn", "sac", "snqn", "sa2c")
ACTOR_WEIGHTS = ("raw", "mean")


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
    actor_weights: str = "raw"      # SAC / SA2C: "raw" (the papers: CE x Q or x advantage as they are) or "mean"
    # (clipped at 0, then divided by their batch mean: the same relative weights, but the CE gradient keeps
    # its scale; raw Q values near 0.1 early in training cut it tenfold and stall the supervised head)
    # the supervised head's recipe (rl/qlearning/supervised.py; defaults: the papers' full cross-entropy)
    loss: str = "ce"                # ce | sampled (softmax, log-Q corrected) | gbce (gSASRec)
    loss_negatives: int = 256       # sampled / gbce: negatives per positive
    sampler: str = "uniform"        # sampled: uniform over real items | popularity (training-target counts)
    gbce_t: float = 0.75            # gbce: calibration t in [0, 1]
    label_smoothing: float = 0.0    # ce / sampled: weight of the uniform target
    copy: bool = False              # the repeat-aware mixture (seqrec/models/repeat.py) scores and trains
    copy_aux: float = 0.0           # copy: weight of the catalogue's own loss next to the mixture's
    copy_category: bool = False     # copy: a third component, popular items of the window's categories
    copy_calibrate: bool = False    # copy_category: after training, the gates' offsets chosen on validation

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
        if self.actor_weights not in ACTOR_WEIGHTS:
            raise ValueError(f"actor_weights must be one of {', '.join(ACTOR_WEIGHTS)}, got {self.actor_weights!r}")
        check_recipe(self.loss, self.loss_negatives, self.sampler, self.gbce_t, self.label_smoothing, self.copy,
                     self.copy_aux, self.copy_category, self.copy_calibrate)


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


def actor_weights(weight: torch.Tensor, mode: str) -> torch.Tensor:
    """SAC's Q or SA2C's advantage as per-sample CE weights (B,): as they are ("raw"), or clipped at 0 and
    divided by their batch mean ("mean"; all zero stays all zero). Detached."""
    weight = weight.detach()
    if mode == "raw":
        return weight
    weight = weight.clamp(min=0.0)
    mean = weight.mean()
    return weight / mean if mean > 0 else weight


class _CatalogueCE(torch.autograd.Function):
    """Per-sample cross-entropy of softmax(state @ table.T) at `action`, fused for the CPU's memory bandwidth.

    The generic path (logits, log_softmax, nll_loss and their backwards) makes several passes over (B, I)
    tensors plus a (B, I) zero fill. Here forward writes the logits into a row-padded buffer (faster BLAS,
    seqrec/catalogue.py) and turns them into probabilities in place; since d ce / d logits = probs - onehot
    is known then, backward edits the probabilities in place and runs the two products, scaling the small
    (B, D) sides by the incoming per-sample gradient instead of the (B, I) one.
    """

    @staticmethod
    def forward(ctx, state: torch.Tensor, table: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        buf = padded_scores(state, table)  # (B, I') logits, padding columns -inf
        _softmax_(buf)  # (B, I') probabilities, in place; the padding's are 0
        probs = buf[:, :table.shape[0]]  # (B, I)
        rows = torch.arange(probs.shape[0], device=probs.device)
        ce = -probs[rows, action].log()  # (B,)
        lost = ~torch.isfinite(ce)  # a probability that underflowed (logit gap > ~87): exact log-sum-exp instead
        if lost.any():
            logits = state[lost] @ table.T  # (b, I), a few rows
            ce[lost] = torch.logsumexp(logits, dim=1) - logits.gather(1, action[lost].unsqueeze(1)).squeeze(1)
        ctx.save_for_backward(state, table, action)
        ctx.probs = probs
        return ce

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        state, table, action = ctx.saved_tensors
        g, ctx.probs = ctx.probs, None  # (B, I), edited in place: this graph runs backward once
        if g is None:
            raise RuntimeError("catalogue_ce: backward ran twice over the same graph")
        g[torch.arange(g.shape[0], device=g.device), action] -= 1.0  # d ce / d logits = probs - onehot
        grad = grad.unsqueeze(1)  # (B, 1)
        grad_state = (g @ table) * grad if ctx.needs_input_grad[0] else None  # (B, D)
        grad_table = g.T @ (state * grad) if ctx.needs_input_grad[1] else None  # (I, D)
        return grad_state, grad_table, None


def _softmax_(x: torch.Tensor) -> None:
    """Row softmax of a contiguous (B, I) `x` in place: no second (B, I) buffer to allocate and fault in."""
    if not x.is_contiguous():  # ATen's in-place variant assumes contiguous rows
        x.copy_(torch.softmax(x, dim=1))
        return
    try:
        torch._softmax(x, 1, False, out=x)  # ATen's out= variant: one read and one write per row
    except (AttributeError, RuntimeError, TypeError):  # pragma: no cover - only if ATen drops the variant
        x.copy_(torch.softmax(x, dim=1))


def catalogue_ce(state: torch.Tensor, table: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """(B, D) states, (I, D) item table, (B,) targets -> (B,) cross-entropy over the whole catalogue.

    Fused on full precision (see `_CatalogueCE`); under autocast (mixed precision on CUDA) the generic path.
    """
    if torch.is_autocast_enabled(state.device.type):
        return F.cross_entropy(state @ table.T, action, reduction="none")
    return _CatalogueCE.apply(state, table, action)


def weighted_ce(state: torch.Tensor, table: torch.Tensor, action: torch.Tensor,
                weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy over the whole catalogue, optionally weighted per sample (SAC: by Q, SA2C: by A)."""
    ce = catalogue_ce(state, table, action)  # (B,)
    return (ce * weight).mean() if weight is not None else ce.mean()
