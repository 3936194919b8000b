"""The supervised head's training recipes beyond full cross-entropy (`[head] loss`, `label_smoothing`, `copy`).

- "ce" (the default, the papers'): cross-entropy over the whole catalogue (losses.catalogue_ce, fused).
- "sampled": sampled softmax over the positive and `loss_negatives` sampled items, each logit corrected by
  -log Q(item) of the sampler (log-Q correction, so that popularity sampling does not push popular items down);
  a negative equal to the positive is left out.
- "gbce": gSASRec's generalised binary cross-entropy (Petrov & Macdonald, RecSys 2023) over uniform negatives:
  -beta log sigmoid(s+) - sum log(1 - sigmoid(s-)), beta = alpha (t (1 - 1 / alpha) + 1 / alpha), alpha the
  sampling rate negatives / (real items - 1); t = 0 is plain BCE, t = 1 calibrates fully.
- label smoothing eps (ce, sampled): (1 - eps) NLL + eps times the mean NLL of a uniform target, over the real
  items (ce; without the (B, I) matrix: mean_i -log p_i = logsumexp - mean_i logit_i) or over the sampled set.
- copy (ce, sampled): the NLL is the repeat-aware mixture's, -log(g copy(a) + (1 - g) p(a)) (seqrec.models.repeat),
  plus copy_aux times the catalogue's own NLL -log p(a) (the catalogue then learns at full speed whatever the
  gate; the pure mixture starves it on repeat targets); label smoothing applies to the catalogue part.
Every function returns per-sample losses (B,), which the learner weights (SAC, SA2C) and averages.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from seqrec.datasets.schema import FIRST_ITEM

from seqrec.models.catalogue import gathered_dot
from seqrec.models.repeat import CopyState, mix_at

from .losses import HeadConfig, catalogue_ce


def gbce_beta(t: float, negatives: int, num_items: int) -> float:
    """gSASRec's beta for calibration t with `negatives` of the catalogue's real items (num_items: with pad, OOV)."""
    alpha = negatives / (num_items - FIRST_ITEM - 1)
    return alpha * (t * (1.0 - 1.0 / alpha) + 1.0 / alpha)


def gbce(pos: torch.Tensor, neg: torch.Tensor, beta: float) -> torch.Tensor:
    """(B,) positive and (B, N) negative scores -> (B,) -beta log sigmoid(pos) - sum log(1 - sigmoid(neg))."""
    return beta * F.softplus(-pos) + F.softplus(neg).sum(dim=1)


def sampled_log_softmax(pos: torch.Tensor, neg: torch.Tensor, neg_ids: torch.Tensor, action: torch.Tensor,
                        log_q: torch.Tensor | None) -> torch.Tensor:
    """(B,) positive and (B, N) negative scores -> (B, 1 + N) log-softmax of the log-Q-corrected logits (the
    positive first; a negative equal to the positive at -inf); log_q (I,) None: uniform, no correction needed."""
    if log_q is not None:
        pos, neg = pos - log_q[action], neg - log_q[neg_ids]
    neg = neg.masked_fill(neg_ids == action.unsqueeze(1), -torch.inf)  # an accidental hit is no negative
    return torch.log_softmax(torch.cat([pos.unsqueeze(1), neg], dim=1), dim=1)  # (B, 1 + N)


def smoothing_full(state: torch.Tensor, table: torch.Tensor, action: torch.Tensor, ce: torch.Tensor) -> torch.Tensor:
    """(B,) mean over the real items of -log softmax(state @ table.T), from the target's CE: logsumexp - mean logit."""
    lse = ce + gathered_dot(state, table, action.unsqueeze(1)).squeeze(1)  # (B,)
    return lse - state @ table[FIRST_ITEM:].mean(dim=0)  # (B,)


def smoothing_sampled(logp: torch.Tensor) -> torch.Tensor:
    """(B, 1 + N) sampled log-softmax -> (B,) mean -log p over the candidates that count (finite ones)."""
    finite = torch.isfinite(logp)
    return -torch.where(finite, logp, 0.0).sum(dim=1) / finite.sum(dim=1)


def mixture_nll(cs: CopyState, catalogue_logp: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """(B,) catalogue log p(action) -> (B,) -log(g copy(action) + (1 - g) p(action)) (seqrec.models.repeat; with
    the category component, its share too)."""
    return -mix_at(cs, catalogue_logp.unsqueeze(1), action.unsqueeze(1)).squeeze(1)


def popularity_log_q(counts: torch.Tensor) -> torch.Tensor:
    """(I,) training-target counts -> (I,) log sampling probability (pad, OOV and items never a target: -inf)."""
    c = counts.double().clamp(min=0)
    c[:FIRST_ITEM] = 0.0
    return (c / c.sum()).log().float()


def draw_negatives(n: int, count: int, num_items: int, log_q: torch.Tensor | None,
                   g: torch.Generator) -> torch.Tensor:
    """(n, count) negatives: uniform over the real items, or drawn from exp(log_q) (popularity), with replacement."""
    if log_q is None:
        return torch.randint(FIRST_ITEM, num_items, (n, count), generator=g, device=g.device)
    return torch.multinomial(log_q.exp(), n * count, replacement=True, generator=g).view(n, count)


def supervised_loss(head: HeadConfig, state: torch.Tensor, table: torch.Tensor, action: torch.Tensor,
                    g: torch.Generator, cs: CopyState | None = None,
                    log_q: torch.Tensor | None = None) -> torch.Tensor:
    """(B, D) states, (I, D) item table, (B,) targets -> (B,) per-sample loss of the head's recipe; `cs` the copy
    attention (copy = true), `log_q` the popularity sampler's (sampler = "popularity"); negatives drawn from g."""
    if head.loss == "ce":
        ce = catalogue_ce(state, table, action)  # (B,)
        nll = ce if cs is None else mixture_nll(cs, -ce, action) + head.copy_aux * ce
        if not head.label_smoothing:
            return nll
        return (1.0 - head.label_smoothing) * nll + head.label_smoothing * smoothing_full(state, table, action, ce)
    neg = draw_negatives(action.shape[0], head.loss_negatives, table.shape[0], log_q, g)  # (B, N)
    pos = gathered_dot(state, table, action.unsqueeze(1)).squeeze(1)  # (B,)
    neg_scores = gathered_dot(state, table, neg)  # (B, N)
    if head.loss == "gbce":
        return gbce(pos, neg_scores, gbce_beta(head.gbce_t, head.loss_negatives, table.shape[0]))
    logp = sampled_log_softmax(pos, neg_scores, neg, action, log_q)  # (B, 1 + N)
    nll = -logp[:, 0] if cs is None else mixture_nll(cs, logp[:, 0], action) - head.copy_aux * logp[:, 0]
    if not head.label_smoothing:
        return nll
    return (1.0 - head.label_smoothing) * nll + head.label_smoothing * smoothing_sampled(logp)
