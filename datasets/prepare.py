"""Raw event files -> a prepared-dataset folder: events, sessions, vocabulary, splits, RL transitions.

Three passes keep memory bounded by one bucket, not by the input:
1. stream every file, validate, quarantine bad rows, exclude (and count) rows of dropped event types, and
   scatter kept rows into user-hash buckets on disk;
2. per bucket: sort, quarantine duplicates, cut sessions, drop short ones, count items;
   then globally: number sessions by start time, sample `max_sessions` of them (then recount items and
   event types over the sample, one light pass), split them, build the item vocabulary;
3. per bucket: map items, write events and the transitions of each split (sampled sessions only).
The folder's manifest.json (see `MANIFEST_KEYS`) is written last, so its presence means the folder is complete;
a second run with the same inputs and config re-uses the folder.
"""

from __future__ import annotations

import hashlib
import json
import queue
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from . import sessions as S
from .readers import BadRows, InputError, SourceSpec, read_file
from .schema import DEFAULT_REWARDS, EVENT_TYPES, FIRST_ITEM, OOV, QUARANTINE_SCHEMA, TIMESTAMP_TYPE
from .validate import EventTypes, Validator

FORMAT_VERSION = 2  # 2: rows_excluded / excluded_by_event, session sampling keys
SPLITS = ("train", "valid", "test")
LOO_SPLIT = 3  # session-level code under leave-one-out: its events are cut into all three splits
_THREADS = 2  # buckets in flight in passes 2 and 3 (the machine this targets has 2 cores)
_INT64_MAX = np.iinfo(np.int64).max
MANIFEST_KEYS = ("rows_read", "rows_kept", "rows_quarantined", "quarantine_reasons", "events_by_type",
                 "sessions", "items", "splits", "config", "inputs")
TRANSITION_FILES = ("state", "action", "event", "reward", "next_state", "done", "session")


@dataclass(frozen=True)
class PrepareConfig:
    """How events become sessions, a vocabulary, splits and transitions (saved in manifest.json)."""

    source: str = "events"                  # reader/adapter name, recorded for provenance
    min_session_length: int = 3             # sessions with fewer events are dropped (and counted)
    session_gap_minutes: float = 30.0       # inactivity that ends a session without session ids (inf: one per user)
    window: int = 10                        # state = last `window` items before the step
    min_item_count: int = 1                 # rarer items map to the out-of-vocabulary index 1
    split: str = "random"                   # random (by session, seeded) | temporal (by start) | loo
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    rewards: tuple[tuple[str, float], ...] = tuple(DEFAULT_REWARDS.items())
    id_type: str = "auto"                   # auto | int | string, for user, item and session ids
    strict: bool = False                    # stop at the first bad row instead of quarantining it
    bucket_rows: int = 2_000_000            # rows per on-disk user-hash bucket (bounds memory of passes 2, 3)
    max_sessions: int | None = None         # after the length filter keep a seeded uniform sample of N (None: all)

    def __post_init__(self) -> None:
        if self.min_session_length < 1:
            raise ValueError(f"min_session_length must be >= 1, got {self.min_session_length}")
        if not self.session_gap_minutes > 0:  # also rejects NaN; inf means no inactivity cut
            raise ValueError(f"session_gap_minutes must be > 0 (inf: one session per user), "
                             f"got {self.session_gap_minutes}")
        if self.max_sessions is not None and (isinstance(self.max_sessions, bool)
                                              or not isinstance(self.max_sessions, int) or self.max_sessions < 1):
            raise ValueError(f"max_sessions must be a whole number >= 1 (or left out for all), "
                             f"got {self.max_sessions!r}")
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")
        if self.min_item_count < 1:
            raise ValueError(f"min_item_count must be >= 1, got {self.min_item_count}")
        if self.split not in ("random", "temporal", "loo"):
            raise ValueError(f"split must be 'random', 'temporal' or 'loo', got {self.split!r}")
        fr = self.split_fractions
        if len(fr) != 3 or min(fr) < 0 or abs(sum(fr) - 1.0) > 1e-9:
            raise ValueError(f"split_fractions must be three non-negative numbers summing to 1, got {fr}")
        if self.bucket_rows < 1:
            raise ValueError(f"bucket_rows must be >= 1, got {self.bucket_rows}")
        if self.id_type not in ("auto", "int", "string"):
            raise ValueError(f"id_type must be auto, int or string, got {self.id_type!r}")
        missing = [t for t in EVENT_TYPES if t not in dict(self.rewards)]
        if missing:
            raise ValueError(f"rewards lacks event type(s) {missing}")


