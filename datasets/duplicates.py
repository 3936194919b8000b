"""Duplicate events (same user, item, event type and time as an earlier row; the first is kept), found one
user-hash bucket at a time, as `seqrec prepare` and `seqrec score` both quarantine them (duplicate_event)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import sessions as S
from .readers import BadRows
from .scatter import bucket_paths, read_bucket


def id_codes(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """(N,) int64 stand-ins for ids: the ints themselves, or dictionary codes of strings (equal ids, equal codes)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_dictionary(arr.type):
        arr = arr.cast(arr.type.value_type)
    if pa.types.is_integer(arr.type):
        return arr.fill_null(-1).to_numpy().astype(np.int64)
    return pc.dictionary_encode(arr).indices.to_numpy(zero_copy_only=False).astype(np.int64)


def event_times(events: pa.Table) -> np.ndarray:
    """(N,) int64 microseconds of the timestamp column (int64 from the validator, or a timestamp type)."""
    return events.column("timestamp").combine_chunks().cast(pa.int64()).to_numpy()


def find_duplicates(events: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Rows in (user, time) order (a stable permutation, (N,)) and which of them (N,) bool repeat an earlier
    row's user, item, event code and time (the first is kept)."""
    user, item = id_codes(events.column("user_id")), id_codes(events.column("item_id"))
    ts, event = event_times(events), events.column("event").combine_chunks().to_numpy()
    order = S.event_order(user, ts)
    return order, S.duplicate_mask(user[order], ts[order], item[order], event[order])


def duplicate_rows(dups: pa.Table, event_names: Sequence[str]) -> list[tuple[int, BadRows]]:
    """The duplicate rows `dups` (columns user_id, item_id, event, timestamp, _file, _row) as quarantine rows,
    grouped by input: (input index, its rows in `dups` order), inputs in index order."""
    files = dups.column("_file").to_numpy() if dups.num_rows else np.zeros(0, np.int16)
    out = []
    for fi in np.unique(files):
        sel = dups.filter(pa.array(files == fi))
        bad = BadRows()
        for u, i, e, t, r in zip(*(sel.column(c).to_pylist() for c in ("user_id", "item_id", "event", "timestamp",
                                                                          "_row"))):
            bad.add(int(r), "*", "duplicate_event", f"user={u} item={i} event={event_names[e]} time_us={t}")
        out.append((int(fi), bad))
    return out


def earliest_duplicate(work: Path, buckets: Iterable[int], schema: pa.Schema) -> tuple[int, int] | None:
    """(input index, row) of the duplicate that comes first in input order over the scattered `buckets`
    (read in `schema`), or None when there is none: what --strict reports."""
    best: tuple[int, int] | None = None
    for b in sorted(buckets):
        t = read_bucket(bucket_paths(work, b), schema)
        order, dup = find_duplicates(t)
        if dup.any():
            rows = order[dup]
            pos = min(zip(t.column("_file").to_numpy()[rows].tolist(), t.column("_row").to_numpy()[rows].tolist()))
            best = pos if best is None else min(best, pos)
    return best
