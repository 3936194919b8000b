"""Validated events -> one state row per session: the pure step between reading events and scoring them.

Both scoring engines call this on groups of whole users (the local engine on a user-hash bucket, a Ray engine
on a group of users), after taking out the duplicates as prepare does (seqrec/datasets/duplicates.py):
`session_states` cuts sessions as prepare does (the SDK's session id, else an inactivity gap; the same
functions of datasets/sessions.py) and keeps each session's last W item ids, the state a recommendation starts
from. Every session of the input becomes exactly one row, however short.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from seqrec.datasets import sessions as S
from seqrec.datasets.duplicates import event_times, id_codes
from seqrec.datasets.schema import TIMESTAMP_TYPE


def session_states(events: pa.Table, window: int, gap_us: int, columns: Sequence[str] = (),
                   ends: bool = False, event_codes: np.ndarray | None = None) -> pa.Table:
    """Events of whole users (user_id, item_id, timestamp, optional session_id and `columns`) -> one row per
    session, sessions ordered by (user, start):

    user_id, [session_id], session_start (timestamp[us, UTC]), events (int32: the session's length),
    items (list of the last `window` item ids, oldest first), and each of `columns` present in `events` as
    text, its value on the session's first event (user features for the two-tower's user tower); with `ends`,
    session_end (timestamp[us, UTC]): the time of the session's last event; with `event_codes` ((N,) int, one per
    event: the run's event code + 1, as prepare's state_event holds them), item_events (list of int8 aligned
    with items).
    """
    n = events.num_rows
    user = id_codes(events.column("user_id"))
    ts = event_times(events)
    has_session = "session_id" in events.column_names
    order = S.event_order(user, ts)  # (N,) stable: ties keep input order
    user, ts = user[order], ts[order]
    session = None
    if has_session:
        session = id_codes(events.column("session_id"))[order]
        if not S.sessions_contiguous(user, session):  # interleaved SDK sessions: group them, time order inside
            regroup = np.lexsort((np.arange(n), session, user))
            order, user, ts, session = order[regroup], user[regroup], ts[regroup], session[regroup]
    starts = S.session_starts(user, ts, session, gap_us) if n else np.zeros(0, bool)
    first = np.flatnonzero(starts)  # (S,) first row of each session
    last = np.r_[first[1:], n] - 1  # (S,) its last row
    lengths = last - first + 1
    begin = np.maximum(first, last - window + 1)  # (S,) first row inside the window
    counts = last - begin + 1
    offsets = np.r_[0, np.cumsum(counts)].astype(np.int32)  # (S + 1,)
    rows = np.arange(offsets[-1]) - np.repeat(offsets[:-1], counts) + np.repeat(begin, counts)  # (sum counts,)
    item_ids = events.column("item_id").take(pa.array(order[rows])).combine_chunks()
    head = pa.array(order[first])
    out = {"user_id": events.column("user_id").take(head)}
    if has_session:
        out["session_id"] = events.column("session_id").take(head)
    out["session_start"] = pa.array(ts[first], pa.int64()).cast(TIMESTAMP_TYPE)
    if ends:
        out["session_end"] = pa.array(ts[last], pa.int64()).cast(TIMESTAMP_TYPE)
    out["events"] = pa.array(lengths.astype(np.int32))
    out["items"] = pa.ListArray.from_arrays(pa.array(offsets), item_ids)
    if event_codes is not None:
        codes = pa.array(np.asarray(event_codes)[order[rows]].astype(np.int8))  # (sum counts,)
        out["item_events"] = pa.ListArray.from_arrays(pa.array(offsets), codes)
    for c in columns:
        if c in events.column_names:
            col = events.column(c).take(head)
            out[c] = pc.cast(col, pa.string()) if not pa.types.is_string(col.type) else col
    return pa.table(out)
