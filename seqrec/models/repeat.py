"""The repeat-aware mixture (`[head] copy = true`): a learned gate mixes a copy distribution over the window's
items with the catalogue's softmax, so that showing an item of the session again is one attention away.

p(i | window) = g * copy(i) + (1 - g) * softmax(catalogue scores)_i, with
- copy(i) = the attention mass of the window positions holding item i: attention logits
  (W_q state) . (E[x_t] + R[r_t]) / sqrt(D) + b[r_t], over the real items of the window (padding and OOV never
  copied), where r_t is the position's recency (0 for the newest item, counted from the right as the windows are
  left-padded, so the number of pads never matters) and E is the encoder's input item table;
- g = sigmoid(w . state + c), from the encoder's state; g = 0 for a window with nothing to copy.
The state windows of prepared transitions hold item ids only (no event types), so the attention knows each
position's item and recency; an event type per position would be one more embedding added to the keys.
Scores are log p (`mix_all`, `mix_at`): they rank as the mixture does. Inspired by RepeatNet (Ren et al. 2019);
written for this package.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from seqrec.datasets.schema import FIRST_ITEM


@dataclass(frozen=True)
class CopyState:
    """One window's copy attention and gate: log attention (B, T) over positions, log g and log (1 - g) (B,)."""

    window: torch.Tensor     # (B, T) item ids
    copyable: torch.Tensor   # (B, T) bool: a real item (not padding, not OOV)
    log_attn: torch.Tensor   # (B, T) log attention; -inf where not copyable
    log_gate: torch.Tensor   # (B,) log g; -inf where nothing is copyable
    log_rest: torch.Tensor   # (B,) log (1 - g); 0 where nothing is copyable


class CopyMixer(nn.Module):
    """The copy attention over a window's positions and the gate that mixes it with the catalogue."""

    def __init__(self, dim: int, max_len: int) -> None:
        super().__init__()
        self.query = nn.Linear(dim, dim)           # state -> attention query
        self.recency = nn.Embedding(max_len, dim)  # R: added to the item's key, by recency
        nn.init.zeros_(self.recency.weight)        # start from attention by item alone
        self.recency_bias = nn.Parameter(torch.zeros(max_len))  # b: a logit per recency
        self.gate = nn.Linear(dim, 1)              # state -> logit of g
        nn.init.zeros_(self.gate.bias)
        self.scale = dim**-0.5

    def attend(self, state: torch.Tensor, window: torch.Tensor, items: torch.Tensor) -> CopyState:
        """(B, D) states, (B, T) windows, (I, D) item table -> the window's CopyState."""
        window = window.long()
        t = window.shape[1]
        recency = torch.arange(t - 1, -1, -1, device=window.device)  # (T,) newest = 0
        keys = F.embedding(window, items) + self.recency(recency)  # (B, T, D)
        logits = torch.einsum("btd,bd->bt", keys, self.query(state)) * self.scale + self.recency_bias[recency]
        copyable = window >= FIRST_ITEM  # (B, T)
        some = copyable.any(dim=1)  # (B,)
        # rows with nothing to copy attend uniformly (finite, never used: their gate is 0)
        logits = torch.where(copyable | ~some.unsqueeze(1), logits, -torch.inf)  # (B, T)
        log_attn = torch.where(copyable, torch.log_softmax(logits, dim=1), -torch.inf)  # (B, T)
        gate = self.gate(state).squeeze(1)  # (B,)
        log_gate = torch.where(some, F.logsigmoid(gate), -torch.inf)  # (B,)
        log_rest = torch.where(some, F.logsigmoid(-gate), 0.0)  # (B,)
        return CopyState(window, copyable, log_attn, log_gate, log_rest)


def log_mass(cs: CopyState, ids: torch.Tensor) -> torch.Tensor:
    """(B, K) ids -> (B, K) log of the copy attention on the positions holding each id; -inf where none does."""
    match = (cs.window.unsqueeze(1) == ids.unsqueeze(2)) & cs.copyable.unsqueeze(1)  # (B, K, T)
    found = match.any(dim=2)  # (B, K)
    # rows of all -inf would give NaN gradients through logsumexp: such rows sum zeros, then are masked out
    terms = torch.where(match, cs.log_attn.unsqueeze(1), -torch.inf)  # (B, K, T)
    terms = torch.where(found.unsqueeze(2), terms, 0.0)
    return torch.where(found, torch.logsumexp(terms, dim=2), -torch.inf)  # (B, K)


def mass(cs: CopyState, ids: torch.Tensor) -> torch.Tensor:
    """(B, K) ids -> (B, K) copy attention on each id (0 where it is not in the window)."""
    return log_mass(cs, ids).exp()


def mix_at(cs: CopyState, catalogue_logp: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(B, K) catalogue log-probabilities of items `ids` (B, K) -> (B, K) log-probabilities under the mixture."""
    return torch.logaddexp(catalogue_logp + cs.log_rest.unsqueeze(1),
                           cs.log_gate.unsqueeze(1) + log_mass(cs, ids))


def mix_all(cs: CopyState, logits: torch.Tensor) -> torch.Tensor:
    """(B, I) catalogue scores -> (B, I) log-probabilities under the mixture (every item; window items mixed).
    For ranking: an item at two positions is written twice (the same value), so no gradient should flow through it;
    training uses `mix_at` at the target."""
    logp = logits - torch.logsumexp(logits, dim=1, keepdim=True)  # (B, I)
    out = logp + cs.log_rest.unsqueeze(1)  # (B, I) the catalogue's share
    ids = cs.window  # (B, T): every position's item gets its mixed value (pads keep theirs)
    mixed = mix_at(cs, logp.gather(1, ids), ids)  # (B, T)
    return out.scatter(1, ids, torch.where(cs.copyable, mixed, out.gather(1, ids)))


def mix_candidates(cs: CopyState, logits: torch.Tensor, at: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(B, I) catalogue scores and their (B, K) values `at` items `ids` -> (B, K) mixture log-probabilities."""
    return mix_at(cs, at - torch.logsumexp(logits, dim=1, keepdim=True), ids)
