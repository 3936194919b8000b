"""Batch scoring with a run's offer learner (RUN/offers, docs/offers.md): one offer, (product, nudge), per scored
session, decided as the abtest's arm B decides a contact (seqrec/abtest/offers.py), with its propensities.

- The state: the customer's last W events (item, event type, nudge) up to the session's last event, over
  everything the scoring input holds for the customer (`offer_states`, by datasets/offers.EventHistory: the
  codes training used), and the profile columns of `[offers] profile`, each the value on the session's first
  event (the user tower's rule; a level unseen in training and a missing column get the unknown code 0).
- The decision: Q of every (product, nudge) pair (rl/offers/decide.q_values), the pairs allowed as training
  allowed them (products the history shows bought are not offered again; the nudges the catalogue allows with
  each product: the mask saved with the learner), the decision layer's joint probabilities over them
  (`OfferSettings.decision`: greedy, epsilon-greedy or softmax; default epsilon-greedy, epsilon 0.02 as the
  abtest's arm B), and one draw by the hashed uniform of (seed, session key, rank 0), so a session's offer does
  not depend on batching (seqrec/serve/draws.py).
- The columns (`OFFER_COLUMNS`, on every row of the session): offer_item_id, offer_nudge_id, offer_q (Q of the
  pair), offer_joint_propensity (the probability the decision layer gave that exact pair) and
  offer_product_propensity (its product's marginal: the sum over the product's nudges).

Shapes: S sessions, W offer history, C profile columns, P products, A nudges.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from seqrec.core.config import ConfigError
from seqrec.datasets.duplicates import event_times
from seqrec.datasets.inputs import file_sha256
from seqrec.datasets.offers import EventHistory
from seqrec.rl.bandits.joint import JointConfig
from seqrec.rl.offers.decide import allowed_pairs, bought_before, offer_probabilities, q_values
from seqrec.serve.draws import draw_arms
from seqrec.serve.offer_settings import OfferSettings
from seqrec.training.offer_store import FittedOffers, load_offers

OFFER_COLUMNS = ("offer_item_id", "offer_nudge_id", "offer_q", "offer_joint_propensity", "offer_product_propensity")
HISTORY = "offer_history"   # the states' column of each session's (W * 3) history codes
END = "session_end"         # the states' column of each session's last event time (session_states(ends=True))
OFFER_RANK = 0              # the offer's uniform: rank 0 of draws.uniforms (the nudge draws use ranks 1..top)
CHUNK = 512                 # sessions per pass of the Q network: bounds the (chunk, P, A) grids
ROW_MULTIPLE = 64           # passes padded to a multiple of this many rows, as scoring.py's: batching-free bits


@dataclass(frozen=True)
class OfferScorer:
    """A run's loaded offer learner and its decision layer: everything `decide_offers` reads."""

    fitted: FittedOffers
    nudge_mask: np.ndarray            # (P, A) nudges allowed with each product
    decision: JointConfig
    item_ids: pa.Array                # (P,) the products' ids (the run's item id type where it is an integer)

    @property
    def profile(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.fitted.vocab.profile)

    @property
    def window(self) -> int:
        return self.fitted.config.history


def load_offer_scorer(run: Path, settings: OfferSettings | None, id_type: pa.DataType,
                      seed: int) -> tuple[OfferScorer | None, dict, dict]:
    """(scorer or None, what enters the config hash, the manifest's "offers" entry) for a run folder; settings
    None: a caller that builds no offer histories (no offers)."""
    folder = run / "offers"
    if settings is None:
        return None, {}, {"used": False, "reason": "not asked for by this caller"}
    if settings.use is False:
        return None, {}, {"used": False, "reason": "scored without offers (--no-offers)"}
    if not (folder / "offers.json").exists():
        if settings.use:
            raise ConfigError(f"{folder}/offers.json: the run has no offer learner (train it with an [offers] "
                              "table on a log with offers), so --offers cannot be used")
        return None, {}, {"used": False, "reason": f"no offer learner in {folder}"}
    fitted, mask = load_offers(folder)
    ids = pa.array(list(fitted.vocab.items), pa.string())
    if pa.types.is_integer(id_type):
        try:
            ids = ids.cast(id_type)
        except (pa.ArrowInvalid, ValueError):
            pass   # ids that are no integers stay text
    decision = JointConfig(**{**asdict(settings.decision), "seed": seed})
    hashed = {"offers": file_sha256(folder / "offers.json") + file_sha256(folder / "model.pt"),
              "offer_decision": json.dumps(asdict(decision), sort_keys=True)}
    info = {"used": True, "learner": str(folder), "decision": asdict(decision), "history": fitted.config.history,
            "profile": [name for name, _ in fitted.vocab.profile], "products": len(fitted.vocab.items),
            "nudges": len(fitted.vocab.nudges), "columns": list(OFFER_COLUMNS)}
    return OfferScorer(fitted, mask, decision, ids), hashed, info


