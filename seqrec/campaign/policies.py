"""The campaign's built-in decision makers: uniform random, the [rules] campaign, and bandit-chosen nudges on
another policy's products (each `probabilities(contacts) -> (B, P, A)`; see records.Policy)."""

from __future__ import annotations

import numpy as np

from seqrec.campaign.config import SimConfigError
from seqrec.campaign.records import Contacts, Decisions, Policy
from seqrec.campaign.simulator import Simulator


class RandomPolicy:
    """Uniform over the products a customer does not hold (all, if they hold every one), then uniform over the
    nudges allowed with the product: the exploring logger whose log every other policy can be evaluated on."""

    def __init__(self, sim: Simulator) -> None:
        self.nudge = sim.nudge_mask / sim.nudge_mask.sum(axis=1, keepdims=True)   # (P, A)

    def probabilities(self, contacts: Contacts) -> np.ndarray:
        open_ = ~contacts.held
        open_ = np.where(open_.any(axis=1, keepdims=True), open_, True)
        product = open_ / open_.sum(axis=1, keepdims=True)                       # (B, P)
        return product[:, :, None] * self.nudge[None]


class RulePolicy:
    """The rule-based campaign of [rules]: per segment, the first listed product not held (else the first listed)
    with the segment's fixed nudge. Deterministic (propensity 1) unless `epsilon` > 0 mixes in RandomPolicy."""

    def __init__(self, sim: Simulator, epsilon: float | None = None) -> None:
        if not sim.config.rules:
            raise SimConfigError(f"{sim.config.source}: the rules policy needs a [rules] table")
        self.epsilon = sim.config.campaign.epsilon if epsilon is None else float(epsilon)
        if not 0.0 <= self.epsilon <= 1.0:
            raise ValueError(f"epsilon must lie in [0, 1]; got {epsilon!r}")
        self.segment = sim.population.segment
        by_segment = {r.segment: r for r in sim.config.rules}
        rules = [by_segment[s] for s in sim.segment_names]
        width = max(len(r.products) for r in rules)
        self.products = np.array([[*sim.product_index(r.products)] + [-1] * (width - len(r.products))
                                  for r in rules])                               # (S, K) preference lists
        self.nudge = np.array([sim.arms.index(r.nudge) for r in rules])         # (S,)
        self.random = RandomPolicy(sim)
        self.shape = (sim.n_products, sim.n_arms)

    def probabilities(self, contacts: Contacts) -> np.ndarray:
        b = len(contacts)
        seg = self.segment[contacts.customer]
        prefs = self.products[seg]                                               # (B, K)
        rows = np.arange(b)
        wanted = (prefs >= 0) & ~contacts.held[rows[:, None], np.maximum(prefs, 0)]
        first = np.where(wanted.any(axis=1), np.argmax(wanted, axis=1), 0)
        pi = np.zeros((b, *self.shape))
        pi[rows, prefs[rows, first], self.nudge[seg]] = 1.0
        if self.epsilon > 0:
            pi = (1 - self.epsilon) * pi + self.epsilon * self.random.probabilities(contacts)
        return pi


class BanditNudgePolicy:
    """Products from another policy (its marginal over products), the nudge from a bandit of seqrec.rl.bandits.policies
    among the arms allowed with the product; the bandit learns from purchases after each batch. A contextual
    bandit (LinUCB) sees `Simulator.context_features`; its dim must equal their width."""

    def __init__(self, sim: Simulator, products: Policy, bandit: object) -> None:
        if tuple(getattr(bandit, "arms", ())) != sim.arms:
            raise ValueError(f"the bandit's arms must be the catalogue's, in order: {', '.join(sim.arms)}")
        self.sim, self.products, self.bandit = sim, products, bandit

    def _contexts(self, contacts: Contacts) -> np.ndarray | None:
        return self.sim.context_features(contacts) if getattr(self.bandit, "dim", 0) else None

    def probabilities(self, contacts: Contacts) -> np.ndarray:
        product = self.sim.check_probabilities(self.products, contacts).sum(axis=2)     # (B, P)
        x = self._contexts(contacts)
        nudge = np.stack([self.bandit.probabilities_batch(x, self.sim.nudge_mask[j], rows=len(contacts))
                          for j in range(self.sim.n_products)], axis=1)                 # (B, P, A)
        return product[:, :, None] * nudge

    def update(self, contacts: Contacts, decisions: Decisions, purchased: np.ndarray) -> None:
        self.bandit.update_batch(self._contexts(contacts), decisions.nudge, purchased.astype(np.float64))
        if hasattr(self.products, "update"):
            self.products.update(contacts, decisions, purchased)


def make_policy(sim: Simulator, name: str, epsilon: float | None = None) -> Policy:
    """The named built-in policy: 'random' or 'rules'."""
    if name == "random":
        return RandomPolicy(sim)
    if name == "rules":
        return RulePolicy(sim, epsilon)
    raise ValueError(f"unknown policy {name!r}; built in: random, rules")
