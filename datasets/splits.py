"""Sessions over all buckets: numbered by start time, a seeded sample of them, and their train/valid/test split."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

LOO_SPLIT = 3  # session-level code under leave-one-out: its events are cut into all three splits


def number_sessions(per_bucket: list[dict], user_ids_are_int: bool, max_sessions: int | None, split: str,
                    fractions: tuple[float, float, float], seed: int) -> tuple[pa.Table, dict[int, np.ndarray], dict]:
    """Number sessions by start time, keep a seeded sample of `max_sessions`, assign splits.

    Returns the session table (one row per kept session, numbered 0..n-1 by start), the per-bucket lookup
    from local session index to that number (-1: sampled out), and the sample counts for the manifest.
    """
    parts = []
    for pb in per_bucket:
        s = pb["sessions"]
        cols = {"start": pa.array(s["start"], pa.int64()), "user_id": s["user_id"]}
        if "session_id" in s:
            cols["session_id"] = s["session_id"]
        n = len(s["start"])
        cols["bucket"] = pa.array(np.full(n, pb["bucket"], np.int32))
        cols["local"] = pa.array(np.arange(n, dtype=np.int64))
        cols["length"] = pa.array(s["length"].astype(np.int64))
        parts.append(pa.table(cols))
    if parts:
        sessions = pa.concat_tables(parts)
    else:
        id_type = pa.int64() if user_ids_are_int else pa.string()
        sessions = pa.table({"start": pa.array([], pa.int64()), "user_id": pa.array([], id_type),
                             "bucket": pa.array([], pa.int32()), "local": pa.array([], pa.int64()),
                             "length": pa.array([], pa.int64())})
    keys = [("start", "ascending"), ("user_id", "ascending")]
    if "session_id" in sessions.column_names:
        keys.append(("session_id", "ascending"))
    keys += [("bucket", "ascending"), ("local", "ascending")]
    sessions = sessions.sort_by(keys)  # global session index = rank by start time: independent of buckets
    events_before = int(pc.sum(sessions.column("length")).as_py() or 0)
    chosen = sample_sessions(sessions.num_rows, max_sessions, seed)
    if chosen is not None:
        sessions = sessions.take(pa.array(chosen))
    n = sessions.num_rows
    sample = {"sampled_out": sum(len(pb["sessions"]["start"]) for pb in per_bucket) - n,
              "events_sampled_out": events_before - int(pc.sum(sessions.column("length")).as_py() or 0)}
    codes = assign_splits(n, split, fractions, seed)
    sessions = sessions.append_column("session", pa.array(np.arange(n, dtype=np.int64)))
    sessions = sessions.append_column("split", pa.array(codes.astype(np.int8)))
    return sessions, _session_lookup(sessions, per_bucket), sample


def sample_sessions(n_sessions: int, max_sessions: int | None, seed: int) -> np.ndarray | None:
    """Ranks (ascending) of a uniform random subset of exactly `max_sessions` of `n_sessions`, seeded;
    None when there is nothing to sample (no limit, or no more sessions than the limit).

    The generator is seeded with (seed, 1) so that the sample and the split (seeded with `seed`) are
    independent draws; ranks are by start time, so the sample does not depend on the bucketing.
    """
    if max_sessions is None or n_sessions <= max_sessions:
        return None
    rng = np.random.default_rng([seed, 1])
    return np.sort(rng.choice(n_sessions, size=max_sessions, replace=False))


def assign_splits(n_sessions: int, how: str, fractions: tuple[float, float, float], seed: int) -> np.ndarray:
    """Split code (0 train, 1 valid, 2 test) per session, sessions numbered by start time.

    random: a seeded permutation cut at the fractions (exact proportions); temporal: the earliest
    sessions train, the latest test; loo: every session is in all three (LOO_SPLIT), cut per event later.
    """
    if how == "loo":
        return np.full(n_sessions, LOO_SPLIT, np.int8)
    n_valid = int(round(n_sessions * fractions[1]))
    n_test = int(round(n_sessions * fractions[2]))
    n_train = n_sessions - n_valid - n_test
    by_rank = np.repeat(np.arange(3, dtype=np.int8), [n_train, n_valid, n_test])
    if how == "temporal":
        return by_rank
    out = np.empty(n_sessions, np.int8)
    out[np.random.default_rng(seed).permutation(n_sessions)] = by_rank
    return out


def _session_lookup(sessions: pa.Table, per_bucket: list[dict]) -> dict[int, np.ndarray]:
    """Per bucket, the array mapping its local session index to the global session number (-1: not kept)."""
    bucket_col = sessions.column("bucket").to_numpy()
    local_col = sessions.column("local").to_numpy()
    global_col = sessions.column("session").to_numpy()
    out = {}
    for pb in per_bucket:
        sel = bucket_col == pb["bucket"]
        to_global = np.full(len(pb["sessions"]["start"]), -1, np.int64)
        to_global[local_col[sel]] = global_col[sel]
        out[pb["bucket"]] = to_global
    return out
