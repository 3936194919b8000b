"""The actions a Q target may take: real items only (never padding or out-of-vocabulary), and of those only the
allowed ones where a catalogue restricts them; and the arg-max of Q over just those actions.

The Bellman target's max assumes the recommender could have taken the action: the padding and OOV rows of the
Q head are never trained by a logged action, so left in the max they can win it (on an 11-product catalogue the
never-trained padding row did, in every state).
"""

from __future__ import annotations

import torch
from seqrec.datasets.schema import FIRST_ITEM

from seqrec.models.catalogue import scores, scores_argmax


def action_mask(num_items: int, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """(I,) or (B, I) bool: True where an action may be taken. Always False below FIRST_ITEM (padding, OOV);
    `allowed` (I,) or (B, I) bool narrows it further (None: every real item). Raises if a row allows nothing."""
    real = torch.arange(num_items) >= FIRST_ITEM  # (I,)
    if allowed is None:
        if not real.any():
            raise ValueError(f"a catalogue of {num_items} ids has no real item (the first is id {FIRST_ITEM})")
        return real
    if allowed.dtype != torch.bool or allowed.dim() not in (1, 2) or allowed.shape[-1] != num_items:
        raise ValueError(f"allowed actions must be a bool mask of shape (I,) or (B, I) with I = {num_items}, "
                         f"got {allowed.dtype} {tuple(allowed.shape)}")
    mask = allowed & real.to(allowed.device)  # (I,) or (B, I)
    empty = ~mask.any(dim=-1)  # () or (B,)
    if empty.any():
        where = "" if mask.dim() == 1 else f" (row {int(empty.nonzero()[0, 0])})"
        raise ValueError(f"the allowed-action mask allows no real item{where}: a Q target needs at least one")
    return mask


def masked_argmax(state: torch.Tensor, table: torch.Tensor, bias: torch.Tensor,
                  allowed: torch.Tensor | None = None) -> torch.Tensor:
    """(B, D) states, (I, D) Q table, (I,) bias, optional (I,) or (B, I) bool mask -> (B,) arg-max of
    state @ table.T + bias over the actions `action_mask` allows, the first one on ties.

    Every real item (None): the blockwise `scores_argmax` over the table's rows from FIRST_ITEM on. One mask for
    all states (I,): the same, with -inf added to the bias of the excluded actions. A mask per state (B, I): the
    (B, I) Q matrix, excluded actions set to -inf, then its arg-max."""
    if allowed is None:
        return scores_argmax(state, table[FIRST_ITEM:], bias[FIRST_ITEM:]) + FIRST_ITEM  # (B,)
    mask = action_mask(table.shape[0], allowed)
    if mask.dim() == 1:
        return scores_argmax(state, table, bias.masked_fill(~mask, -torch.inf))  # (B,)
    q = scores(state, table, bias).masked_fill(~mask, -torch.inf)  # (B, I)
    return q.argmax(dim=1)  # (B,)
