"""The item vocabulary of a prepared dataset: items counted over the kept (or sampled) sessions, indexed from
FIRST_ITEM, most frequent first; rarer items than min_item_count map to OOV later."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from .readers import InputError
from .scatter import BUCKET_THREADS
from .schema import FIRST_ITEM


def count_sample(per_bucket: list[dict], lookup: dict[int, np.ndarray], n_types: int) -> dict:
    """A light pass over the sorted buckets: item counts, distinct items and events by type of the
    sampled sessions only (what the vocabulary and the manifest describe under max_sessions)."""

    def count(pb: dict) -> tuple[pa.StructArray | None, np.ndarray]:
        with pa.memory_map(str(pb["path"])) as src:
            t = ipc.open_stream(src).read_all()
        keep = lookup[pb["bucket"]][t.column("_session").to_numpy()] >= 0
        events = t.column("event").to_numpy()[keep]
        items = t.column("item_id").combine_chunks().filter(pa.array(keep))
        return (pc.value_counts(items) if len(items) else None), np.bincount(events, minlength=n_types)[:n_types]

    item_counts, events_by_type = [], np.zeros(n_types, np.int64)
    with ThreadPoolExecutor(max_workers=BUCKET_THREADS) as pool:
        for vc, by_type in pool.map(count, per_bucket):
            events_by_type += by_type
            if vc is not None:
                item_counts.append(vc)
    return {"item_counts": item_counts, "events_by_type": events_by_type, "items_seen": distinct_items(item_counts)}


def distinct_items(item_counts: list[pa.StructArray]) -> int:
    """Distinct items over per-bucket value counts (a user's items may sit in several buckets)."""
    if not item_counts:
        return 0
    return int(pc.count_distinct(pa.chunked_array([vc.field("values") for vc in item_counts])).as_py())


def vocabulary(item_counts: list[pa.StructArray], item_ids_are_int: bool, min_item_count: int) -> pa.Table:
    """Items (item_id, count, index) with at least min_item_count events, most frequent first, indexed from
    FIRST_ITEM."""
    item_type = pa.int64() if item_ids_are_int else pa.string()
    parts_vc = [pa.table({"item_id": vc.field("values"), "count": vc.field("counts")}) for vc in item_counts]
    if parts_vc:
        counts = pa.concat_tables(parts_vc).group_by("item_id").aggregate([("count", "sum")])
        counts = counts.rename_columns(["item_id", "count"])
    else:
        counts = pa.table({"item_id": pa.array([], item_type), "count": pa.array([], pa.int64())})
    vocab = counts.filter(pc.greater_equal(counts.column("count"), min_item_count))
    vocab = vocab.sort_by([("count", "descending"), ("item_id", "ascending")])
    if vocab.num_rows + FIRST_ITEM >= 1 << 24:
        raise InputError(f"{vocab.num_rows} items exceed the supported catalogue of 2^24 - {FIRST_ITEM}; "
                         "raise --min-item-count")
    return vocab.append_column("index", pa.array(np.arange(FIRST_ITEM, vocab.num_rows + FIRST_ITEM, dtype=np.int32)))
