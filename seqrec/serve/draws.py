"""Seeded draws that do not depend on batching: a key per session, a uniform per (session, rank, seed), and the
inverse-CDF draw of one cell per row. The uniform is a hash, not a shared random stream: that makes batch scoring's
draws (seqrec/serve/scoring.py, seqrec/serve/offers.py) the same in any batch, process or resume."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: (N,) uint64 -> (N,) uint64, well mixed (wrapping arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _hash_column(col: pa.ChunkedArray) -> np.ndarray:
    """(B,) uint64 hash of each value of an id column (ints and strings; deterministic across processes)."""
    arr = col.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.cast(arr.type.value_type)
    if pa.types.is_integer(arr.type):
        return _mix(arr.fill_null(-1).to_numpy().astype(np.int64).view(np.uint64))
    values = np.asarray(arr.to_numpy(zero_copy_only=False), dtype=object)
    return pd.util.hash_array(values).astype(np.uint64)


def session_keys(sessions: pa.Table) -> np.ndarray:
    """(B,) uint64 key of each session: a hash of its user id, session id (if any) and start time."""
    h = _hash_column(sessions.column("user_id"))
    if "session_id" in sessions.column_names:
        h = _mix(h ^ _mix(_hash_column(sessions.column("session_id")) + np.uint64(1)))
    start = sessions.column("session_start").combine_chunks().cast(pa.int64()).to_numpy().view(np.uint64)
    return _mix(h ^ _mix(start + np.uint64(2)))


def uniforms(keys: np.ndarray, rank: np.ndarray, seed: int) -> np.ndarray:
    """(N,) uniforms in [0, 1) from (N,) session keys, (N,) ranks and the seed: the same for the same triple."""
    salt = _mix(np.full(1, seed, np.uint64) + np.uint64(0x9E3779B97F4A7C15))
    x = _mix(keys ^ salt) + rank.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    return (_mix(x) >> np.uint64(11)).astype(np.float64) * 2.0**-53


def draw_arms(probs: np.ndarray, u: np.ndarray) -> np.ndarray:
    """(N, A) probabilities and (N,) uniforms -> (N,) arm per row by inverse CDF; never an arm of probability 0."""
    cdf = np.cumsum(probs, axis=1)
    arm = (cdf <= (u * cdf[:, -1])[:, None]).sum(axis=1)
    last = probs.shape[1] - 1 - np.argmax(probs[:, ::-1] > 0, axis=1)
    return np.minimum(arm, last)
