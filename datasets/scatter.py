"""Pass 1 of `seqrec prepare` and `seqrec score`: read and validate every input, scatter kept rows by user.

Rows go to user-hash bucket files on disk (Arrow IPC streams, WORK/bucket-BBBBB-KKK.arrow, K the distinct
schema of the rows), so that every user's events lie whole in one bucket whatever the order of the input and
later passes need memory for one bucket, not for the input. Reading runs in a background thread, ahead of
the scattering. `read_bucket` reads one bucket back as one table.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from seqrec.core.faults import kill_point

from .inputs import FileStats
from .readers import BadRows, InputError, SourceSpec, read_file
from .validate import EventTypes, Validator

BUCKET_THREADS = 2  # buckets in flight in the passes after this one (the machine this targets has 2 cores)


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


def bucket_paths(work: Path, b: int) -> list[Path]:
    """The part files of bucket b, in the order their schemas first appeared."""
    return sorted(work.glob(f"bucket-{b:05d}-*.arrow"))


@dataclass
class Scatter:
    """One pass 1 into `work`: its settings, and what it found (kept on the object, also when it stops early).

    `id_types` (column -> int | string) is shared with the validators, which fill in the kinds they detect;
    `keep` limits the columns scattered (None: all).
    """

    work: Path
    n_buckets: int
    event_types: EventTypes
    id_types: dict[str, str] = field(default_factory=dict)
    keep: tuple[str, ...] | None = None
    batch_rows: int = 1 << 20
    schemas: list[pa.Schema] = field(default_factory=list)  # distinct schemas of kept rows, in order seen
    sources: list[str] = field(default_factory=list)  # the input that first produced each
    buckets: set[int] = field(default_factory=set)  # buckets holding rows
    excluded: dict[str, int] = field(default_factory=dict)  # raw event name -> rows excluded (drop)

    def __post_init__(self) -> None:
        self.excluded = dict.fromkeys(self.event_types.dropped, 0)

    def run(self, inputs: list[Path], specs: list[SourceSpec], files: list[FileStats],
            on_bad: Callable[[int, BadRows], None], bar) -> None:
        """Scatter every input's kept rows; `on_bad(file index, rows)` gets the bad rows (it may raise to stop);
        `bar` (a tqdm) counts bytes read and is closed at the end."""
        writers: dict[tuple[int, int], ipc.RecordBatchStreamWriter] = {}
        try:
            for kept in _prefetch(self._validated(inputs, specs, files, on_bad, bar)):
                k = self.schemas.index(kept.schema)  # inputs with other columns go to other part files
                for b, part in self._split(kept):
                    if (b, k) not in writers:
                        # the stream format, unlike the file format, accepts a new dictionary per batch
                        writers[(b, k)] = ipc.new_stream(str(self.work / f"bucket-{b:05d}-{k:03d}.arrow"),
                                                         kept.schema)
                        self.buckets.add(b)
                    writers[(b, k)].write_table(part)
                    kill_point("scatter.write")  # a test hook (seqrec/core/faults.py)
        finally:
            for w in writers.values():
                w.close()
            bar.close()

    def schema(self) -> pa.Schema | None:
        """The union of the kept rows' schemas (None before any row), the schema of every bucket."""
        return unify_schemas(self.schemas, self.sources) if self.schemas else None

    def _split(self, kept: pa.Table) -> list[tuple[int, pa.Table]]:
        """(bucket, its rows of `kept`, in input order) for every bucket with rows."""
        if self.n_buckets == 1:
            return [(0, kept)]
        bucket = bucket_of(kept.column("user_id").combine_chunks(), self.n_buckets)  # (N,)
        order = np.argsort(bucket, kind="stable")
        counts = np.bincount(bucket, minlength=self.n_buckets)
        grouped = kept.take(pa.array(order))
        offsets = np.concatenate([[0], np.cumsum(counts)])
        return [(b, grouped.slice(offsets[b], counts[b])) for b in range(self.n_buckets) if counts[b]]

    def _validated(self, inputs: list[Path], specs: list[SourceSpec], files: list[FileStats],
                   on_bad: Callable[[int, BadRows], None], bar) -> Iterator[pa.Table]:
        """Read and validate every file: count rows per file, hand bad rows to `on_bad`, yield kept rows."""
        for fi, (path, spec) in enumerate(zip(inputs, specs)):
            validate = Validator(str(path), fi, self.event_types, spec.time_unit, spec.event_type, self.id_types)
            stats = files[fi]
            last = 0
            for raw in read_file(path, spec, self.batch_rows):
                bad = raw.bad
                stats.rows_read += raw.table.num_rows + len(bad)
                kept = validate(raw, bad) if raw.table.num_rows else None
                stats.rows_excluded = int(validate.excluded.sum())
                bar.update(raw.bytes_read - last)
                last = raw.bytes_read
                if kept is not None and kept.num_rows:
                    stats.rows_kept += kept.num_rows
                    if self.keep is not None:
                        kept = kept.select([c for c in self.keep if c in kept.column_names])
                    if kept.schema not in self.schemas:
                        self.schemas.append(kept.schema)
                        self.sources.append(str(path))
                    yield kept  # first, so that --strict can still see a duplicate before the bad row
                on_bad(fi, bad)
            for name, count in zip(self.event_types.dropped, validate.excluded.tolist()):
                self.excluded[name] += count
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


def read_bucket(paths: list[Path], schema: pa.Schema | None = None) -> pa.Table:
    """The part files `paths` of one bucket as one table in `schema` (None: the union of their own schemas)."""
    tables = []
    for path in paths:
        with pa.memory_map(str(path)) as src:
            tables.append(ipc.open_stream(src).read_all())
    if schema is None:
        schema = unify_schemas([t.schema for t in tables], [str(p) for p in paths])
    tables = [conform_table(t, schema) for t in tables]
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


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
