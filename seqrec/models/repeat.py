"""The repeat-aware mixture (`[head] copy = true`): a learned gate mixes a copy distribution over the window's
items with the catalogue's softmax, so that showing an item of the session again is one attention away.

p(i | window) = g * copy(i) + (1 - g) * softmax(catalogue scores)_i, with
- copy(i) = the attention mass of the window positions holding item i: attention logits
  (W_q state) . (E[x_t] + R[r_t]) / sqrt(D) + b[r_t], over the real items of the window (padding and OOV never
  copied), where r_t is the position's recency (0 for the newest item, counted from the right as the windows are
  left-padded, so the number of pads never matters) and E is the encoder's input item table;
- g = sigmoid(w . state + c), from the encoder's state; g = 0 for a window with nothing to copy.
With `[encoder] events` (event_types E > 0) the keys also add the position's event-type row V[e_t] and the
logits a bias a[e_t] per event type (both zero at first), so the attention can prefer a carted or liked item:
logits (W_q state) . (E[x_t] + R[r_t] + V[e_t]) / sqrt(D) + b[r_t] + a[e_t].
With `[head] copy_category` (and `[encoder] categories`) a third component explores within the window's
categories: p = g copy + (1 - g)(h cat + (1 - h) softmax), cat(i) = w(c(i)) p(i | c(i)), where w is the copy
attention summed by the positions' categories (renormalised over items that have one) and p(i | c) the training
targets' popularity within the category (add-one smoothed); h = sigmoid(v . state + e). An item never a target is
then still proposed when the customer browses its category (on sparse logs most next items were never targets).
With `[head] copy_calibrate` the two gate logits get offsets (s_g, s_h), chosen after training on the validation
split (seqrec/training/calibrate.py) and kept in the checkpoint: the gates are fitted on training targets, which the
catalogue's softmax has memorised, so in-sample they overrate its share.
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
    log_rest: torch.Tensor   # (B,) log of the catalogue softmax's share: (1 - g)(1 - h); 0 where nothing is copyable
    log_cat_gate: torch.Tensor | None = None  # (B,) log (1 - g) h: the category component's share (copy_category)
    log_cat: torch.Tensor | None = None       # (B, C) log w: the window's category weights
    codes: torch.Tensor | None = None         # (I,) each item's category code (0: none)
    log_within: torch.Tensor | None = None    # (I,) log p(i | c(i)); -inf for items without a category


class CopyMixer(nn.Module):
    """The copy attention over a window's positions and the gate that mixes it with the catalogue."""

    def __init__(self, dim: int, max_len: int, num_items: int | None = None, event_types: int = 0,
                 calibrated: bool = False) -> None:
        """`num_items` I: with the category component (copy_category); `event_types` E: with event types;
        `calibrated`: with the gates' offsets (copy_calibrate)."""
        super().__init__()
        self.query = nn.Linear(dim, dim)           # state -> attention query
        self.recency = nn.Embedding(max_len, dim)  # R: added to the item's key, by recency
        nn.init.zeros_(self.recency.weight)        # start from attention by item alone
        self.recency_bias = nn.Parameter(torch.zeros(max_len))  # b: a logit per recency
        self.gate = nn.Linear(dim, 1)              # state -> logit of g
        nn.init.zeros_(self.gate.bias)
        self.scale = dim**-0.5
        self.cat_gate = None
        if num_items is not None:  # created only with the option: other state dicts stay as they were
            self.cat_gate = nn.Linear(dim, 1)      # state -> logit of h
            nn.init.zeros_(self.cat_gate.bias)
            self.register_buffer("log_within", torch.full((num_items,), -torch.inf))  # (I,) set_within
        # (s_g, s_h): set_gate_shift; created only with the option, so other state dicts stay as they were
        self.register_buffer("gate_shift", torch.zeros(2) if calibrated else None)
        self.event_key = self.event_bias = None
        if event_types:  # created only with events: other state dicts stay as they were
            self.event_key = nn.Embedding(event_types, dim, padding_idx=0)  # V: added to the key, by event type
            nn.init.zeros_(self.event_key.weight)
            self.event_bias = nn.Parameter(torch.zeros(event_types))  # a: a logit per event type

    def set_gate_shift(self, copy: float, category: float) -> None:
        """The offsets added to the logits of g and h (copy_calibrate)."""
        if self.gate_shift is None:
            raise ValueError("this mixture has no gate offsets ([head] copy_calibrate = false)")
        self.gate_shift.copy_(torch.tensor([float(copy), float(category)]))

    def set_within(self, counts: torch.Tensor, codes: torch.Tensor) -> None:
        """(I,) training-target counts and (I,) category codes -> log p(i | c(i)), add-one smoothed."""
        c = counts.double().clamp(min=0) + 1.0  # (I,)
        has = codes > 0
        per_cat = torch.zeros(int(codes.max()) + 1, dtype=torch.float64).scatter_add(0, codes, c * has)  # (C,)
        within = torch.where(has, c / per_cat[codes].clamp(min=1.0), 0.0)
        self.log_within.copy_(torch.where(has, within.log(), -torch.inf).float())

    def attend(self, state: torch.Tensor, window: torch.Tensor, rows: torch.Tensor,
               codes: torch.Tensor | None = None, categories: int = 0,
               events: torch.Tensor | None = None) -> CopyState:
        """(B, D) states, (B, T) windows and their (B, T, D) rows of the encoder's input item table (gathered for
        the window alone: no catalogue-wide table) -> the window's CopyState; with the category component, (I,)
        category codes and their count C; with event types, the (B, T) codes + 1."""
        window = window.long()
        t = window.shape[1]
        recency = torch.arange(t - 1, -1, -1, device=window.device)  # (T,) newest = 0
        keys = rows + self.recency(recency)  # (B, T, D)
        if self.event_key is not None:
            if events is None:
                raise ValueError("this copy attention has event types: attend needs the window's (B, T) events")
            events = events.long()  # (B, T)
            keys = keys + self.event_key(events)  # (B, T, D)
        logits = torch.einsum("btd,bd->bt", keys, self.query(state)) * self.scale + self.recency_bias[recency]
        if self.event_bias is not None:
            logits = logits + self.event_bias[events]  # (B, T)
        copyable = window >= FIRST_ITEM  # (B, T)
        some = copyable.any(dim=1)  # (B,)
        # rows with nothing to copy attend uniformly (finite, never used: their gate is 0)
        logits = torch.where(copyable | ~some.unsqueeze(1), logits, -torch.inf)  # (B, T)
        log_attn = torch.where(copyable, torch.log_softmax(logits, dim=1), -torch.inf)  # (B, T)
        gate = self.gate(state).squeeze(1)  # (B,)
        if self.gate_shift is not None:
            gate = gate + self.gate_shift[0]
        log_gate = torch.where(some, F.logsigmoid(gate), -torch.inf)  # (B,)
        log_rest = torch.where(some, F.logsigmoid(-gate), 0.0)  # (B,)
        if self.cat_gate is None:
            return CopyState(window, copyable, log_attn, log_gate, log_rest)
        cats = codes[window]  # (B, T)
        attn = log_attn.exp() * (cats > 0)  # (B, T) attention on positions whose item has a category
        w = torch.zeros(window.shape[0], categories, dtype=attn.dtype, device=attn.device).scatter_add(1, cats, attn)
        total = w.sum(dim=1, keepdim=True)  # (B, 1)
        has = total.squeeze(1) > 0  # (B,)
        # log of the renormalised weights; clamped inside the log so that empty categories pass no NaN gradient
        log_cat = torch.where(w > 0, (w / total.clamp(min=1e-30)).clamp(min=1e-30).log(), -torch.inf)  # (B, C)
        h = self.cat_gate(state).squeeze(1)  # (B,)
        if self.gate_shift is not None:
            h = h + self.gate_shift[1]
        log_cat_gate = torch.where(has, log_rest + F.logsigmoid(h), -torch.inf)  # (B,)
        log_rest = torch.where(has, log_rest + F.logsigmoid(-h), log_rest)  # (B,)
        return CopyState(window, copyable, log_attn, log_gate, log_rest, log_cat_gate, log_cat, codes,
                         self.log_within)


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
    out = torch.logaddexp(catalogue_logp + cs.log_rest.unsqueeze(1), cs.log_gate.unsqueeze(1) + log_mass(cs, ids))
    if cs.log_cat is None:
        return out
    explore = cs.log_cat_gate.unsqueeze(1) + cs.log_cat.gather(1, cs.codes[ids]) + cs.log_within[ids]  # (B, K)
    return torch.logaddexp(out, explore)


