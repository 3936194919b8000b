"""Offers in an event log: the rows where the system chose a (product, nudge) with a logged propensity, the
event-typed history before each, the response attributed to it, and the same customer's next offer.

An offer is an event carrying a nudge and its propensity (the simulator's and the SDK's offer view). Its
joint propensity is P(product) * P(nudge | product): `propensity` times `product_propensity` when the log has
that column (else the nudge's propensity alone: the product is then the customer's, not the system's choice,
and a policy is valued on its nudge for the logged product only: `OfferRows.product_chosen` False). The reward
is the largest reward-table value (purchase 1.0, cart 0.6, like 0.4, view 0.2 by default) among the
customer's later events on the offered product within `attribution_hours` and before the customer's next
offer; the offer's own event does not count. The history is the customer's last W events strictly before the
offer, as (item, event type, nudge) codes, newest last, zero-padded on the left: what a decision made at that
moment could have seen.

Codes (all small integers, 0 = padding): items PAD/OOV/FIRST_ITEM as in datasets/schema.py; event types
1 + index (0 padding, the last code for types outside the vocabulary); nudges 0 = none, 1 = unknown, 2.. arms;
profile columns 0 = unknown, 1.. levels. No torch here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
from seqrec.datasets.schema import DEFAULT_REWARDS, EVENT_TYPES, FIRST_ITEM, OOV

US_PER_HOUR = 3_600_000_000
NO_NUDGE, UNKNOWN_NUDGE, FIRST_NUDGE = 0, 1, 2


class OfferError(ValueError):
    """An event table that holds no usable offers (the message says what is missing)."""


@dataclass(frozen=True)
class OfferSpec:
    """How offers are read from a log."""

    history: int = 20                  # W: events of history kept per offer
    attribution_hours: float = 168.0   # a response counts for an offer within this many hours (and before the next)
    rewards: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_REWARDS))
    profile: tuple[str, ...] = ()      # free feature columns describing the customer (e.g. segment, age_band)

    def __post_init__(self) -> None:
        if isinstance(self.history, bool) or not isinstance(self.history, int) or self.history < 1:
            raise ValueError(f"offers.history must be an integer >= 1; got {self.history!r}")
        if not self.attribution_hours > 0:
            raise ValueError(f"offers.attribution_hours must be > 0; got {self.attribution_hours!r}")


@dataclass(frozen=True)
class OfferVocab:
    """Codes of items, event types, nudges and profile levels, fixed from a training log."""

    items: tuple[str, ...]                         # item i has code FIRST_ITEM + i
    nudges: tuple[str, ...]                        # nudge j has code FIRST_NUDGE + j
    event_types: tuple[str, ...] = EVENT_TYPES     # type k has code 1 + k; anything else 1 + len
    profile: tuple[tuple[str, tuple[str, ...]], ...] = ()   # (column, levels): level l has code 1 + l

    @property
    def n_items(self) -> int:
        """Item codes in use, padding and OOV included."""
        return FIRST_ITEM + len(self.items)

    @property
    def n_nudges(self) -> int:
        return FIRST_NUDGE + len(self.nudges)

    @property
    def n_events(self) -> int:
        return 2 + len(self.event_types)

    def item_codes(self, ids: Sequence | np.ndarray) -> np.ndarray:
        return _codes(ids, self.items, FIRST_ITEM, OOV)

    def nudge_codes(self, ids: Sequence | np.ndarray) -> np.ndarray:
        """Codes of nudge ids; None/null -> NO_NUDGE, an id outside the vocabulary -> UNKNOWN_NUDGE."""
        arr = pd.Series(np.asarray(ids, dtype=object))
        codes = _codes(arr.fillna("").to_numpy(), self.nudges, FIRST_NUDGE, UNKNOWN_NUDGE)
        return np.where(arr.isna().to_numpy(), NO_NUDGE, codes)

    def event_codes(self, types: Sequence | np.ndarray) -> np.ndarray:
        return _codes(types, self.event_types, 1, 1 + len(self.event_types))

    def profile_codes(self, columns: Mapping[str, np.ndarray], n: int) -> np.ndarray:
        """(n, C) codes of the profile columns (0 where a value or a column is missing)."""
        out = np.zeros((n, len(self.profile)), np.int64)
        for c, (name, levels) in enumerate(self.profile):
            if name in columns:
                out[:, c] = _codes(np.asarray(columns[name], dtype=object), levels, 1, 0)
        return out

    def to_dict(self) -> dict:
        return {"items": list(self.items), "nudges": list(self.nudges), "event_types": list(self.event_types),
                "profile": [[name, list(levels)] for name, levels in self.profile]}

    @staticmethod
    def from_dict(d: Mapping) -> OfferVocab:
        return OfferVocab(tuple(d["items"]), tuple(d["nudges"]), tuple(d["event_types"]),
                          tuple((name, tuple(levels)) for name, levels in d["profile"]))

    @staticmethod
    def fit(table: pa.Table, profile: Sequence[str] = (), nudges: Sequence[str] | None = None,
            items: Sequence[str] | None = None) -> OfferVocab:
        """The vocabulary of a log: its items and nudges (or the given ones, e.g. a catalogue's), the profile
        columns' levels, sorted so that the same log always gives the same codes."""
        missing = [c for c in profile if c not in table.column_names]
        if missing:
            raise OfferError(f"profile column(s) {missing} are not in the log; columns: "
                             f"{', '.join(table.column_names)}")
        col = _column(table, "item_id")
        items = tuple(items) if items is not None else tuple(sorted(set(col[pd.notna(col)].astype(str))))
        if nudges is None:
            nud = _column(table, "nudge_id") if "nudge_id" in table.column_names else np.array([], object)
            nudges = sorted(set(nud[pd.notna(nud)].astype(str)))
        levels = tuple((c, tuple(sorted(set(v[pd.notna(v)].astype(str))))) for c, v in
                       ((c, _column(table, c)) for c in profile))
        return OfferVocab(items, tuple(nudges), EVENT_TYPES, levels)


@dataclass(frozen=True)
class OfferRows:
    """N offers of a log (arrays share the row order: by customer, then time)."""

    user: np.ndarray          # (N,) the customer's key as logged
    time_us: np.ndarray       # (N,) int64 time of the offer
    item: np.ndarray          # (N,) int64 item code of the offered product
    nudge: np.ndarray         # (N,) int64 nudge code of the nudge shown
    propensity: np.ndarray    # (N,) float64 joint propensity P(product) * P(nudge | product) of the logger
    reward: np.ndarray        # (N,) float64 attributed response
    history: np.ndarray       # (N, W, 3) int64 (item, event type, nudge) codes before the offer, newest last
    profile: np.ndarray       # (N, C) int64 profile codes
    next_row: np.ndarray      # (N,) int64 row of the customer's next offer, -1 for the last
    contact: np.ndarray       # (N,) int64 the offer's number among the customer's offers (0 first)
    source_row: np.ndarray    # (N,) int64 row of the offer in the event table
    product_chosen: bool = True   # the logger chose the product (a product propensity was logged); False: only
                                  # the nudge was the system's choice, on a product the customer came to

    def __len__(self) -> int:
        return len(self.item)

    def take(self, rows: np.ndarray) -> OfferRows:
        """Rows `rows` (next_row renumbered inside the subset; -1 where the next offer is left out)."""
        rows = np.asarray(rows, dtype=np.int64)
        new = np.full(len(self), -1, np.int64)
        new[rows] = np.arange(len(rows))
        nxt = self.next_row[rows]
        return OfferRows(self.user[rows], self.time_us[rows], self.item[rows], self.nudge[rows],
                         self.propensity[rows], self.reward[rows], self.history[rows], self.profile[rows],
                         np.where(nxt >= 0, new[np.maximum(nxt, 0)], -1), self.contact[rows], self.source_row[rows],
                         self.product_chosen)


class EventHistory:
    """A log's events as codes sorted by (customer, time): the history any moment could have seen. Events can be
    added as they happen (`add`), as a policy serving a campaign sees them."""

    def __init__(self, vocab: OfferVocab, window: int) -> None:
        self.vocab, self.window = vocab, window
        self._parts: list[tuple[np.ndarray, ...]] = []
        self._sorted: tuple[np.ndarray, ...] | None = None

    def add(self, table: pa.Table) -> None:
        """Add events (user_id, item_id, event_type, timestamp, optional nudge_id) in the event schema."""
        if table.num_rows:
            self._parts.append(_event_codes(table, self.vocab))
            self._sorted = None

    def _arrays(self) -> tuple[np.ndarray, ...]:
        if self._sorted is None:
            if not self._parts:
                self._parts.append(tuple(np.zeros(0, np.int64) for _ in range(5)))
            cols = [np.concatenate(c) for c in zip(*self._parts)]
            order = np.lexsort((np.arange(len(cols[0])), cols[1], cols[0]))
            self._sorted = tuple(c[order] for c in cols)
            self._parts = [self._sorted]
        return self._sorted

    def before(self, users: np.ndarray, time_us: np.ndarray) -> np.ndarray:
        """(Q, W, 3) codes of each customer's last W events strictly before the time (integer user keys)."""
        user, t, item, etype, nudge = self._arrays()
        users, time_us = np.asarray(users, np.int64), np.asarray(time_us, np.int64)
        q = len(users)
        # merge queries before events of the same (user, time): a query's merged rank minus the queries before it
        # is the number of events sorted before it
        all_u = np.concatenate([user, users])
        all_t = np.concatenate([t, time_us])
        flag = np.concatenate([np.ones(len(user), np.int8), np.zeros(q, np.int8)])
        order = np.lexsort((flag, all_t, all_u))
        rank = np.empty(len(order), np.int64)
        rank[order] = np.arange(len(order))
        qrank = rank[len(user):]
        queries_before = np.searchsorted(np.sort(qrank), qrank)
        end = qrank - queries_before                                     # (Q,) events before each query
        start = np.searchsorted(user, users, side="left")                # (Q,) the customer's first event
        return _windows(np.stack([item, etype, nudge], axis=1), start, end, self.window)


def offer_rows(table: pa.Table, vocab: OfferVocab, spec: OfferSpec) -> OfferRows:
    """The offers of an event table with their histories, rewards and links (see the module docstring)."""
    for name in ("user_id", "item_id", "event_type", "timestamp"):
        if name not in table.column_names:
            raise OfferError(f"the log has no {name!r} column")
    if "nudge_id" not in table.column_names or "propensity" not in table.column_names:
        raise OfferError("the log has no offers: an offer is an event with a nudge_id and its propensity")
    user_raw = _column(table, "user_id")
    user_code, _ = pd.factorize(pd.Series(user_raw), sort=True)
    t = _times(table)
    order = np.lexsort((np.arange(table.num_rows), t, user_code))
    u, t = user_code[order], t[order]
    item = vocab.item_codes(_column(table, "item_id"))[order]
    etype_names = _column(table, "event_type")[order]
    etype = vocab.event_codes(etype_names)
    nudge = vocab.nudge_codes(_column(table, "nudge_id"))[order]
    prop = pd.to_numeric(pd.Series(_column(table, "propensity")[order]), errors="coerce").to_numpy(np.float64)
    pp = np.full(len(prop), np.nan)
    if "product_propensity" in table.column_names:
        pp = pd.to_numeric(pd.Series(_column(table, "product_propensity")[order]), errors="coerce").to_numpy(float)
        prop = prop * np.where(np.isnan(pp), 1.0, pp)
    is_offer = (nudge != NO_NUDGE) & np.isfinite(prop) & (prop > 0)
    offers = np.flatnonzero(is_offer)
    if not len(offers):
        raise OfferError("the log has no offers: no event carries both a nudge_id and a propensity")
    reward_of = np.array([float(spec.rewards.get(name, 0.0)) for name in vocab.event_types] + [0.0])
    value = np.concatenate([[0.0], reward_of])[etype]                                    # (E,) per event
    # each event's latest offer of the same customer at or before it
    last = np.maximum.accumulate(np.where(is_offer, np.arange(len(u)), -1))
    ok = (last >= 0)
    ok &= u == u[np.maximum(last, 0)]
    ok &= ~is_offer & (item == item[np.maximum(last, 0)])
    ok &= t - t[np.maximum(last, 0)] <= spec.attribution_hours * US_PER_HOUR
    best = np.zeros(len(u))
    np.maximum.at(best, last[ok], value[ok])
    # histories: the W events before each offer in sorted order, same customer
    start = np.searchsorted(u, u, side="left")
    hist = _windows(np.stack([item, etype, nudge], axis=1), start[offers], offers, spec.history)
    ou = u[offers]
    nxt = np.where(np.r_[ou[1:] == ou[:-1], False], np.arange(1, len(offers) + 1), -1)
    first = np.r_[True, ou[1:] != ou[:-1]]
    contact = np.arange(len(offers)) - np.maximum.accumulate(np.where(first, np.arange(len(offers)), 0))
    src = order[offers]
    profile = vocab.profile_codes({c: _column(table, c)[src] for c, _ in vocab.profile
                                   if c in table.column_names}, len(offers))
    return OfferRows(user_raw[src], t[offers], item[offers], nudge[offers], prop[offers], best[offers], hist,
                     profile, nxt.astype(np.int64), contact.astype(np.int64), src.astype(np.int64),
                     bool(np.isfinite(pp[offers]).any()))


# ------------------------------------------------------------------------------------------------ helpers


def _column(table: pa.Table, name: str) -> np.ndarray:
    """One column as numpy (dictionary columns, as a prepared folder stores them, decoded; nulls as None)."""
    col = table.column(name)
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    return col.to_numpy(zero_copy_only=False)


def _times(table: pa.Table) -> np.ndarray:
    col = table.column("timestamp")
    if pa.types.is_timestamp(col.type):
        return col.cast(pa.timestamp("us", tz=col.type.tz)).cast(pa.int64()).to_numpy(zero_copy_only=False)
    return np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.int64)


