"""Pass 2 of `seqrec prepare`, per user-hash bucket: sort by user and time, take out duplicates, cut sessions,
drop the short ones, count events and items; each bucket is written back sorted (WORK/sessions-B.arrow)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from seqrec.core.faults import kill_point

from . import sessions as S
from .duplicates import find_duplicates, id_codes
from .scatter import BUCKET_THREADS, bucket_paths, read_bucket
from .vocabulary import distinct_items


def sessionize(work: Path, buckets: list[int], schema: pa.Schema, n_types: int, min_length: int, gap: int,
               on_duplicates: Callable[[pa.Table], None],
               on_bucket: Callable[[int], None] | None = None) -> tuple[list[dict], dict]:
    """Pass 2 over `buckets` (in `schema`), two at a time (the sorts and takes release the GIL); each bucket's
    duplicate rows go to `on_duplicates`, in bucket order, its count of kept sessions to `on_bucket` (progress
    lines). Returns per bucket its sorted file and sessions
    (bucket, path, sessions: user_id, start, length, [session_id]) and the counts over all buckets."""
    events_by_type = np.zeros(n_types, np.int64)
    sessions_before = sessions_after = events_dropped = 0
    per_bucket, item_counts = [], []
    with ThreadPoolExecutor(max_workers=BUCKET_THREADS) as pool:
        for r in pool.map(lambda b: _sessionize_bucket(work, b, schema, n_types, min_length, gap), buckets):
            if on_bucket is not None:
                on_bucket(len(r["sessions"]["start"]))
            if r["duplicates"] is not None:
                on_duplicates(r["duplicates"])
            events_by_type += r["events_by_type"]
            sessions_before += r["sessions_before"]
            sessions_after += len(r["sessions"]["start"])
            events_dropped += r["events_dropped"]
            if r["item_counts"] is not None:
                item_counts.append(r["item_counts"])
            per_bucket.append({"bucket": r["bucket"], "path": r["path"], "sessions": r["sessions"]})
            kill_point("prepare.sessions")  # a test hook (seqrec/core/faults.py)
    # only rows in kept sessions count toward the vocabulary
    stats = {"items_seen": distinct_items(item_counts), "events_by_type": events_by_type,
             "sessions_before": int(sessions_before), "sessions_after": int(sessions_after),
             "events_dropped": int(events_dropped), "item_counts": item_counts}
    return per_bucket, stats


def _sessionize_bucket(work: Path, b: int, schema: pa.Schema, n_types: int, min_length: int, gap: int) -> dict:
    """Sort one bucket by user and time, find duplicates, cut and filter sessions, write it back sorted."""
    parts = bucket_paths(work, b)
    t = read_bucket(parts, schema)
    user = id_codes(t.column("user_id"))
    ts = t.column("timestamp").to_numpy()
    event = t.column("event").to_numpy()
    session = id_codes(t.column("session_id")) if "session_id" in t.column_names else None
    order, dup = find_duplicates(t)
    user, ts, event = user[order], ts[order], event[order]
    duplicates = None
    if dup.any():
        duplicates = t.take(pa.array(order[dup]))
        keep = ~dup
        order, user, ts, event = order[keep], user[keep], ts[keep], event[keep]
    if session is not None:
        session = session[order]
        if not S.sessions_contiguous(user, session):  # interleaved SDK sessions: group them, time order inside
            regroup = np.lexsort((np.arange(len(order)), session, user))
            order, user, ts, event, session = (a[regroup] for a in (order, user, ts, event, session))
    starts = S.session_starts(user, ts, session, gap)
    sid = np.cumsum(starts) - 1  # local session index per row
    lengths = np.bincount(sid) if len(sid) else np.empty(0, np.int64)
    long_enough = lengths >= min_length
    row_keep = long_enough[sid]
    new_id = np.cumsum(long_enough) - 1  # renumber kept sessions 0..k-1 in this bucket
    order, ts, sid = order[row_keep], ts[row_keep], new_id[sid[row_keep]]
    kept = t.take(pa.array(order)).append_column("_session", pa.array(sid))
    first_rows = np.flatnonzero(np.r_[True, sid[1:] != sid[:-1]]) if len(sid) else np.empty(0, np.int64)
    sess = {"user_id": kept.column("user_id").take(pa.array(first_rows)),
            "start": ts[first_rows], "length": lengths[long_enough]}
    if "session_id" in kept.column_names:
        sess["session_id"] = kept.column("session_id").take(pa.array(first_rows))
    out_path = work / f"sessions-{b:05d}.arrow"
    with ipc.new_stream(str(out_path), kept.schema) as w:
        w.write_table(kept)
    del t
    for path in parts:
        path.unlink()
    return {"bucket": b, "path": out_path, "sessions": sess, "duplicates": duplicates,
            "events_by_type": np.bincount(event, minlength=n_types)[:n_types],
            "sessions_before": len(lengths), "events_dropped": int((~row_keep).sum()),
            "item_counts": pc.value_counts(kept.column("item_id").combine_chunks()) if kept.num_rows else None}
