"""Session states' list columns -> the (B, W) windows the learner reads: item ids as catalogue indices, and for a
run with `[encoder] events` each item's event type as the run's code + 1 (as prepare's state_event.npy holds it)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from seqrec.core.config import ConfigError
from seqrec.datasets.schema import FIRST_ITEM, OOV


def item_windows(items: pa.ChunkedArray | pa.Array, vocab_ids: pa.Array, w: int) -> np.ndarray:
    """A list column of item ids (oldest first) -> (B, W) int64 catalogue indices (`vocab_ids`: the ids of indices
    2.. in order), left-padded with 0; unknown ids (and ids of the wrong type) map to OOV = 1; only the last W ids
    of a longer list count."""
    offsets, values = _list_parts(items)
    if values.type != vocab_ids.type:
        values = pc.cast(values, vocab_ids.type, safe=False) if pa.types.is_string(
            vocab_ids.type) else pa.array([None] * len(values), vocab_ids.type)
    index = pc.index_in(values, value_set=vocab_ids).fill_null(OOV - FIRST_ITEM)
    index = index.to_numpy().astype(np.int64) + FIRST_ITEM  # (N,) catalogue indices
    return _left_padded(offsets, index, w)


def event_windows(item_events: pa.ChunkedArray | pa.Array, w: int) -> np.ndarray:
    """A list column of event codes + 1 aligned with the items' -> (B, W) int64, left-padded with 0 alike."""
    offsets, values = _list_parts(item_events)
    return _left_padded(offsets, values.to_numpy(zero_copy_only=False).astype(np.int64), w)


def run_event_codes(event: pa.ChunkedArray | pa.Array, names: list[str] | tuple[str, ...],
                    run_names: tuple[str, ...]) -> np.ndarray:
    """(N,) codes of event types `names` (a scoring job's) -> (N,) int64 the run's code + 1 (`run_names`: the run's
    prepared types in code order). A type the run was not prepared with stops scoring with one line: the model
    has no row for it."""
    run_code = {n: i + 1 for i, n in enumerate(run_names)}
    lut = np.array([run_code.get(n, -1) for n in names] or [-1], np.int64)  # (E',) job code -> run code + 1
    codes = np.asarray(event.to_numpy(zero_copy_only=False) if len(event) else [], np.int64)  # (N,)
    out = lut[codes]  # (N,)
    if (out < 0).any():
        name = names[int(codes[np.flatnonzero(out < 0)[0]])]
        raise ConfigError(f"event type {name!r} is not one the run was trained on ({', '.join(run_names)}): "
                          "its learner reads event types ([encoder] events); map it to one of those or drop it")
    return out


def _list_parts(lists: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, pa.Array]:
    """A list column -> its (B + 1,) offsets from 0 and its (N,) values."""
    lists = lists.combine_chunks() if isinstance(lists, pa.ChunkedArray) else lists
    offsets = lists.offsets.to_numpy().astype(np.int64)
    values = lists.values.slice(offsets[0], offsets[-1] - offsets[0])
    return offsets - offsets[0], values


def _left_padded(offsets: np.ndarray, values: np.ndarray, w: int) -> np.ndarray:
    """(B + 1,) list offsets and (N,) values -> (B, W) int64, each list's last W values right-aligned, 0 before."""
    b = len(offsets) - 1
    lengths = np.diff(offsets)  # (B,)
    row = np.repeat(np.arange(b), lengths)  # (N,)
    col = w - lengths[row] + (np.arange(len(values)) - offsets[:-1][row])  # (N,) newest value in column W - 1
    keep = col >= 0
    out = np.zeros((b, w), np.int64)
    out[row[keep], col[keep]] = values[keep]
    return out
