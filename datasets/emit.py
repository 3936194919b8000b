"""Pass 3 of `seqrec prepare`: per bucket, map items to the vocabulary and write events.parquet, then
sessions.parquet and vocab.parquet, and per split the transition arrays (sampled sessions only)."""

from __future__ import annotations

import shutil
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from seqrec.core.faults import kill_point

from . import sessions as S
from .manifest import SPLITS
from .scatter import BUCKET_THREADS
from .schema import FIRST_ITEM, OOV, TIMESTAMP_TYPE

PARQUET_OPTIONS = {"compression": "lz4", "use_dictionary": ["split", "event_type", "nudge_id"]}


class _NpyAppender:
    """Writes a .npy file of known shape by appending row blocks, so no split is ever held in memory."""

    def __init__(self, path: Path, dtype: type, shape: tuple[int, ...]) -> None:
        self.path, self.dtype, self.shape, self.rows = path, np.dtype(dtype), shape, 0
        self._f = open(path, "wb")  # noqa: SIM115 - closed in close()
        np.lib.format.write_array_header_1_0(
            self._f, {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": shape})

    def append(self, block: np.ndarray) -> None:
        np.ascontiguousarray(block, dtype=self.dtype).tofile(self._f)
        self.rows += len(block)

    def close(self) -> None:
        self._f.close()
        if self.rows != self.shape[0]:
            raise RuntimeError(f"{self.path}: wrote {self.rows} rows, expected {self.shape[0]}")


def emit(out: Path, per_bucket: list[dict], sessions: pa.Table, vocab: pa.Table, lookup: dict[int, np.ndarray],
         event_names: tuple[str, ...], rewards: tuple[float, ...], window: int, loo: bool,
         on_bucket: Callable[[int], None] | None = None) -> dict:
    """Pass 3: events.parquet in bucket order, and per split the transition arrays (kept sessions only);
    returns sessions and events per split (the manifest's "splits"). `on_bucket` gets each bucket's count of
    events written (progress lines)."""
    W = window
    split_codes = sessions.column("split").to_numpy()
    lengths = sessions.column("length").to_numpy()
    if loo:  # per session: last event -> test, the one before -> valid, the rest -> train
        n_sessions = np.array([int((lengths >= 3).sum()), int((lengths >= 2).sum()), len(lengths)], np.int64)
        n_events = np.array([int(np.maximum(lengths - 2, 0).sum()), n_sessions[1], n_sessions[2]], np.int64)
    else:
        n_events = np.bincount(split_codes, weights=lengths, minlength=3)[:3].astype(np.int64)
        n_sessions = np.bincount(split_codes, minlength=3)[:3].astype(np.int64)

    tdir = out / "transitions"
    shutil.rmtree(tdir, ignore_errors=True)
    files: list[dict[str, _NpyAppender]] = []
    for k, s in enumerate(SPLITS):
        (tdir / s).mkdir(parents=True)
        n = int(n_events[k])
        shapes = {"state": ((n, W), np.int32), "action": ((n,), np.int32), "event": ((n,), np.int8),
                  "reward": ((n,), np.float32), "next_state": ((n, W), np.int32), "done": ((n,), np.bool_),
                  "session": ((n,), np.int64), "state_event": ((n, W), np.int8)}
        files.append({name: _NpyAppender(tdir / s / f"{name}.npy", dt, shp) for name, (shp, dt) in shapes.items()})

    split_dict = pa.array([*SPLITS, "loo"], pa.string())
    type_dict = pa.array(list(event_names), pa.string())
    ctx = {"to_global": lookup, "vocab_items": vocab.column("item_id").combine_chunks(),
           "split_codes": split_codes, "lengths": lengths, "loo": loo, "W": W,
           "rewards": np.asarray(rewards, np.float32), "split_dict": split_dict, "type_dict": type_dict}
    writer = None
    with ThreadPoolExecutor(max_workers=BUCKET_THREADS) as pool:
        pending: deque = deque()
        queue = list(per_bucket)
        while queue or pending:
            while queue and len(pending) < BUCKET_THREADS:  # at most two buckets in memory at once
                pb = queue.pop(0)
                pending.append(pool.submit(_emit_bucket, pb, ctx))
            events, parts = pending.popleft().result()
            if on_bucket is not None:
                on_bucket(events.num_rows)
            for k, part in enumerate(parts):
                for name, block in part.items():
                    files[k][name].append(block)
            if writer is None:
                writer = pq.ParquetWriter(out / "events.parquet", events.schema, **PARQUET_OPTIONS)
            writer.write_table(events)
            kill_point("prepare.emit")  # a test hook (seqrec/core/faults.py)
    for f in files:
        for a in f.values():
            a.close()
    if writer is None:  # no events at all: an empty file with the minimal schema
        pq.write_table(pa.table({"session": pa.array([], pa.int64()), "item": pa.array([], pa.int32())}),
                       out / "events.parquet")
    else:
        writer.close()

    sess_out = pa.table({
        "session": sessions.column("session"),
        "user_id": sessions.column("user_id"),
        **({"session_id": sessions.column("session_id")} if "session_id" in sessions.column_names else {}),
        "start": sessions.column("start").cast(pa.int64()).cast(TIMESTAMP_TYPE),
        "length": sessions.column("length").cast(pa.int32()),
        "split": pa.DictionaryArray.from_arrays(sessions.column("split").combine_chunks(), split_dict),
    })
    pq.write_table(sess_out, out / "sessions.parquet", **PARQUET_OPTIONS)
    pq.write_table(pa.table({"index": vocab.column("index"), "item_id": vocab.column("item_id"),
                             "count": vocab.column("count")}), out / "vocab.parquet")
    return {s: {"sessions": int(n_sessions[k]), "events": int(n_events[k])} for k, s in enumerate(SPLITS)}


def _emit_bucket(pb: dict, ctx: dict) -> tuple[pa.Table, list[dict[str, np.ndarray]]]:
    """One bucket's events table and, per split, its transition blocks (in session order)."""
    with pa.memory_map(str(pb["path"])) as src:
        t = ipc.open_stream(src).read_all()
    W = ctx["W"]
    local = t.column("_session").to_numpy()
    glob = ctx["to_global"][pb["bucket"]][local]
    sampled = glob >= 0
    if not sampled.all():  # whole sessions left out by max_sessions
        t, local, glob = t.filter(pa.array(sampled)), local[sampled], glob[sampled]
    idx = pc.index_in(t.column("item_id"), value_set=ctx["vocab_items"])
    item = (pc.fill_null(idx, OOV - FIRST_ITEM).to_numpy(zero_copy_only=False) + FIRST_ITEM).astype(np.int32)
    event = t.column("event").to_numpy().astype(np.int8)
    starts = np.r_[True, local[1:] != local[:-1]] if len(local) else np.empty(0, bool)
    position = (np.arange(len(local)) - S.first_index(starts)).astype(np.int32)
    if ctx["loo"]:
        session_len = ctx["lengths"][glob]
        split = np.where(position == session_len - 1, 2, np.where(position == session_len - 2, 1, 0))
    else:
        split = ctx["split_codes"][glob]
    state = S.windows(item, position, W)  # (N, W) over whole sessions, then cut per split
    state_event = S.windows(event + 1, position, W)  # (N, W) event code + 1 of each window position, 0: padding
    parts = []
    for k in range(3):
        rows = np.flatnonzero(split == k)  # in session order
        items_k, sess_k, state_k = item[rows], glob[rows], state[rows]
        parts.append({"state": state_k, "action": items_k, "event": event[rows],
                      "reward": ctx["rewards"][event[rows]], "next_state": S.next_windows(state_k, items_k),
                      "done": np.r_[sess_k[1:] != sess_k[:-1], True][:len(rows)],  # last step in this split
                      "session": sess_k, "state_event": state_event[rows]})
    events = _events_table(t, glob, position, split, item, event, ctx["split_dict"], ctx["type_dict"])
    del t
    pb["path"].unlink()
    return events, parts


def _events_table(t: pa.Table, glob: np.ndarray, position: np.ndarray, split: np.ndarray, item: np.ndarray,
                  event: np.ndarray, split_dict: pa.Array, type_dict: pa.Array) -> pa.Table:
    cols = {
        "session": pa.array(glob, pa.int64()),
        "position": pa.array(position, pa.int32()),
        "split": pa.DictionaryArray.from_arrays(pa.array(split, pa.int8()), split_dict),
        "user_id": t.column("user_id"),
    }
    if "session_id" in t.column_names:
        cols["session_id"] = t.column("session_id")
    cols["item_id"] = t.column("item_id")
    cols["item"] = pa.array(item, pa.int32())
    cols["event_type"] = pa.DictionaryArray.from_arrays(pa.array(event, pa.int8()), type_dict)
    cols["timestamp"] = t.column("timestamp").cast(pa.int64()).cast(TIMESTAMP_TYPE)
    skip = {"user_id", "session_id", "item_id", "event", "timestamp", "_session", "_file", "_row"}
    for name in t.column_names:
        if name not in skip:
            cols[name] = t.column(name)
    cols["source_file"] = t.column("_file")  # index into manifest["inputs"]
    cols["source_row"] = t.column("_row")
    return pa.table(cols)
