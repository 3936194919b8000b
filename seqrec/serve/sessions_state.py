"""Validated events -> one state row per session: the pure step between reading events and scoring them.

Both scoring engines call these on groups of whole users (the local engine on a user-hash bucket, a Ray engine
on a group of users): `find_duplicates` marks the rows `seqrec prepare` quarantines as duplicate_event, and
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
from seqrec.datasets.schema import TIMESTAMP_TYPE


def id_codes(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """(N,) int64 stand-ins for ids: the ints themselves, or dictionary codes of strings (equal ids, equal codes)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_dictionary(arr.type):
        arr = arr.cast(arr.type.value_type)
    if pa.types.is_integer(arr.type):
        return arr.fill_null(-1).to_numpy().astype(np.int64)
    return pc.dictionary_encode(arr).indices.to_numpy(zero_copy_only=False).astype(np.int64)


def _times(events: pa.Table) -> np.ndarray:
    """(N,) int64 microseconds of the timestamp column (int64 from the validator, or a timestamp type)."""
    return events.column("timestamp").combine_chunks().cast(pa.int64()).to_numpy()


def find_duplicates(events: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Rows in (user, time) order (a stable permutation, (N,)) and which of them (N,) bool repeat an earlier
    row's user, item, event code and time: what prepare quarantines as duplicate_event (the first is kept)."""
    user, item = id_codes(events.column("user_id")), id_codes(events.column("item_id"))
    ts, event = _times(events), events.column("event").combine_chunks().to_numpy()
    order = S.event_order(user, ts)
    return order, S.duplicate_mask(user[order], ts[order], item[order], event[order])


def session_states(events: pa.Table, window: int, gap_us: int, columns: Sequence[str] = ()) -> pa.Table:
    """Events of whole users (user_id, item_id, timestamp, optional session_id and `columns`) -> one row per
    session, sessions ordered by (user, start):

    user_id, [session_id], session_start (timestamp[us, UTC]), events (int32: the session's length),
    items (list of the last `window` item ids, oldest first), and each of `columns` present in `events` as
    text, its value on the session's first event (user features for the two-tower's user tower).
    """
    n = events.num_rows
    user = id_codes(events.column("user_id"))
    ts = _times(events)
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
    out["events"] = pa.array(lengths.astype(np.int32))
    out["items"] = pa.ListArray.from_arrays(pa.array(offsets), item_ids)
    for c in columns:
        if c in events.column_names:
            col = events.column(c).take(head)
            out[c] = pc.cast(col, pa.string()) if not pa.types.is_string(col.type) else col
    return pa.table(out)
