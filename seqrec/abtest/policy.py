"""Arm B of the A/B test as simulator policies: the trained pipeline's product, and the campaign phases.

`PipelineProducts` turns a contact into a product the way the served pipeline does (seqrec/rerank.py): the
customer's history (the simulator's last W products, newest last) becomes the learner's window, the two-tower's
user tower encodes it with the customer's profile (the run's user feature columns, read from the population as
the simulator writes them on events), the K best products the customer does not hold by two-tower score are the
candidates, and the run's blend (by default the Q value alone) picks one. The nudge is left uniform over the
arms allowed with the product: `BanditNudgePolicy` replaces it with the bandit's choice.

`Phased` runs the exploring campaign for the first `waves` waves (contacts whose customer was contacted fewer
than `waves` times before) and the arm afterwards, so an arm's campaign replays the training campaign exactly
(same seed: same schedule, draws and responses) and its test wave starts from the state that campaign left:
products bought, nudges seen, history.
"""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import torch

from seqrec.campaign.records import Contacts, Decisions, Policy
from seqrec.campaign.simulator import FEATURE_COLUMNS, Simulator
from seqrec.datasets.schema import FIRST_ITEM, OOV
from seqrec.retrieval.features import Features
from seqrec.retrieval.rerank import Pipeline, blend


def customer_features(sim: Simulator, columns: tuple[str, ...]) -> dict[str, np.ndarray]:
    """(C,) text value of each simulator feature column for every customer, as `Simulator` logs it on events."""
    pop = sim.population
    out = {}
    for name in columns:
        if name not in FEATURE_COLUMNS:
            raise ValueError(f"user feature {name!r} is not a simulator column; columns: {', '.join(FEATURE_COLUMNS)}")
        values = np.asarray(sim.segment_names)[pop.segment] if name == "segment" else pop.columns[name]
        out[name] = np.asarray(values).astype(str)
    return out


class PipelineProducts:
    """The learnt pipeline's product for each contact (deterministic), nudges uniform over the allowed arms."""

    def __init__(self, sim: Simulator, pipeline: Pipeline, vocab_ids: list[str], window: int) -> None:
        index = {item: i + FIRST_ITEM for i, item in enumerate(vocab_ids)}
        self.item = np.array([index.get(p, OOV) for p in sim.product_ids], dtype=np.int64)   # (P,) catalogue index
        self.sim, self.pipeline, self.window = sim, pipeline, window
        spec = pipeline.tower.user_spec
        self.users: Features | None = spec.encode(customer_features(sim, spec.columns), sim.population.size) \
            if spec.columns else None                                                          # (C, ...)
        self.nudge = sim.nudge_mask / sim.nudge_mask.sum(axis=1, keepdims=True)                # (P, A)

    def windows(self, contacts: Contacts) -> np.ndarray:
        """(B, W) catalogue indices of the customers' latest products, newest last, 0-padded on the left."""
        hist = contacts.history                                                                # (B, Ws)
        items = np.where(hist >= 0, self.item[np.maximum(hist, 0)], 0)
        if items.shape[1] >= self.window:
            return items[:, -self.window:]
        return np.pad(items, ((0, 0), (self.window - items.shape[1], 0)))

    @torch.no_grad()
    def scores(self, contacts: Contacts) -> dict[str, torch.Tensor]:
        """(B, P) scores of every product: "two_tower" (user . item / temperature), "supervised" and "q" (the
        learner's; q is NaN without a Q head)."""
        b, p = len(contacts), self.sim.n_products
        tower = self.pipeline.tower
        x = torch.from_numpy(self.windows(contacts))                                           # (B, W)
        users = self.users.rows(contacts.customer) if self.users is not None else None
        ids = torch.from_numpy(self.item).expand(b, p)                                         # (B, P)
        tt = tower.score(tower.user(x, users), ids)                                            # (B, P)
        sup, q = self.pipeline.scorer(x, ids)                                                  # (B, P) each
        return {"two_tower": tt, "supervised": sup, "q": torch.full_like(sup, torch.nan) if q is None else q}

    @torch.no_grad()
    def choose(self, contacts: Contacts) -> np.ndarray:
        """(B,) product index: the best of the K two-tower candidates among products not held, by the blend."""
        s = self.scores(contacts)
        held = torch.from_numpy(contacts.held)                                                 # (B, P)
        open_ = ~held | held.all(dim=1, keepdim=True)           # holding everything: any product (buys nothing)
        k = min(self.pipeline.rerank.candidates, self.sim.n_products)
        top, cand = torch.topk(s["two_tower"].masked_fill(~open_, -torch.inf), k, dim=1)       # (B, K) each
        valid = torch.isfinite(top)                                                            # (B, K)
        sup, q = s["supervised"].gather(1, cand), s["q"].gather(1, cand)                       # (B, K) each
        q = None if torch.isnan(q).all() else q
        final = blend(torch.where(valid, top, 0.0), sup, q, self.pipeline.rerank, valid)       # (B, K)
        best = torch.argmax(final, dim=1, keepdim=True)                                        # (B, 1) first max
        return cand.gather(1, best).squeeze(1).numpy().astype(np.int64)

    def probabilities(self, contacts: Contacts) -> np.ndarray:
        """(B, P, A): the chosen product with probability 1, nudges uniform over its allowed arms."""
        product = self.choose(contacts)
        pi = np.zeros((len(contacts), self.sim.n_products, self.sim.n_arms))
        pi[np.arange(len(contacts)), product] = self.nudge[product]
        return pi


def take_decisions(d: Decisions, rows: np.ndarray) -> Decisions:
    """The decisions at `rows`."""
    return Decisions(*(getattr(d, f.name)[rows] for f in fields(Decisions)))


class Phased:
    """`before` for contacts of customers contacted fewer than `waves` times, `after` for the rest; only `after`
    learns (its `update` sees its own contacts only)."""

    def __init__(self, before: Policy, after: Policy, waves: int) -> None:
        self.before, self.after, self.waves = before, after, waves

    def probabilities(self, contacts: Contacts) -> np.ndarray:
        late = contacts.previous_contacts >= self.waves                                        # (B,)
        if late.all():
            return self.after.probabilities(contacts)
        if not late.any():
            return self.before.probabilities(contacts)
        rows = np.flatnonzero(late), np.flatnonzero(~late)
        parts = self.after.probabilities(contacts.take(rows[0])), self.before.probabilities(contacts.take(rows[1]))
        pi = np.zeros((len(contacts), *parts[0].shape[1:]))
        pi[rows[0]], pi[rows[1]] = parts
        return pi

    def observe(self, events) -> None:
        """Both phases' policies see every logged event (the bank's log holds the training campaign too)."""
        for policy in (self.before, self.after):
            if hasattr(policy, "observe"):
                policy.observe(events)

    def update(self, contacts: Contacts, decisions: Decisions, purchased: np.ndarray) -> None:
        rows = np.flatnonzero(contacts.previous_contacts >= self.waves)
        if len(rows) and hasattr(self.after, "update"):
            self.after.update(contacts.take(rows), take_decisions(decisions, rows), purchased[rows])