def keep_columns(scorer: OfferScorer | None) -> tuple[str, ...]:
    """The input columns the offers need beyond scoring's own: nudges shown and the profile."""
    return () if scorer is None else ("nudge_id", *scorer.profile)


def offer_states(states: pa.Table, events: pa.Table, scorer: OfferScorer, event_names: Sequence[str]) -> pa.Table:
    """Session states (with END) + HISTORY: each session's customer's last W events up to its end, as the codes
    of datasets/offers.py. `events`: the validated events of whole customers ("event" holds codes into
    `event_names`, the validator's EventTypes.names)."""
    vocab, w = scorer.fitted.vocab, scorer.window
    users, _ = pd.factorize(pd.Series(np.concatenate([_values(events, "user_id"), _values(states, "user_id")])))
    names = np.asarray(list(event_names), dtype=object)
    codes = events.column("event").to_numpy().astype(np.int64)
    table = {"user_id": users[:events.num_rows].astype(np.int64), "item_id": events.column("item_id"),
             "event_type": names[codes], "timestamp": event_times(events)}
    if "nudge_id" in events.column_names:
        table["nudge_id"] = events.column("nudge_id")
    history = EventHistory(vocab, w)
    history.add(pa.table(table))
    end = states.column(END).combine_chunks().cast(pa.int64()).to_numpy()
    hist = history.before(users[events.num_rows:].astype(np.int64), end + 1)               # (S, W, 3)
    flat = pa.array(hist.reshape(-1), pa.int64())
    return states.append_column(HISTORY, pa.FixedSizeListArray.from_arrays(flat, 3 * w))


def decide_offers(scorer: OfferScorer, sessions: pa.Table, u: np.ndarray) -> dict[str, np.ndarray]:
    """Each session's offer from its HISTORY and profile columns, drawn with the (S,) uniforms u: (S,) arrays
    product, nudge (indices into the vocabulary's products and nudges), q, joint, marginal."""
    vocab, w = scorer.fitted.vocab, scorer.window
    if HISTORY not in sessions.column_names:
        raise ValueError(f"the session states have no {HISTORY} column: build them with "
                         "seqrec.serve.engines.bucket_states when the bundle has an offer learner")
    n, p, a = sessions.num_rows, len(vocab.items), len(vocab.nudges)
    hist = sessions.column(HISTORY).combine_chunks().flatten().to_numpy().reshape(n, w, 3)   # (S, W, 3)
    columns = {c: _values(sessions, c) for c in scorer.profile if c in sessions.column_names}
    profile = vocab.profile_codes(columns, n)                                               # (S, C)
    out = {k: np.zeros(n, np.int64) for k in ("product", "nudge")}
    out |= {k: np.zeros(n) for k in ("q", "joint", "marginal")}
    for lo in range(0, n, CHUNK):
        rows = np.arange(lo, min(lo + CHUNK, n))
        padded = np.r_[rows, np.repeat(rows[-1:], -len(rows) % ROW_MULTIPLE)]
        q = q_values(scorer.fitted.model, hist[padded], profile[padded])[:len(rows)]         # (b, P, A)
        allowed = allowed_pairs(bought_before(hist[rows], p), scorer.nudge_mask)            # (b, P, A)
        probs = offer_probabilities(q, allowed, scorer.decision)                             # (b, P, A)
        cell = draw_arms(probs.reshape(len(rows), -1), u[rows])                             # (b,)
        b = np.arange(len(rows))
        product, nudge = cell // a, cell % a
        out["product"][rows], out["nudge"][rows] = product, nudge
        out["q"][rows], out["joint"][rows] = q[b, product, nudge], probs[b, product, nudge]
        out["marginal"][rows] = probs[b, product].sum(axis=1)
    return out


def offer_columns(scorer: OfferScorer, offer: dict[str, np.ndarray], row_session: np.ndarray) -> dict[str, pa.Array]:
    """The OFFER_COLUMNS of the output rows (row_session (N,): each row's session)."""
    product, nudge = offer["product"][row_session], offer["nudge"][row_session]
    return {"offer_item_id": scorer.item_ids.take(pa.array(product)),
            "offer_nudge_id": pa.DictionaryArray.from_arrays(pa.array(nudge.astype(np.int32)),
                                                            pa.array(list(scorer.fitted.vocab.nudges))),
            "offer_q": pa.array(offer["q"][row_session].astype(np.float32)),
            "offer_joint_propensity": pa.array(offer["joint"][row_session], pa.float64()),
            "offer_product_propensity": pa.array(offer["marginal"][row_session], pa.float64())}


def _values(table: pa.Table, name: str) -> np.ndarray:
    """One column as numpy (dictionary columns decoded; nulls as None)."""
    col = table.column(name).combine_chunks()
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    return col.to_numpy(zero_copy_only=False)