def mix_all(cs: CopyState, logits: torch.Tensor) -> torch.Tensor:
    """(B, I) catalogue scores -> (B, I) log-probabilities under the mixture (every item; window items mixed).
    For ranking: an item at two positions is written twice (the same value), so no gradient should flow through it;
    training uses `mix_at` at the target."""
    logp = logits - torch.logsumexp(logits, dim=1, keepdim=True)  # (B, I)
    out = logp + cs.log_rest.unsqueeze(1)  # (B, I) the catalogue's share
    if cs.log_cat is not None:  # and the category component's: (B, I) w(c(i)) p(i | c(i))
        explore = cs.log_cat.index_select(1, cs.codes) + cs.log_within.unsqueeze(0)
        out = torch.logaddexp(out, cs.log_cat_gate.unsqueeze(1) + explore)
    ids = cs.window  # (B, T): every position's item gets its mixed value (pads keep theirs)
    mixed = mix_at(cs, logp.gather(1, ids), ids)  # (B, T)
    return out.scatter(1, ids, torch.where(cs.copyable, mixed, out.gather(1, ids)))


def mix_candidates(cs: CopyState, logits: torch.Tensor, at: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(B, I) catalogue scores and their (B, K) values `at` items `ids` -> (B, K) mixture log-probabilities."""
    return mix_at(cs, at - torch.logsumexp(logits, dim=1, keepdim=True), ids)