class _StrictStop(InputError):
    """--strict met a bad row; the run still checks whether an earlier row was a duplicate."""

    def __init__(self, file_index: int, row: int, message: str) -> None:
        super().__init__(message)
        self.position = (file_index, row)


@dataclass
class FileStats:
    """One input file's identity and row counts (read = kept + quarantined + excluded), as the manifests list it."""

    path: str
    sha256: str
    bytes: int
    format: str
    rows_read: int = 0
    rows_kept: int = 0
    rows_quarantined: int = 0
    rows_excluded: int = 0  # good rows of an event type mapped to drop

    @classmethod
    def of(cls, path: Path, spec: SourceSpec) -> FileStats:
        """A file's identity (path, SHA-256, size, format as `spec` reads it), its counts still zero."""
        return cls(str(path), file_sha256(path), path.stat().st_size, spec.format_of(path))


@dataclass
class _Run:
    """State shared by the passes of one prepare run."""

    cfg: PrepareConfig
    out: Path
    work: Path
    files: list[FileStats]
    event_types: EventTypes
    n_buckets: int
    quarantine: pq.ParquetWriter | None = None
    reasons: dict[str, int] = field(default_factory=dict)
    excluded: dict[str, int] = field(default_factory=dict)  # raw event name -> rows excluded (drop)
    id_types: dict[str, str] = field(default_factory=dict)
    columns: list[str] = field(default_factory=list)
    schemas: list[pa.Schema] = field(default_factory=list)  # distinct schemas of kept rows, in order seen
    schema_sources: list[str] = field(default_factory=list)  # the input that first produced each
    schema: pa.Schema | None = None  # their union, the schema of every bucket in pass 2

    def quarantine_rows(self, file_index: int, bad: BadRows) -> None:
        if not len(bad):
            return
        f = self.files[file_index]
        if self.cfg.strict:
            i = int(np.argmin(bad.rows))
            raise _StrictStop(file_index, int(bad.rows[i]), f"{f.path}: row {bad.rows[i]}: field {bad.fields[i]!r}: "
                              f"{bad.reasons[i]} (value {bad.values[i]!r}); rerun without --strict to "
                              "quarantine bad rows")
        table = pa.table({"source_file": pa.array([f.path] * len(bad), pa.string()),
                          "row": pa.array(bad.rows, pa.int64()), "field": pa.array(bad.fields, pa.string()),
                          "reason": pa.array(bad.reasons, pa.string()),
                          "value": pa.array(bad.values, pa.string())}, schema=QUARANTINE_SCHEMA)
        if self.quarantine is None:
            self.quarantine = pq.ParquetWriter(self.out / "quarantine.parquet", QUARANTINE_SCHEMA)
        self.quarantine.write_table(table)
        f.rows_quarantined += len(bad)
        for r in bad.reasons:
            self.reasons[r] = self.reasons.get(r, 0) + 1


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes (the inputs' identity in the manifest and the re-use check)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(8 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def prepare(inputs: list[Path], spec_of: Callable[[Path], SourceSpec], cfg: PrepareConfig, out: Path,
            progress: bool | None = None) -> dict:
    """Prepare `inputs` into the folder `out` and return the manifest (also written to out/manifest.json)."""
    t0 = time.perf_counter()
    inputs = [Path(p) for p in inputs]
    specs = [spec_of(p) for p in inputs]  # raises for a bad map before any work
    for p in inputs:
        if not p.exists():
            raise InputError(f"{p}: no such file")
        if p.is_dir():
            raise InputError(f"{p}: is a directory, not an event file")
    files = [FileStats.of(p, s) for p, s in zip(inputs, specs)]
    config = _config_dict(cfg, specs)
    cache_key = hashlib.sha256(json.dumps({"v": FORMAT_VERSION, "config": config,
                                           "inputs": [f.sha256 for f in files]}, sort_keys=True).encode()).hexdigest()
    previous = _load_manifest(out)
    if previous and previous.get("cache_key") == cache_key and _outputs_exist(out):
        previous["reused"] = True
        return previous

    out.mkdir(parents=True, exist_ok=True)
    for stale in ("manifest.json", "quarantine.parquet"):
        (out / stale).unlink(missing_ok=True)
    work = out / "_work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    total_bytes = sum(f.bytes for f in files)
    est_rows = sum(estimate_rows(p, f.format) for p, f in zip(inputs, files))
    n_buckets = max(1, -(-est_rows // cfg.bucket_rows))
    run = _Run(cfg, out, work, files, EventTypes.build(_event_map(specs), dict(cfg.rewards)), n_buckets)
    run.excluded = dict.fromkeys(run.event_types.dropped, 0)
    id_type = cfg.id_type if cfg.id_type != "auto" else next((s.id_type for s in specs if s.id_type != "auto"), "auto")
    if id_type != "auto":  # named adapters know their ids are integers: a stray text id is then quarantined
        run.id_types.update({"user_id": id_type, "item_id": id_type, "session_id": id_type})
    try:
        timings = {}
        t = time.perf_counter()
        try:
            _scatter(run, inputs, specs, _progress_bar(total_bytes, progress))
        except _StrictStop as stop:  # a duplicate before the bad row is the first bad row
            raise _earliest_duplicate(run, before=stop.position) or stop from None
        if cfg.strict and (dup := _earliest_duplicate(run, before=None)):
            raise dup
        timings["read_validate_s"] = time.perf_counter() - t
        t = time.perf_counter()
        per_bucket, stats = _sessionize(run)
        timings["sessions_s"] = time.perf_counter() - t
        t = time.perf_counter()
        session_table, lookup, sample = _number_sessions(run, per_bucket)
        if cfg.max_sessions is not None:  # the vocabulary and event counts describe the sample only
            stats.update(_count_sample(run, per_bucket, lookup))
        vocab = _vocabulary(run, stats["item_counts"])
        splits = _emit(run, per_bucket, session_table, vocab, lookup)
        timings["write_s"] = time.perf_counter() - t
    finally:
        if run.quarantine is not None:
            run.quarantine.close()
        shutil.rmtree(work, ignore_errors=True)
    if run.quarantine is None:  # always leave a (possibly empty) quarantine file for scripts
        pq.write_table(QUARANTINE_SCHEMA.empty_table(), out / "quarantine.parquet")

    for f in files:
        assert f.rows_kept + f.rows_quarantined + f.rows_excluded == f.rows_read, f"row accounting broke for {f.path}"
    assert sum(run.excluded.values()) == sum(f.rows_excluded for f in files), "excluded rows miscounted"
    names = run.event_types.names
    manifest = {
        "format_version": FORMAT_VERSION,
        "rows_read": sum(f.rows_read for f in files),
        "rows_kept": sum(f.rows_kept for f in files),
        "rows_quarantined": sum(f.rows_quarantined for f in files),
        "rows_excluded": sum(f.rows_excluded for f in files),
        "quarantine_reasons": dict(sorted(run.reasons.items())),
        "excluded_by_event": dict(run.excluded),
        "events_by_type": {names[i]: int(c) for i, c in enumerate(stats["events_by_type"]) if i < len(names)},
        "sessions": {
            "before_filter": stats["sessions_before"],
            "after_filter": stats["sessions_after"],
            "dropped_short": stats["sessions_before"] - stats["sessions_after"],
            "events_in_dropped": stats["events_dropped"],
            "min_length": cfg.min_session_length,
            "sampled_out": sample["sampled_out"],
            "events_sampled_out": sample["events_sampled_out"],
            "max_sessions": cfg.max_sessions,
        },
        "items": int(len(vocab)),
        "catalogue_size": int(len(vocab)) + 2,
        "items_seen": int(stats["items_seen"]),
        "event_types": [{"name": n, "code": i, "reward": r} for i, (n, r) in
                        enumerate(zip(names, run.event_types.rewards))],
        "id_types": {k: v for k, v in run.id_types.items() if k in run.columns},
        "splits": splits,
        "config": config,
        "inputs": [asdict(f) for f in files],
        "cache_key": cache_key,
        "timings": {**{k: round(v, 3) for k, v in timings.items()}, "total_s": round(time.perf_counter() - t0, 3)},
        "reused": False,
    }
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(out / "manifest.json")
    return manifest


def _config_dict(cfg: PrepareConfig, specs: list[SourceSpec]) -> dict:
    d = asdict(cfg)
    d["rewards"] = dict(cfg.rewards)
    d["split_fractions"] = list(cfg.split_fractions)
    d.pop("bucket_rows")  # changes memory and row order inside files, not the content
    if not np.isfinite(cfg.session_gap_minutes):
        d["session_gap_minutes"] = "inf"  # keeps manifest.json strict JSON
    unique = []
    for s in specs:
        sd = asdict(s)
        sd["columns"] = dict(s.columns)
        sd["event_map"] = dict(s.event_map)
        if sd not in unique:
            unique.append(sd)
    d["readers"] = unique
    return d


def _event_map(specs: list[SourceSpec]) -> tuple[tuple[str, str], ...]:
    merged: dict[str, str] = {}
    for s in specs:
        merged.update(dict(s.event_map))
    return tuple(merged.items())


def _load_manifest(out: Path) -> dict | None:
    try:
        return json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def _outputs_exist(out: Path) -> bool:
    needed = [out / "events.parquet", out / "sessions.parquet", out / "vocab.parquet", out / "quarantine.parquet"]
    needed += [out / "transitions" / s / f"{n}.npy" for s in SPLITS for n in TRANSITION_FILES]
    return all(p.exists() for p in needed)


def estimate_rows(path: Path, fmt: str) -> int:
    """Rows in a file: exact for Parquet, from the mean length of the first lines for text."""
    if fmt == "parquet":
        try:
            return pq.ParquetFile(str(path)).metadata.num_rows
        except (pa.ArrowInvalid, OSError):
            return 0
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    lines = max(head.count(b"\n"), 1)
    return int(path.stat().st_size / (len(head) / lines)) + 1 if head else 0


def _progress_bar(total_bytes: int, progress: bool | None):
    from tqdm import tqdm

    disable = (not progress) if progress is not None else (total_bytes < (64 << 20) or None)
    return tqdm(total=total_bytes, unit="B", unit_scale=True, desc="prepare", disable=disable, leave=False)


# ---------------------------------------------------------------- pass 1: read, validate, scatter to buckets

def bucket_of(user: pa.Array, n_buckets: int) -> np.ndarray:
    """(N,) bucket of each user id: a multiplicative hash of ints, pandas' stable hash of strings."""
    if n_buckets == 1:
        return np.zeros(len(user), np.int64)
    if pa.types.is_integer(user.type):
        h = user.to_numpy().astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        return ((h >> np.uint64(33)) % np.uint64(n_buckets)).astype(np.int64)
    import pandas as pd

    return (pd.util.hash_array(np.asarray(user.to_numpy(zero_copy_only=False), dtype=object))
            % np.uint64(n_buckets)).astype(np.int64)


def _validated(run: _Run, inputs: list[Path], specs: list[SourceSpec], bar) -> Iterator[pa.Table]:
    """Read and validate every file: quarantine bad rows, count per file, yield kept rows (schemas noted)."""
    for fi, (path, spec) in enumerate(zip(inputs, specs)):
        validate = Validator(str(path), fi, run.event_types, spec.time_unit, spec.event_type, run.id_types)
        stats = run.files[fi]
        last = 0
        for raw in read_file(path, spec):
            bad = raw.bad
            stats.rows_read += raw.table.num_rows + len(bad)
            kept = validate(raw, bad) if raw.table.num_rows else None
            stats.rows_excluded = int(validate.excluded.sum())
            bar.update(raw.bytes_read - last)
            last = raw.bytes_read
            if kept is not None and kept.num_rows:
                stats.rows_kept += kept.num_rows
                if kept.schema not in run.schemas:
                    run.schemas.append(kept.schema)
                    run.schema_sources.append(str(path))
                yield kept  # first, so that --strict can still see a duplicate before the bad row
            run.quarantine_rows(fi, bad)
        for name, count in zip(run.event_types.dropped, validate.excluded.tolist()):
            run.excluded[name] += count
        bar.update(last and stats.bytes - last)


def _prefetch(items: Iterator[pa.Table], depth: int = 2) -> Iterator[pa.Table]:
    """Run a generator in a background thread, `depth` items ahead (reading overlaps with scattering)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work() -> None:
        try:
            for x in items:
                if stop.is_set():
                    return
                q.put(x)
            q.put(done)
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
            q.put(e)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while (x := q.get()) is not done:
            if isinstance(x, BaseException):
                raise x
            yield x
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(0.01)


def _scatter(run: _Run, inputs: list[Path], specs: list[SourceSpec], bar) -> None:
    """Pass 1: validated rows go to user-hash bucket files on disk (Arrow IPC)."""
    writers: dict[tuple[int, int], ipc.RecordBatchStreamWriter] = {}
    try:
        for kept in _prefetch(_validated(run, inputs, specs, bar)):
            if run.n_buckets == 1:
                parts = [(0, kept)]
            else:
                bucket = bucket_of(kept.column("user_id").combine_chunks(), run.n_buckets)
                order = np.argsort(bucket, kind="stable")
                counts = np.bincount(bucket, minlength=run.n_buckets)
                sorted_t = kept.take(pa.array(order))
                offsets = np.concatenate([[0], np.cumsum(counts)])
                parts = [(b, sorted_t.slice(offsets[b], counts[b])) for b in range(run.n_buckets) if counts[b]]
            k = run.schemas.index(kept.schema)  # inputs with other columns go to other part files
            for b, part in parts:
                if (b, k) not in writers:
                    # the stream format, unlike the file format, accepts a new dictionary per batch
                    writers[(b, k)] = ipc.new_stream(str(run.work / f"bucket-{b:04d}-{k:03d}.arrow"), kept.schema)
                writers[(b, k)].write_table(part)
    finally:
        for w in writers.values():
            w.close()
        bar.close()


def unify_schemas(schemas: list[pa.Schema], sources: list[str]) -> pa.Schema:
    """One schema for all inputs: the union of their columns; text types that differ become plain strings.

    Inputs may map different optional columns (RC15 clicks have a category, buys a price); a column an
    input lacks is null there. Conflicting types (int ids in one file, string ids in another) are an error.
    """
    names: list[str] = []
    for sc in schemas:
        names += [n for n in sc.names if n not in names]
    fields = []
    for name in names:
        types = {sc.field(name).type for sc in schemas if name in sc.names} - {pa.null()}
        if not types:
            fields.append(pa.field(name, pa.string()))
        elif len(types) == 1:
            fields.append(pa.field(name, types.pop()))
        elif all(_is_text(t) for t in types):
            fields.append(pa.field(name, pa.string()))
        else:
            where = ", ".join(f"{src}: {sc.field(name).type}" for sc, src in zip(schemas, sources)
                              if name in sc.names)
            hint = "; pass --id-type string" if name.endswith("_id") else ""
            raise InputError(f"column {name!r} has different types across inputs ({where}){hint}")
    return pa.schema(fields)


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or (
        pa.types.is_dictionary(t) and pa.types.is_string(t.value_type))


def conform_table(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with every column of `schema` (missing ones null) in its order and types."""
    cols = []
    for f in schema:
        if f.name in table.column_names:
            col = table.column(f.name)
            cols.append(col if col.type == f.type else col.cast(f.type))
        else:
            cols.append(pa.nulls(table.num_rows, f.type))
    return pa.table(cols, schema=schema)


# ---------------------------------------------------------------- pass 2: dedupe and cut sessions per bucket

def _codes(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Integer stand-ins for ids: the ints themselves, or dictionary codes of strings."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_integer(col.type):
        return col.to_numpy()
    return pc.dictionary_encode(col).indices.to_numpy().astype(np.int64)


def _sessionize(run: _Run) -> tuple[list[dict], dict]:
    """Pass 2 over all buckets, two at a time (the sorts and takes release the GIL)."""
    n_types = len(run.event_types.names)
    events_by_type = np.zeros(n_types, np.int64)
    sessions_before = sessions_after = events_dropped = 0
    per_bucket, item_counts = [], []
    run.schema = unify_schemas(run.schemas, run.schema_sources) if run.schemas else None
    run.columns = run.schema.names if run.schema is not None else []  # (the manifest lists their id types)
    buckets = [b for b in range(run.n_buckets) if list(run.work.glob(f"bucket-{b:04d}-*.arrow"))]
    with ThreadPoolExecutor(max_workers=_THREADS) as pool:
        for r in pool.map(lambda b: _sessionize_bucket(run, b), buckets):
            if r["duplicates"] is not None:
                _quarantine_duplicates(run, r["duplicates"])
            events_by_type += r["events_by_type"]
            sessions_before += r["sessions_before"]
            sessions_after += len(r["sessions"]["start"])
            events_dropped += r["events_dropped"]
            if r["item_counts"] is not None:
                item_counts.append(r["item_counts"])
            per_bucket.append({"bucket": r["bucket"], "path": r["path"], "sessions": r["sessions"]})
    # only rows in kept sessions count toward the vocabulary
    stats = {"items_seen": _distinct(item_counts), "events_by_type": events_by_type,
             "sessions_before": int(sessions_before), "sessions_after": int(sessions_after),
             "events_dropped": int(events_dropped), "item_counts": item_counts}
    return per_bucket, stats


def gap_us(minutes: float) -> int:
    """Inactivity gap in microseconds; inf (or any gap beyond int64) never cuts: one session per user."""
    us = minutes * 60e6
    return _INT64_MAX if us >= _INT64_MAX else int(us)


def _sessionize_bucket(run: _Run, b: int) -> dict:
    """Sort one bucket by user and time, find duplicates, cut and filter sessions, write it back sorted."""
    cfg = run.cfg
    n_types = len(run.event_types.names)
    t, parts = _read_bucket(run, b)
    user = _codes(t.column("user_id"))
    ts = t.column("timestamp").to_numpy()
    event = t.column("event").to_numpy()
    session = _codes(t.column("session_id")) if "session_id" in t.column_names else None
    order, dup = _find_duplicates(t)
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
    starts = S.session_starts(user, ts, session, gap_us(cfg.session_gap_minutes))
    sid = np.cumsum(starts) - 1  # local session index per row
    lengths = np.bincount(sid) if len(sid) else np.empty(0, np.int64)
    long_enough = lengths >= cfg.min_session_length
    row_keep = long_enough[sid]
    new_id = np.cumsum(long_enough) - 1  # renumber kept sessions 0..k-1 in this bucket
    order, ts, sid = order[row_keep], ts[row_keep], new_id[sid[row_keep]]
    kept = t.take(pa.array(order)).append_column("_session", pa.array(sid))
    first_rows = np.flatnonzero(np.r_[True, sid[1:] != sid[:-1]]) if len(sid) else np.empty(0, np.int64)
    sess = {"user_id": kept.column("user_id").take(pa.array(first_rows)),
            "start": ts[first_rows], "length": lengths[long_enough]}
    if "session_id" in kept.column_names:
        sess["session_id"] = kept.column("session_id").take(pa.array(first_rows))
    out_path = run.work / f"sessions-{b:04d}.arrow"
    with ipc.new_stream(str(out_path), kept.schema) as w:
        w.write_table(kept)
    del t
    for path in parts:
        path.unlink()
    return {"bucket": b, "path": out_path, "sessions": sess, "duplicates": duplicates,
            "events_by_type": np.bincount(event, minlength=n_types)[:n_types],
            "sessions_before": len(lengths), "events_dropped": int((~row_keep).sum()),
            "item_counts": pc.value_counts(kept.column("item_id").combine_chunks()) if kept.num_rows else None}


def _read_bucket(run: _Run, b: int) -> tuple[pa.Table, list[Path]]:
    """All part files of bucket b as one table in the unified schema, and the part paths."""
    parts = sorted(run.work.glob(f"bucket-{b:04d}-*.arrow"))  # in input order of first appearance
    tables = []
    for path in parts:
        with pa.memory_map(str(path)) as src:
            tables.append(conform_table(ipc.open_stream(src).read_all(), run.schema))
    return (pa.concat_tables(tables) if len(tables) > 1 else tables[0]), parts


def _find_duplicates(t: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a bucket in (user, time) order, and which of them repeat an earlier row."""
    user, item = _codes(t.column("user_id")), _codes(t.column("item_id"))
    ts, event = t.column("timestamp").to_numpy(), t.column("event").to_numpy()
    order = S.event_order(user, ts)
    return order, S.duplicate_mask(user[order], ts[order], item[order], event[order])


def _earliest_duplicate(run: _Run, before: tuple[int, int] | None) -> InputError | None:
    """--strict: the duplicate that comes first in input order (and before `before`), as an error."""
    if not run.schemas:
        return None
    run.schema = unify_schemas(run.schemas, run.schema_sources)
    best: tuple[int, int] | None = None
    for b in range(run.n_buckets):
        if not list(run.work.glob(f"bucket-{b:04d}-*.arrow")):
            continue
        t, _ = _read_bucket(run, b)
        order, dup = _find_duplicates(t)
        if dup.any():
            rows = order[dup]
            pos = min(zip(t.column("_file").to_numpy()[rows].tolist(), t.column("_row").to_numpy()[rows].tolist()))
            best = pos if best is None else min(best, pos)
    if best is None or (before is not None and best > before):
        return None
    return InputError(f"{run.files[best[0]].path}: row {best[1]}: field '*': duplicate_event (same user, item, "
                      "event type and time as an earlier row); rerun without --strict to quarantine bad rows")


def _quarantine_duplicates(run: _Run, dups: pa.Table) -> None:
    file_idx = dups.column("_file").to_numpy()
    rows = dups.column("_row").to_numpy()
    names = run.event_types.names
    for fi in np.unique(file_idx):
        sel = np.flatnonzero(file_idx == fi)
        bad = BadRows()
        sub = dups.take(pa.array(sel))
        users = sub.column("user_id").to_pylist()
        items = sub.column("item_id").to_pylist()
        events = sub.column("event").to_pylist()
        times = sub.column("timestamp").to_pylist()
        for i in range(len(sel)):
            bad.add(int(rows[sel[i]]), "*", "duplicate_event",
                    f"user={users[i]} item={items[i]} event={names[events[i]]} time_us={times[i]}")
        run.files[fi].rows_kept -= len(sel)
        run.quarantine_rows(int(fi), bad)


# ---------------------------------------------------------------- global: session numbering, sample, vocabulary

def _number_sessions(run: _Run, per_bucket: list[dict]) -> tuple[pa.Table, dict[int, np.ndarray], dict]:
    """Number sessions by start time, keep a seeded sample of `max_sessions`, assign splits.

    Returns the session table (one row per kept session, numbered 0..n-1 by start), the per-bucket lookup
    from local session index to that number (-1: sampled out), and the sample counts for the manifest.
    """
    cfg = run.cfg
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
        id_type = pa.int64() if run.id_types.get("user_id") == "int" else pa.string()
        sessions = pa.table({"start": pa.array([], pa.int64()), "user_id": pa.array([], id_type),
                             "bucket": pa.array([], pa.int32()), "local": pa.array([], pa.int64()),
                             "length": pa.array([], pa.int64())})
    keys = [("start", "ascending"), ("user_id", "ascending")]
    if "session_id" in sessions.column_names:
        keys.append(("session_id", "ascending"))
    keys += [("bucket", "ascending"), ("local", "ascending")]
    sessions = sessions.sort_by(keys)  # global session index = rank by start time: independent of buckets
    events_before = int(pc.sum(sessions.column("length")).as_py() or 0)
    chosen = sample_sessions(sessions.num_rows, cfg.max_sessions, cfg.seed)
    if chosen is not None:
        sessions = sessions.take(pa.array(chosen))
    n = sessions.num_rows
    sample = {"sampled_out": sum(len(pb["sessions"]["start"]) for pb in per_bucket) - n,
              "events_sampled_out": events_before - int(pc.sum(sessions.column("length")).as_py() or 0)}
    split = assign_splits(n, cfg.split, cfg.split_fractions, cfg.seed)
    sessions = sessions.append_column("session", pa.array(np.arange(n, dtype=np.int64)))
    sessions = sessions.append_column("split", pa.array(split.astype(np.int8)))
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


def _count_sample(run: _Run, per_bucket: list[dict], lookup: dict[int, np.ndarray]) -> dict:
    """A light pass over the sorted buckets: item counts, distinct items and events by type of the
    sampled sessions only (what the vocabulary and the manifest describe under max_sessions)."""
    n_types = len(run.event_types.names)

    def count(pb: dict) -> tuple[pa.StructArray | None, np.ndarray]:
        with pa.memory_map(str(pb["path"])) as src:
            t = ipc.open_stream(src).read_all()
        keep = lookup[pb["bucket"]][t.column("_session").to_numpy()] >= 0
        events = t.column("event").to_numpy()[keep]
        items = t.column("item_id").combine_chunks().filter(pa.array(keep))
        return (pc.value_counts(items) if len(items) else None), np.bincount(events, minlength=n_types)[:n_types]

    item_counts, events_by_type = [], np.zeros(n_types, np.int64)
    with ThreadPoolExecutor(max_workers=_THREADS) as pool:
        for vc, by_type in pool.map(count, per_bucket):
            events_by_type += by_type
            if vc is not None:
                item_counts.append(vc)
    return {"item_counts": item_counts, "events_by_type": events_by_type, "items_seen": _distinct(item_counts)}


def _distinct(item_counts: list[pa.StructArray]) -> int:
    """Distinct items over per-bucket value counts (a user's items may sit in several buckets)."""
    if not item_counts:
        return 0
    return int(pc.count_distinct(pa.chunked_array([vc.field("values") for vc in item_counts])).as_py())


def _vocabulary(run: _Run, item_counts: list[pa.StructArray]) -> pa.Table:
    """Items with at least min_item_count events, most frequent first, indexed from 2."""
    cfg = run.cfg
    item_type = pa.int64() if run.id_types.get("item_id") == "int" else pa.string()
    parts_vc = [pa.table({"item_id": vc.field("values"), "count": vc.field("counts")}) for vc in item_counts]
    if parts_vc:
        counts = pa.concat_tables(parts_vc).group_by("item_id").aggregate([("count", "sum")])
        counts = counts.rename_columns(["item_id", "count"])
    else:
        counts = pa.table({"item_id": pa.array([], item_type), "count": pa.array([], pa.int64())})
    vocab = counts.filter(pc.greater_equal(counts.column("count"), cfg.min_item_count))
    vocab = vocab.sort_by([("count", "descending"), ("item_id", "ascending")])
    if vocab.num_rows + 2 >= 1 << 24:
        raise InputError(f"{vocab.num_rows} items exceed the supported catalogue of 2^24 - 2; "
                         "raise --min-item-count")
    return vocab.append_column("index", pa.array(np.arange(2, vocab.num_rows + 2, dtype=np.int32)))


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


# ---------------------------------------------------------------- pass 3: events and transitions per split

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


def _emit(run: _Run, per_bucket: list[dict], sessions: pa.Table, vocab: pa.Table,
          lookup: dict[int, np.ndarray]) -> dict:
    """Pass 3: events.parquet in bucket order, and per split the transition arrays (kept sessions only)."""
    cfg, out = run.cfg, run.out
    W = cfg.window
    rewards = np.asarray(run.event_types.rewards, np.float32)
    split_codes = sessions.column("split").to_numpy()
    lengths = sessions.column("length").to_numpy()
    loo = cfg.split == "loo"
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
                  "session": ((n,), np.int64)}
        files.append({name: _NpyAppender(tdir / s / f"{name}.npy", dt, shp) for name, (shp, dt) in shapes.items()})

    split_dict = pa.array([*SPLITS, "loo"], pa.string())
    type_dict = pa.array(list(run.event_types.names), pa.string())
    ctx = {"to_global": lookup, "vocab_items": vocab.column("item_id").combine_chunks(),
           "split_codes": split_codes, "lengths": lengths, "loo": loo, "W": W, "rewards": rewards,
           "split_dict": split_dict, "type_dict": type_dict}
    writer = None
    with ThreadPoolExecutor(max_workers=_THREADS) as pool:
        pending: deque = deque()
        queue = list(per_bucket)
        while queue or pending:
            while queue and len(pending) < _THREADS:  # at most two buckets in memory at once
                pb = queue.pop(0)
                pending.append(pool.submit(_emit_bucket, pb, ctx))
            events, parts = pending.popleft().result()
            for k, part in enumerate(parts):
                for name, block in part.items():
                    files[k][name].append(block)
            if writer is None:
                writer = pq.ParquetWriter(out / "events.parquet", events.schema, **_PARQUET_OPTIONS)
            writer.write_table(events)
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
    pq.write_table(sess_out, out / "sessions.parquet", **_PARQUET_OPTIONS)
    pq.write_table(pa.table({"index": vocab.column("index"), "item_id": vocab.column("item_id"),
                             "count": vocab.column("count")}), out / "vocab.parquet")
    return {s: {"sessions": int(n_sessions[k]), "events": int(n_events[k])} for k, s in enumerate(SPLITS)}


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
    parts = []
    for k in range(3):
        rows = np.flatnonzero(split == k)  # in session order
        items_k, sess_k, state_k = item[rows], glob[rows], state[rows]
        parts.append({"state": state_k, "action": items_k, "event": event[rows],
                      "reward": ctx["rewards"][event[rows]], "next_state": S.next_windows(state_k, items_k),
                      "done": np.r_[sess_k[1:] != sess_k[:-1], True][:len(rows)],  # last step in this split
                      "session": sess_k})
    events = _events_table(t, glob, position, split, item, event, ctx["split_dict"], ctx["type_dict"])
    del t
    pb["path"].unlink()
    return events, parts


_PARQUET_OPTIONS = {"compression": "lz4", "use_dictionary": ["split", "event_type", "nudge_id"]}


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


def read_manifest(folder: str | Path) -> dict:
    """The manifest of a prepared-dataset folder; a clear error when the folder is not one."""
    m = _load_manifest(Path(folder))
    if m is None:
        raise InputError(f"{folder}: not a prepared dataset (no manifest.json); run `seqrec prepare` first")
    return m


def load_transitions(folder: str | Path, split: str) -> dict[str, np.ndarray]:
    """One split's transition arrays, memory-mapped (state, action, event, reward, next_state, done, session)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    d = Path(folder) / "transitions" / split
    try:
        return {name: np.load(d / f"{name}.npy", mmap_mode="r") for name in TRANSITION_FILES}
    except FileNotFoundError as e:
        raise InputError(f"{folder}: missing transitions for split {split!r} ({e.filename})") from None


def event_names(manifest: dict) -> tuple[str, ...]:
    return tuple(e["name"] for e in sorted(manifest["event_types"], key=lambda e: e["code"]))
