"""Pure array functions: order events, find duplicates, cut sessions, build state windows.

Everything here works on NumPy arrays of one user-hash bucket, so a log larger than memory is processed
bucket by bucket. Codes are integers standing for ids (raw int ids or dictionary codes of string ids).
"""

from __future__ import annotations

import numpy as np

_INT64_MAX = np.iinfo(np.int64).max


def gap_us(minutes: float) -> int:
    """Inactivity gap in microseconds; inf (or any gap beyond int64) never cuts: one session per user."""
    us = minutes * 60e6
    return _INT64_MAX if us >= _INT64_MAX else int(us)


def event_order(user: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Stable permutation sorting rows by (user, time): rows with equal keys keep their input order."""
    return np.lexsort((ts, user))


def duplicate_mask(user: np.ndarray, ts: np.ndarray, item: np.ndarray, event: np.ndarray) -> np.ndarray:
    """True for rows (in event_order) repeating an earlier row's user, item, event and time.

    Only rows sharing (user, time) with a neighbour can be duplicates; those few are sorted again by
    (item, event) with their position as the last key, so the first occurrence in the input is kept.
    """
    n = len(user)
    dup = np.zeros(n, bool)
    if n < 2:
        return dup
    same = (user[1:] == user[:-1]) & (ts[1:] == ts[:-1])
    if not same.any():
        return dup
    in_run = np.zeros(n, bool)
    in_run[1:] |= same
    in_run[:-1] |= same
    c = np.flatnonzero(in_run)
    sub = c[np.lexsort((c, event[c], item[c], ts[c], user[c]))]
    again = ((user[sub[1:]] == user[sub[:-1]]) & (ts[sub[1:]] == ts[sub[:-1]])
             & (item[sub[1:]] == item[sub[:-1]]) & (event[sub[1:]] == event[sub[:-1]]))
    dup[sub[1:][again]] = True
    return dup


def sessions_contiguous(user: np.ndarray, session: np.ndarray) -> bool:
    """True if, in (user, time) order, each session id forms one run (no interleaved sessions).

    Cheap check by counting runs per session code; a session id shared by two users counts as two runs,
    which only makes the caller fall back to the always-correct regrouping sort.
    """
    if len(user) < 2:
        return True
    run_start = np.r_[True, (session[1:] != session[:-1]) | (user[1:] != user[:-1])]
    codes = session[run_start]
    return len(np.unique(codes)) == len(codes)


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


def windows(items: np.ndarray, position: np.ndarray, width: int) -> np.ndarray:
    """(N, width) int32 state windows: row t holds the `width` items before it in its session, left-padded.

    `items` are the rows of whole sessions in order and `position[t]` is t's index inside its session, so
    row t sees items[t - j] for j = 1..width only where position[t] >= j. Built column by column, O(N * W)
    with no (N, W) index temporaries.
    """
    n = len(items)
    out = np.zeros((n, width), np.int32)
    col = np.empty(n, np.int32)
    for j in range(1, min(width, n) + 1):
        col[:j] = 0
        col[j:] = items[:-j]
        col[position < j] = 0
        out[:, width - j] = col
    return out


def next_windows(state: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Next-state windows: drop the oldest item of each state and append the row's own item."""
    nxt = np.empty_like(state)
    nxt[:, :-1] = state[:, 1:]
    nxt[:, -1] = items
    return nxt


def first_index(starts: np.ndarray) -> np.ndarray:
    """For each row, the index of the first row of its session (from the session_starts mask)."""
    idx = np.where(starts, np.arange(len(starts)), 0)
    return np.maximum.accumulate(idx) if len(idx) else idx
