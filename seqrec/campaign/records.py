"""The campaign simulator's records: contacts (who, when, in what state), decisions, responses, a campaign's
log, and the Policy protocol a decision maker implements (shapes: B contacts, P products, A arms, F nudge
families, W window, L session events, N contacts of a campaign)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Protocol, runtime_checkable

import numpy as np
import pyarrow as pa


class PolicyError(ValueError):
    """A policy returned probabilities that cannot be used: the message names the policy, the row and the fault."""


# ------------------------------------------------------------------------------------------- data classes


@dataclass(frozen=True)
class Contacts:
    """B contact opportunities: who is contacted, when, and the customer's state just before."""

    customer: np.ndarray            # (B,) int64 index into the population (also the logged user_id)
    previous_contacts: np.ndarray   # (B,) int64 contacts of this customer earlier in the campaign
    time_us: np.ndarray             # (B,) int64 contact time, microseconds since the epoch (UTC)
    held: np.ndarray                # (B, P) bool products held
    shown: np.ndarray               # (B, F) int64 earlier showings of each nudge family (NUDGE_FAMILIES order)
    history: np.ndarray             # (B, W) int64 product indices of the latest events, newest last, -1 padding

    def __len__(self) -> int:
        return len(self.customer)

    def take(self, rows: np.ndarray) -> Contacts:
        """The contacts at `rows`."""
        return Contacts(*(getattr(self, f.name)[rows] for f in fields(self)))

    @staticmethod
    def concat(parts: Sequence[Contacts]) -> Contacts:
        return Contacts(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Contacts)))


@dataclass(frozen=True)
class Decisions:
    """What was offered to each of B contacts and with what probability."""

    product: np.ndarray              # (B,) int64 product index
    nudge: np.ndarray                # (B,) int64 arm index in the catalogue, -1 = no nudge
    propensity: np.ndarray           # (B,) float64 P(nudge | context, product) of the policy; NaN = not known
    product_propensity: np.ndarray   # (B,) float64 P(product | context) of the policy; NaN = not known

    @staticmethod
    def fixed(product: np.ndarray, nudge: np.ndarray) -> Decisions:
        """Decisions made outside any policy (no propensities)."""
        p, a = np.asarray(product, dtype=np.int64), np.asarray(nudge, dtype=np.int64)
        return Decisions(p, a, np.full(len(p), np.nan), np.full(len(p), np.nan))


@dataclass(frozen=True)
class Response:
    """What B contacted customers did, and the events they left (one session each)."""

    probability: np.ndarray   # (B,) exact purchase probability of the offer
    purchased: np.ndarray     # (B,) bool
    liked: np.ndarray         # (B,) bool: liked the offered product
    carted: np.ndarray        # (B,) bool: started an application for it (every buyer did)
    browsed: np.ndarray       # (B, P-1) int64 other products viewed, in order, -1 padding
    session_items: np.ndarray  # (B, L) int64 product of each event of the session in time order, -1 padding
    events: pa.Table          # the sessions' events in the event schema


@dataclass(frozen=True)
class CampaignLog:
    """A campaign run: its event log and, per contact (N), the state, decision and outcome."""

    events: pa.Table
    contacts: Contacts
    decisions: Decisions
    probability: np.ndarray   # (N,) exact purchase probability of the chosen (product, nudge)
    purchased: np.ndarray     # (N,) bool

    @property
    def customers(self) -> int:
        """Distinct customers contacted."""
        return int(len(np.unique(self.contacts.customer)))

    @property
    def conversion_rate(self) -> float:
        """Purchases through offers / customers contacted (Kristiana et al.'s CR, as a fraction)."""
        return float(self.purchased.sum() / max(self.customers, 1))


@runtime_checkable
class Policy(Protocol):
    """Chooses (product, nudge) for contacts. Optional: `update(contacts, decisions, purchased)` to learn, and
    `observe(events)` to see each batch's logged events (a policy that keeps its own event history)."""

    def probabilities(self, contacts: Contacts) -> np.ndarray:
        """(B, P, A) joint probability of offering product p with arm a; each row sums to 1."""
        ...
