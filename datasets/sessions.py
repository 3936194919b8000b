"""Pure array functions: order events, find duplicates, cut sessions, build state windows.

Everything here works on NumPy arrays of one user-hash bucket, so a log larger than memory is processed
bucket by bucket. Codes are integers standing for ids (raw int ids or dictionary codes of string ids).
"""

from __future__ import annotations

import numpy as np


def event_order(user: np.ndarray, ts: np.ndarray, item: np.ndarray, event: np.ndarray,
                origin: np.ndarray) -> np.ndarray:
    """Permutation sorting rows by (user, time, item, event, origin); duplicates end up adjacent.

    `origin` (file index << 40 | row) breaks ties so the first occurrence in the input is kept.
    """
    tie = (event.astype(np.int64) << 56) | origin  # event < 2^7, origin < 2^56
    return np.lexsort((tie, item, ts, user))


def duplicate_mask(user: np.ndarray, ts: np.ndarray, item: np.ndarray, event: np.ndarray) -> np.ndarray:
    """True for rows (already in event_order) equal to the previous row in user, item, event and time."""
    dup = np.zeros(len(user), bool)
    if len(user) > 1:
        dup[1:] = (user[1:] == user[:-1]) & (ts[1:] == ts[:-1]) & (item[1:] == item[:-1]) & (
            event[1:] == event[:-1])
    return dup


def session_starts(user: np.ndarray, ts: np.ndarray, session: np.ndarray | None, gap_us: int) -> np.ndarray:
    """True where a new session begins: new user, new SDK session id, or (without ids) a gap > gap_us."""
    n = len(user)
    start = np.ones(n, bool)
    if n > 1:
        new = user[1:] != user[:-1]
        if session is not None:
            new |= session[1:] != session[:-1]
        else:
            new |= (ts[1:] - ts[:-1]) > gap_us
        start[1:] = new
    return start


def windows(items: np.ndarray, first: np.ndarray, width: int, include_current: bool) -> np.ndarray:
    """(N, width) int32 of the last `width` items of each row's session, left-padded with 0.

    Row t sees items[t-width .. t-1] (state) or items[t-width+1 .. t] (next state, include_current),
    never an item before `first[t]`, the index of its session's first row.
    """
    n = len(items)
    end = np.arange(n, dtype=np.int64) + (1 if include_current else 0)  # exclusive end of the window
    idx = end[:, None] + np.arange(-width, 0, dtype=np.int64)[None, :]  # (N, W)
    valid = idx >= first[:, None]
    out = np.where(valid, items[np.clip(idx, 0, max(n - 1, 0))] if n else 0, 0)
    return out.astype(np.int32, copy=False)


def first_index(starts: np.ndarray) -> np.ndarray:
    """For each row, the index of the first row of its session (from the session_starts mask)."""
    idx = np.where(starts, np.arange(len(starts)), 0)
    return np.maximum.accumulate(idx) if len(idx) else idx
