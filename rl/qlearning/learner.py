"""The SQN family: a shared sequence encoder with a supervised head and a double-Q head, and its learner.

`TwoHeadNet` scores the catalogue twice from one state: supervised logits (the encoder's item table) and
Q values (a linear layer D -> I). `Learner` holds two such networks for double Q-learning (each batch a
coin decides which one learns and which one values the next state) and applies the variant's loss.
Randomness (coin, negatives, dropout) is drawn from generators seeded by (seed, step), so a resumed run
repeats exactly the steps an uninterrupted one would take.
"""

from __future__ import annotations

import torch
from seqrec.datasets.schema import FIRST_ITEM  # negatives are drawn from real items only
from torch import nn

from seqrec.models.catalogue import gathered_dot, padded_scores, row_argmax, scores
from seqrec.models.encoders import EncoderConfig, build_encoder
from seqrec.models.repeat import CopyMixer, CopyState, mass, mix_all, mix_candidates

from .actions import action_mask, masked_argmax
from .losses import HeadConfig, actor_weights, advantage, td_loss, td_target, weighted_ce
from .supervised import popularity_log_q, supervised_loss


class TwoHeadNet(nn.Module):
    """Encoder + supervised head (+ Q head): items (B, T) -> logits (B, I), q (B, I) or None.

    With `copy` the repeat-aware mixture (seqrec/models/repeat.py) sits on top: supervised scores are the
    mixture's log-probabilities, and Q values add kappa(state) x the copy attention on each window item, so the
    Q head values the mixture's actions (a repeat's worth is learnt by TD like any other item's).

    With event types (EncoderConfig.event_types > 0) every window comes with its (B, T) event codes + 1 (`events`),
    which reach the encoder's input rows and the copy attention's keys and logits; without them `events` is None."""

    def __init__(self, enc: EncoderConfig, q_head: bool, copy: bool = False, copy_category: bool = False,
                 copy_calibrate: bool = False) -> None:
        super().__init__()
        if copy_category and not enc.categories:
            raise ValueError("copy_category needs item categories: [encoder] categories = true")
        self.encoder = build_encoder(enc)
        self.q = nn.Linear(enc.dim, enc.num_items) if q_head else None
        # created only with copy: without it the parameters, their initial draws and state dicts are as before
        self.copy = CopyMixer(enc.dim, enc.max_len, enc.num_items if copy_category else None,
                              enc.event_types, copy_calibrate) if copy else None
        self.q_copy = nn.Linear(enc.dim, 1) if copy and q_head else None  # kappa(state): a repeat's extra Q

    def forward(self, items: torch.Tensor,
                events: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The catalogue's logits and the Q head's values (without the copy terms: see `mixed_all`)."""
        state = self.encoder.encode(items, events)  # (B, D)
        logits = self.encoder.score_all(state)  # (B, I)
        return logits, (scores(state, self.q.weight, self.q.bias) if self.q is not None else None)

    def q_values(self, items: torch.Tensor, events: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) -> (B, I) Q values only (no supervised scores: saves a catalogue-wide matmul)."""
        if self.q is None:
            raise ValueError("this network has no Q head (variant 'ce')")
        return scores(self.encoder.encode(items, events), self.q.weight, self.q.bias)  # (B, I)

    def q_at(self, state: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """(B, D) states, (B, K) item ids -> (B, K) Q values of just those items (K rows of the head,
        instead of the (B, D) x (D, I) product and its two backward products)."""
        return gathered_dot(state, self.q.weight, ids, self.q.bias)  # (B, K)

    # the copy-aware forms (copy = true): they need the window as well as its state

    def attend(self, items: torch.Tensor, state: torch.Tensor, events: torch.Tensor | None = None) -> CopyState:
        """(B, T) windows, their (B, D) states (and (B, T) events) -> the copy attention and gate."""
        rows = self.encoder.item_rows(items.long())  # (B, T, D): the window's rows, not the (I, D) table
        if self.copy.cat_gate is None:
            return self.copy.attend(state, items, rows, events=events)
        return self.copy.attend(state, items, rows, self.encoder.item_category, self.encoder.cfg.categories,
                                events=events)

    def mixed_all(self, items: torch.Tensor, state: torch.Tensor, events: torch.Tensor | None = None) -> torch.Tensor:
        """(B, I) the mixture's log-probabilities over the catalogue."""
        return mix_all(self.attend(items, state, events), self.encoder.score_all(state))

    def mixed_q_all(self, items: torch.Tensor, state: torch.Tensor, cs: CopyState | None = None,
                    events: torch.Tensor | None = None) -> torch.Tensor:
        """(B, I) Q values with each window item's copy term kappa(state) x attention."""
        cs = self.attend(items, state, events) if cs is None else cs
        q = scores(state, self.q.weight, self.q.bias)  # (B, I)
        extra = self.q_copy(state) * mass(cs, cs.window)  # (B, T); 0 at pads and OOV
        return q.scatter(1, cs.window, q.gather(1, cs.window) + extra)  # repeated items: the same value twice

    def mixed_q_at(self, state: torch.Tensor, cs: CopyState, ids: torch.Tensor) -> torch.Tensor:
        """(B, K) copy-aware Q values of items `ids`."""
        return self.q_at(state, ids) + self.q_copy(state) * mass(cs, ids)


def double_q_value(net: TwoHeadNet, other: TwoHeadNet, items: torch.Tensor,
                   state: torch.Tensor | None = None, allowed: torch.Tensor | None = None,
                   events: torch.Tensor | None = None) -> torch.Tensor:
    """Q'(x, argmax_a Q(x, a)) for windows `items` (B, T): the learning network picks the action among those that
    can be taken (real items, never padding or OOV; of those only `allowed`, an (I,) or (B, I) bool mask, if
    given), the other copy values just that row. `state` is net's (B, D) encoding if at hand; `events` the
    windows' (B, T) event codes + 1 (with event types). (B,)

    No gradient flows through it. It runs under inference mode (no autograd bookkeeping at all: its two
    encoder passes run about 10% faster than under no_grad, same values), and the arg-max of net's Q values
    comes from `masked_argmax`, which without a per-state mask never writes the (B, I) Q matrix."""
    if net.q is None:
        raise ValueError("this network has no Q head (variant 'ce')")
    if net.copy is not None:
        return _double_q_value_copy(net, other, items, state, allowed, events)
    with torch.inference_mode():
        state = net.encoder.encode(items, events) if state is None else state  # (B, D)
        best = masked_argmax(state, net.q.weight, net.q.bias, allowed).unsqueeze(1)  # (B, 1)
        value = other.q_at(other.encoder.encode(items, events), best).squeeze(1)  # (B,)
    return value.clone()  # a normal tensor again: an inference tensor cannot be saved for a backward pass


def _double_q_value_copy(net: TwoHeadNet, other: TwoHeadNet, items: torch.Tensor,
                         state: torch.Tensor | None, allowed: torch.Tensor | None = None,
                         events: torch.Tensor | None = None) -> torch.Tensor:
    """double_q_value for copy-aware networks: the arg-max over net's Q with the copy terms, among the actions
    that can be taken (as double_q_value), valued by other's. (B,)"""
    with torch.inference_mode():
        state = net.encoder.encode(items, events) if state is None else state  # (B, D)
        q = net.mixed_q_all(items, state, events=events)  # (B, I)
        best = row_argmax(q.masked_fill(~action_mask(q.shape[1], allowed).to(q.device), -torch.inf)).unsqueeze(1)
        o_state = other.encoder.encode(items, events)  # (B, D)
        value = other.mixed_q_at(o_state, other.attend(items, o_state, events), best).squeeze(1)  # (B,)
    return value.clone()


def step_generator(seed: int, step: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator that depends only on (seed, step): the same draws whether or not the run was resumed."""
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + step) % (2**63 - 1))
    return g


# Candidate scores (`Learner.candidate_scores`) come from the full (B, I) product, then a gather, while
# I <= DENSE_PER_CANDIDATE x K; above that from the K rows gathered per state. Measured (1 thread, B = 1,024,
# K = 200, D = 64): gathering the (B, K, D) rows costs 45-85 ms whatever I, the dense product 8 ms at I = 2,900,
# 65 ms at 12,800 and 136 ms at 26,702, so the crossover is near 64 K; 32 K keeps to the safe side.
DENSE_PER_CANDIDATE = 32


class Learner(nn.Module):
    """One (ce) or two (Q variants) TwoHeadNets, their optimisers, and the update of the chosen variant."""

    def __init__(self, enc: EncoderConfig, head: HeadConfig, lr: float, allowed: torch.Tensor | None = None) -> None:
        """`allowed`: an optional (I,) bool mask of the actions the catalogue lets the recommender take; None,
        every real item. Q targets maximise over these only (never padding or OOV); a batch may narrow them per
        state with (B, I) bool masks under "allowed" (of its states) and "next_allowed" (of its next states)."""
        super().__init__()
        self.enc, self.head = enc, head
        if allowed is not None and allowed.dim() != 1:
            raise ValueError("the learner's allowed actions are one (I,) mask; per-state masks come with the batch")
        # not in the state dict: checkpoints stay the same, and the mask belongs to the catalogue, not the weights
        self.register_buffer("allowed", None if allowed is None else action_mask(enc.num_items, allowed),
                             persistent=False)
        n = 1 if head.variant == "ce" else 2
        self.nets = nn.ModuleList([TwoHeadNet(enc, head.variant != "ce", head.copy, head.copy_category,
                                              head.copy_calibrate)
                                   for _ in range(n)])
        self.log_q: torch.Tensor | None = None  # sampler = "popularity": log sampling probabilities (set_item_counts)
        # fused Adam: one kernel over each (I, D) table instead of several passes (4x faster on CPU here)
        self.opts = [torch.optim.Adam(net.parameters(), lr=lr, fused=True) for net in self.nets]

    def scores(self, state: torch.Tensor, events: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) windows (and their (B, T) events when `uses_events`) -> (B, I) supervised scores of the first
        network: what the papers recommend from (with copy: the mixture's log-probabilities)."""
        enc = self.nets[0].encoder
        if self.nets[0].copy is not None:
            return self.nets[0].mixed_all(state, enc.encode(state, events), events)
        return enc.score_all(enc.encode(state, events))

    def q_values(self, state: torch.Tensor, events: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) (and events) -> (B, I) Q values of the first network (re-ranking, d3rlpy-style comparisons)."""
        if self.nets[0].copy is not None and self.has_q_head:
            net = self.nets[0]
            return net.mixed_q_all(state, net.encoder.encode(state, events), events=events)
        return self.nets[0].q_values(state, events)

    def mixture_parts(self, items: torch.Tensor,
                      events: torch.Tensor | None = None) -> tuple[CopyState, torch.Tensor]:
        """(B, T) windows (and events) -> the first network's copy attention and gates, and its (B, I) catalogue
        logits: the parts `scores` mixes (copy = true), for analyses that vary the mixing
        (experiments/mixture_gates.py)."""
        net = self.nets[0]
        if net.copy is None:
            raise ValueError("this learner has no repeat-aware mixture ([head] copy = false)")
        state = net.encoder.encode(items, events)  # (B, D)
        return net.attend(items, state, events), net.encoder.score_all(state)

    def set_gate_shift(self, copy: float, category: float) -> None:
        """The mixture's gate offsets (copy_calibrate), in every network: logit g + copy, logit h + category."""
        if self.nets[0].copy is None:
            raise ValueError("this learner has no repeat-aware mixture ([head] copy = false)")
        for net in self.nets:
            net.copy.set_gate_shift(copy, category)

    @property
    def uses_events(self) -> bool:
        """Whether every window comes with its (B, T) event codes + 1 (`[encoder] events`): scores, q_values,
        encode and candidate_scores take them as `events`, and batches carry state_event and next_state_event."""
        return self.enc.event_types > 0

    def set_item_counts(self, counts: torch.Tensor) -> None:
        """(I,) how often each item is a training target: the popularity sampler's distribution (sampler =
        "popularity"; kept out of the state dict, training only) and the popularity within each category of the
        category component (copy_category; in the state dict, as scoring needs it). Call after
        set_item_categories."""
        self.log_q = popularity_log_q(counts).to(self.nets[0].encoder.item_emb.weight.device)
        for net in self.nets:
            if net.copy is not None and net.copy.cat_gate is not None:
                net.copy.set_within(counts.cpu(), net.encoder.item_category.cpu())

    @property
    def needs_item_counts(self) -> bool:
        """Whether training must call set_item_counts (the popularity sampler, the category component)."""
        return self.head.sampler == "popularity" or self.head.copy_category  # copy_category implies copy

    # The seam for serving and re-ranking: the first network is the one that recommends; callers use these
    # rather than reaching into `nets`.

    def set_item_categories(self, codes: torch.Tensor) -> None:
        """(I,) category code per item (encoder categories): every network's encoder; in the state dict."""
        for net in self.nets:
            net.encoder.set_item_categories(codes.to(net.encoder.item_emb.weight.device))

    @property
    def has_q_head(self) -> bool:
        """Whether the learner has Q values (every variant but 'ce')."""
        return self.nets[0].q is not None

    @property
    def scores_from_state(self) -> bool:
        """Whether supervised scores and Q values are functions of the (B, D) state alone (`supervised_at`,
        `q_at`, `padded_supervised`); not so with copy, whose scores need the window: use `scores`,
        `q_values`, `candidate_scores`."""
        return self.nets[0].copy is None

    def _state_only(self) -> None:
        if not self.scores_from_state:
            raise ValueError("copy = true: scores need the window, not only its state (use candidate_scores)")

    def encode(self, items: torch.Tensor, events: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) windows (and events) -> (B, D) states of the first network's encoder."""
        return self.nets[0].encoder.encode(items, events)

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The first network's encoder weights (the two-tower's user tower starts from them)."""
        return self.nets[0].encoder.state_dict()

    def supervised_at(self, state: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """(B, D) states, (B, K) item ids -> (B, K) supervised scores of just those items."""
        self._state_only()
        return self.nets[0].encoder.score(state, ids)

    def padded_supervised(self, state: torch.Tensor) -> torch.Tensor:
        """(B, D) states -> (B, I') supervised scores in a row-padded buffer, padding columns -inf
        (seqrec.models.catalogue.padded_scores)."""
        self._state_only()
        return padded_scores(state, self.nets[0].encoder.output_weight)

    def q_at(self, state: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """(B, D) states, (B, K) item ids -> (B, K) Q values of just those items (needs a Q head)."""
        if not self.has_q_head:
            raise ValueError("this learner has no Q head (variant 'ce')")
        self._state_only()
        return self.nets[0].q_at(state, ids)

    def candidate_scores(self, items: torch.Tensor, ids: torch.Tensor,
                         events: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, T) windows, (B, K) candidate ids (and the windows' (B, T) events) -> (B, K) supervised scores and
        (B, K) Q values (None without a Q head), from one encoding: dense product then gather, or K gathered rows
        (DENSE_PER_CANDIDATE)."""
        net = self.nets[0]
        state = net.encoder.encode(items, events)  # (B, D)
        if net.copy is not None:  # the mixture needs the catalogue's log-sum-exp: the dense product
            cs, logits = net.attend(items, state, events), net.encoder.score_all(state)  # (B, I)
            sup = mix_candidates(cs, logits, logits.gather(1, ids), ids)  # (B, K)
            return sup, (net.mixed_q_at(state, cs, ids) if net.q is not None else None)
        if net.encoder.cfg.num_items <= DENSE_PER_CANDIDATE * ids.shape[1]:
            sup = net.encoder.score_all(state).gather(1, ids)  # (B, K)
            q = scores(state, net.q.weight, net.q.bias).gather(1, ids) if net.q is not None else None
            return sup, q
        return net.encoder.score(state, ids), (net.q_at(state, ids) if net.q is not None else None)

    def update(self, batch: dict[str, torch.Tensor], step: int, seed: int) -> dict[str, float]:
        """One gradient step on a batch of transitions; returns losses and statistics for TensorBoard.

        Dropout draws from the global RNG, re-seeded from (seed, step) inside a fork so the caller's RNG
        state is untouched.
        """
        device = batch["state"].device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(step_generator(seed, step).initial_seed())
            return self._update(batch, step, seed)

    def _update(self, batch: dict[str, torch.Tensor], step: int, seed: int) -> dict[str, float]:
        h = self.head
        g = step_generator(seed, step, batch["state"].device)
        s, a = batch["state"], batch["action"]
        se, nse = self._batch_events(batch)  # (B, T) each, or None without event types
        plain = h.loss == "ce" and not h.label_smoothing and not h.copy  # the papers' loss, computed as always
        if h.variant == "ce":
            enc = self.nets[0].encoder
            state = enc.encode(s, se)  # (B, D)
            loss = (weighted_ce(state, enc.output_weight, a) if plain
                    else self._supervised(0, s, state, a, g, events=se).mean())
            self._step(0, loss)
            return {"loss/ce": loss.item(), "loss/total": loss.item()}

        main = int(torch.randint(0, 2, (1,), generator=g, device=g.device).item())  # who learns this batch
        net, other = self.nets[main], self.nets[1 - main]
        state = net.encoder.encode(s, se)  # (B, D)
        cs = net.attend(s, state, se) if net.copy is not None else None
        q_pos = (net.q_at(state, a.unsqueeze(1)) if cs is None
                 else net.mixed_q_at(state, cs, a.unsqueeze(1))).squeeze(1)  # (B,) only the taken action's
        next_value = double_q_value(net, other, batch["next_state"], allowed=self._allowed(batch.get("next_allowed")),
                                    events=nse)
        target = td_target(batch["reward"], batch["done"], next_value, h.gamma)
        td = td_loss(q_pos, target)
        stats = {"q/mean": q_pos.mean().item(), "q/target_mean": target.mean().item()}

        weight = None
        if h.variant in ("snqn", "sa2c"):
            here = self._allowed(batch.get("allowed"))  # what could have been taken in s
            neg = sample_negatives(a, h.negatives, self.enc.num_items, g, here)  # (B, N)
            q_neg = net.q_at(state, neg) if cs is None else net.mixed_q_at(state, cs, neg)  # (B, N)
            # a negative earns reward 0 and leaves the state unchanged: its target values s itself
            neg_target = h.gamma * double_q_value(net, other, s, state.detach(), here, se)  # (B,)
            td = td + td_loss(q_neg, neg_target.unsqueeze(1).expand_as(q_neg))
            if h.variant == "sa2c" and step >= h.warmup_steps:
                weight = advantage(q_pos, q_neg, h.advantage_min, h.advantage_max)
                stats["advantage/mean"] = weight.mean().item()
        elif h.variant == "sac" and step >= h.warmup_steps:
            weight = q_pos.detach()
        if weight is not None:
            weight = actor_weights(weight, h.actor_weights)
        if plain:
            ce = weighted_ce(state, net.encoder.output_weight, a, weight)
        else:
            per = self._supervised(main, s, state, a, g, cs, se)  # (B,)
            ce = (per * weight).mean() if weight is not None else per.mean()
        loss = ce + h.td_weight * td
        self._step(main, loss)
        return {"loss/ce": ce.item(), "loss/td": td.item(), "loss/total": loss.item(), **stats}

    def _batch_events(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The batch's (B, T) state_event and next_state_event when the encoder has event types, else (None, None)."""
        if not self.uses_events:
            return None, None
        if "state_event" not in batch or "next_state_event" not in batch:
            raise ValueError("this learner has event types: batches need state_event and next_state_event "
                             "(seqrec.training.sampler.to_batch with events=True)")
        return batch["state_event"], batch["next_state_event"]

    def _allowed(self, per_state: torch.Tensor | None) -> torch.Tensor | None:
        """The actions a target may take: the learner's (I,) mask and a batch's (B, I) one, both if given;
        None (every real item) if neither."""
        if per_state is None:
            return self.allowed
        return per_state if self.allowed is None else per_state & self.allowed

    def _supervised(self, i: int, items: torch.Tensor, state: torch.Tensor, action: torch.Tensor,
                    g: torch.Generator, cs: CopyState | None = None,
                    events: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) the supervised loss of network i under the head's recipe (rl/qlearning/supervised.py)."""
        net = self.nets[i]
        if net.copy is not None and cs is None:
            cs = net.attend(items, state, events)
        if self.head.sampler == "popularity" and self.log_q is None:
            raise ValueError('sampler = "popularity" needs the item counts: call set_item_counts first')
        return supervised_loss(self.head, state, net.encoder.output_weight, action, g, cs, self.log_q)

    def _step(self, i: int, loss: torch.Tensor) -> None:
        opt = self.opts[i]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def optim_state(self) -> list[dict]:
        return [o.state_dict() for o in self.opts]

    def load_optim_state(self, states: list[dict]) -> None:
        for o, st in zip(self.opts, states, strict=True):
            o.load_state_dict(st)


def sample_negatives(action: torch.Tensor, n: int, num_items: int, g: torch.Generator,
                     allowed: torch.Tensor | None = None) -> torch.Tensor:
    """(B, n) uniform real items different from each row's positive (a collision moves to the next item);
    with an (I,) or (B, I) `allowed` mask, uniform over the allowed real items other than the positive."""
    if allowed is not None:
        weight = action_mask(num_items, allowed).expand(action.shape[0], num_items).float()  # (B, I)
        weight = weight.scatter(1, action.unsqueeze(1), 0.0)  # never the positive
        if (weight.sum(dim=1) == 0).any():
            raise ValueError("a state allows no action but its positive: no negative to sample")
        return torch.multinomial(weight, n, replacement=True, generator=g)  # (B, n)
    span = num_items - FIRST_ITEM
    neg = torch.randint(0, span - 1, (action.shape[0], n), generator=g, device=g.device) + FIRST_ITEM
    return torch.where(neg >= action.unsqueeze(1), neg + 1, neg)  # skip the positive: uniform over the rest
