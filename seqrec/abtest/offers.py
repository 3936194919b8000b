"""Arm B as the offer-level Q learner: trained on the exploring campaign's event log, it decides product and
nudge jointly for each contact from the customer's logged events (event-typed, nudges seen) and profile.

The policy keeps its own event history, fed by the simulator's `observe` hook with each batch's events, as
a served model reads the SDK log: it never sees the simulator's hidden state (tastes, exact probabilities).
It sees the products a customer holds (`Contacts.held`: the bank knows them) to mask them, and the nudges the
catalogue and house rules allow with each product. Its probabilities are the decision layer's (greedy,
epsilon-greedy, softmax, ...) over the allowed (product, nudge) pairs, so the log it leaves carries honest
joint propensities.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from seqrec.abtest.policy import customer_features
from seqrec.campaign.records import CampaignLog, Contacts
from seqrec.campaign.simulator import Simulator
from seqrec.datasets.offers import EventHistory, OfferVocab, offer_rows
from seqrec.rl.bandits.joint import JointConfig
from seqrec.rl.offers.decide import allowed_pairs, offer_probabilities, q_values
from seqrec.training.offer_store import FittedOffers, save_offers
from seqrec.training.offers import OfferConfig, fit_offer_q


class OfferPolicy:
    """The fitted offer Q network as a simulator policy (see the module docstring)."""

    def __init__(self, sim: Simulator, fitted: FittedOffers, decision: JointConfig, seed: int = 0) -> None:
        vocab = fitted.vocab
        if tuple(vocab.items) != tuple(sim.product_ids) or tuple(vocab.nudges) != tuple(sim.arms):
            raise ValueError("the offer vocabulary must list the simulator's products and nudges in its order")
        self.sim, self.fitted, self.decision = sim, fitted, decision
        self.history = EventHistory(vocab, fitted.config.history)
        cols = tuple(name for name, _ in vocab.profile)
        self.profile = vocab.profile_codes(customer_features(sim, cols), sim.population.size)   # (C, columns)
        self.rng = np.random.default_rng(seed)

    def observe(self, events: pa.Table) -> None:
        self.history.add(events)

    def values(self, contacts: Contacts) -> np.ndarray:
        """(B, P, A) Q of every (product, nudge) pair for each contact."""
        hist = self.history.before(contacts.customer, contacts.time_us)                      # (B, W, 3)
        return q_values(self.fitted.model, hist, self.profile[contacts.customer])

    def probabilities(self, contacts: Contacts) -> np.ndarray:
        allowed = allowed_pairs(contacts.held, self.sim.nudge_mask)                          # (B, P, A)
        return offer_probabilities(self.values(contacts), allowed, self.decision, self.rng)


def train_offers(sim: Simulator, log: CampaignLog, cfg: OfferConfig, rewards: dict[str, float],
                 folder: Path, decision: JointConfig | None = None) -> tuple[FittedOffers, dict]:
    """Fit the offer Q learner on the campaign's event log; its checkpoint, vocabulary and config in `folder`.
    With offers.grid_epsilon, `decision`'s exploration share is chosen too (fitted.decision)."""
    table = log.events.drop_columns(["session_id"])   # the log as train_pipeline writes it (one sequence a customer)
    vocab = OfferVocab.fit(table, cfg.profile, nudges=sim.arms, items=sim.product_ids)
    rows = offer_rows(table, vocab, cfg.spec(rewards))
    fitted = fit_offer_q(rows, vocab, cfg, nudge_mask=sim.nudge_mask, nudge_family=sim.arm_family,
                         max_reward=max(max(rewards.values()), 1e-12), decision=decision)
    save_offers(folder / "offers", fitted, sim.nudge_mask, sim.arm_family, max(max(rewards.values()), 1e-12),
                rewards)
    info = {"offers": len(rows), "reward_mean": float(rows.reward.mean()), **fitted.info}
    return fitted, info