def _codes(values: Sequence | np.ndarray, vocab: Sequence[str], first: int, unknown: int) -> np.ndarray:
    """first + index of each value in vocab, `unknown` for values outside it."""
    index = pd.Index(list(vocab))
    pos = index.get_indexer(pd.Series(np.asarray(values, dtype=object)).astype(str))
    return np.where(pos >= 0, pos + first, unknown).astype(np.int64)


def _event_codes(table: pa.Table, vocab: OfferVocab) -> tuple[np.ndarray, ...]:
    """(user, time, item, event type, nudge) codes of an event table with integer user keys."""
    nudge = (vocab.nudge_codes(_column(table, "nudge_id")) if "nudge_id" in table.column_names
             else np.zeros(table.num_rows, np.int64))
    return (np.asarray(_column(table, "user_id"), np.int64), _times(table),
            vocab.item_codes(_column(table, "item_id")), vocab.event_codes(_column(table, "event_type")), nudge)


def _windows(tokens: np.ndarray, start: np.ndarray, end: np.ndarray, window: int) -> np.ndarray:
    """(Q, W, k): tokens[max(start, end - W):end] per query, right-aligned, zero-padded on the left."""
    idx = end[:, None] - window + np.arange(window)[None]                                # (Q, W)
    valid = idx >= start[:, None]
    out = tokens[np.clip(idx, 0, max(len(tokens) - 1, 0))] if len(tokens) else np.zeros((*idx.shape, 3), np.int64)
    return np.where(valid[:, :, None], out, 0).astype(np.int64)
