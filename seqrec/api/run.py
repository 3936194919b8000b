"""A trained run loaded once for notebooks: `Run.score(events)` scores an in-memory table of events.

The rows are those `seqrec score` writes for the same events (tests/test_api.py compares them): the events are
read as `seqrec score` reads a Parquet file in the event schema (the run's event map, prepare's validator; bad
rows quarantined, duplicate events too), cut into sessions and scored by `score_batch`, each batch in a thread
running torch on one thread, as the local engine does. Nothing is written to disk.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from seqrec.datasets.adapters import source_spec
from seqrec.datasets.duplicates import find_duplicates
from seqrec.datasets.manifest import read_manifest
from seqrec.datasets.readers import PARSED_FIELDS, BadRows, InputError, RawBatch, SourceSpec
from seqrec.datasets.scatter import conform_table, unify_schemas
from seqrec.datasets.schema import COLUMN_OF_FIELD
from seqrec.datasets.sessions import gap_us
from seqrec.datasets.validate import EventTypes, Validator
from seqrec.runs.config import saved_config
from seqrec.runs.score_config import ScoreConfig
from seqrec.serve.engines import KEEP_COLUMNS, READ_ROWS, one_thread_each, reader_defaults
from seqrec.serve.scoring import ScoringBundle, load_bundle, score_batch, state_event_codes
from seqrec.serve.sessions_state import session_states

ERRORS = ("quarantine", "raise")
MEMORY = "<events>"  # the "file" name of an in-memory table in error messages


@dataclass(frozen=True)
class Run:
    """A run folder loaded for scoring with fixed settings (a ScoreConfig): the models, vocabulary, nudge policy
    and the event map of the data the run was prepared from."""

    path: Path
    config: ScoreConfig
    bundle: ScoringBundle
    event_map: tuple[tuple[str, str], ...]  # raw event name -> type, as `seqrec score` reads the run's logs
    rewards: dict                            # the prepared data's reward per event type (defines event codes)
    id_types: dict                           # {"item_id": "int" | "string"} of the prepared data, when known

    @property
    def model_version(self) -> str:
        return self.bundle.model_version

    @property
    def config_hash(self) -> str:
        return self.bundle.config_hash

    def score(self, events: pd.DataFrame | pa.Table, time_unit: str = "auto",
              errors: str = "quarantine") -> pd.DataFrame:
        """One row per (session, rank) for the sessions of `events` (user_id, item_id, timestamp, optional
        session_id / event_type / nudge_id / propensity / value / feature columns), the columns and values of
        `seqrec score`'s Parquet parts. `time_unit` reads numeric timestamps (auto: seconds); `errors`:
        "quarantine" drops bad rows (counted in the result's .attrs), "raise" stops at the first one.

        The result's .attrs hold the counts `seqrec score`'s manifest reports: rows_read, rows_kept,
        rows_quarantined, rows_excluded, quarantine_reasons, sessions, fallback."""
        if errors not in ERRORS:
            raise ValueError(f"errors must be one of {', '.join(ERRORS)}, got {errors!r}")
        table = events_table(events)
        spec = events_spec(table.column_names, self.event_map, time_unit)
        kept, counts, bad = validate_events(table, spec, EventTypes.build(self.event_map, self.rewards),
                                            dict(self.id_types), (*KEEP_COLUMNS, *self.bundle.user_spec.columns))
        if errors == "raise" and len(bad):
            raise InputError(f"{MEMORY} row {bad.rows[0]}: {bad.fields[0]}: {bad.reasons[0]} ({bad.values[0]!r})")
        order, dup = find_duplicates(kept)
        counts["rows_kept"] -= int(dup.sum())
        counts["rows_quarantined"] += int(dup.sum())
        if dup.any():
            reasons = counts["quarantine_reasons"]
            reasons["duplicate_event"] = reasons.get("duplicate_event", 0) + int(dup.sum())
            if errors == "raise":
                raise InputError(f"{MEMORY}: {int(dup.sum())} duplicate event(s) (same user, item, event type and "
                                 "time as an earlier row)")
        kept = kept.take(pa.array(order[~dup]))
        gap = gap_us(float(self.bundle.info["session_gap_minutes"]))
        names = EventTypes.build(self.event_map, self.rewards).names  # the codes of kept's "event" column
        states = session_states(kept, self.bundle.window, gap, self.bundle.user_spec.columns,
                                event_codes=state_event_codes(self.bundle, kept, names))
        scored = score_states(self.bundle, states, self.config.batch_size, self.config.workers)
        frame = scored.to_pandas()
        fallback = scored.column("fallback").to_numpy(zero_copy_only=False) & (scored.column("rank").to_numpy() == 1)
        frame.attrs = {**counts, "quarantine_reasons": dict(sorted(counts["quarantine_reasons"].items())),
                       "sessions": states.num_rows, "fallback": int(fallback.sum())}
        return frame


def open_run(run: str | Path, config: ScoreConfig | None = None) -> Run:
    """The run folder `run` loaded for scoring with `config` (default ScoreConfig())."""
    run = Path(run)
    config = config or ScoreConfig()
    bundle = load_bundle(run, config)
    _, event_map = reader_defaults(run)
    prepared = read_manifest(saved_config(run).data)
    id_types = {"item_id": prepared["id_types"]["item_id"]} if "item_id" in prepared.get("id_types", {}) else {}
    return Run(run, config, bundle, event_map, dict(prepared["config"]["rewards"]), id_types)


def events_table(events: pd.DataFrame | pa.Table) -> pa.Table:
    """A DataFrame (its index dropped) or an Arrow table as an Arrow table, as Parquet would store it."""
    if isinstance(events, pa.Table):
        return events
    if isinstance(events, pd.DataFrame):
        return pa.Table.from_pandas(events, preserve_index=False)
    raise TypeError(f"events must be a pandas DataFrame or a pyarrow Table, got {type(events).__name__}")


def events_spec(names: list[str], event_map: tuple[tuple[str, str], ...], time_unit: str) -> SourceSpec:
    """How `seqrec score` reads a file with these columns in the event schema: schema column names map to
    their fields, other columns are features; without an event_type column every event is a view."""
    by_column = {column: name for name, column in COLUMN_OF_FIELD.items()}
    columns = tuple((by_column.get(n, n), n) for n in names)
    return source_spec("events", Path("events.parquet"), columns=columns, fmt="parquet", time_unit=time_unit,
                       event_type=None if "event_type" in names else "view", event_map=event_map)


def raw_batches(table: pa.Table, spec: SourceSpec, batch_rows: int = READ_ROWS) -> Iterator[RawBatch]:
    """The table as the Parquet reader yields a file of it: the mapped columns under their event-table names,
    text columns other than ids, times and numbers as dictionaries, 1-based row numbers, batch_rows at a time."""
    plain = {column for name, column in spec.columns if name in PARSED_FIELDS}  # read as stored, not as dictionaries
    columns = {}
    for name, column in spec.columns:
        col = table.column(column)
        if column not in plain and (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            col = col.cast(pa.string()).dictionary_encode()
        columns[spec.target_name(name)] = col
    mapped = pa.table(columns) if columns else table
    for lo in range(0, table.num_rows, batch_rows):
        part = mapped.slice(lo, batch_rows)
        yield RawBatch(part, np.arange(lo + 1, lo + part.num_rows + 1, dtype=np.int64), BadRows())


def validate_events(table: pa.Table, spec: SourceSpec, event_types: EventTypes, id_types: dict,
                    keep: tuple[str, ...]) -> tuple[pa.Table, dict, BadRows]:
    """Validate the table as `seqrec score` validates an input: (kept rows with the `keep` columns present,
    counts, the quarantined rows). Duplicate events are still in the kept rows (see find_duplicates)."""
    validate = Validator(MEMORY, 0, event_types, spec.time_unit, spec.event_type, id_types)
    bad, schemas, parts = BadRows(), [], []
    for raw in raw_batches(table, spec):
        kept = validate(raw, bad) if raw.table.num_rows else None
        if kept is not None and kept.num_rows:
            kept = kept.select([c for c in keep if c in kept.column_names])
            if kept.schema not in schemas:
                schemas.append(kept.schema)
            parts.append((schemas.index(kept.schema), kept))
    excluded = int(validate.excluded.sum())
    reasons: dict[str, int] = {}
    for r in bad.reasons:
        reasons[r] = reasons.get(r, 0) + 1
    kept_rows = sum(t.num_rows for _, t in parts)
    counts = {"rows_read": table.num_rows, "rows_kept": kept_rows, "rows_quarantined": len(bad),
              "rows_excluded": excluded, "quarantine_reasons": reasons}
    if not parts:  # no event kept: an empty table of the columns sessions need
        ids = ("user_id", "session_id", "item_id") if "session_id" in table.column_names else ("user_id", "item_id")
        empty = {**{c: pa.array([], pa.int64()) for c in ids}, "event": pa.array([], pa.int16()),
                 "timestamp": pa.array([], pa.int64())}
        return pa.table(empty), counts, bad
    # rows grouped by schema in the order first seen, as the local engine's bucket files are concatenated
    # (a user's events keep their relative order either way)
    schema = unify_schemas(schemas, [MEMORY] * len(schemas))
    tables = [conform_table(t, schema) for k in range(len(schemas)) for j, t in parts if j == k]
    return pa.concat_tables(tables), counts, bad


def score_states(bundle: ScoringBundle, states: pa.Table, batch_size: int, workers: int | None) -> pa.Table:
    """score_batch over the session states, batch_size sessions at a time, each batch in a thread running torch
    on one thread (as the local engine scores), rows in session order."""
    batches = [states.slice(lo, batch_size) for lo in range(0, states.num_rows, batch_size)] or [states]
    with one_thread_each(workers or torch.get_num_threads()) as pool:
        return pa.concat_tables(pool.map(lambda batch: score_batch(bundle, batch), batches))




def score_config(settings: Mapping[str, object]) -> ScoreConfig:
    """A ScoreConfig from keyword settings (its field names), with errors naming the key."""
    from seqrec.core.config import from_dict

    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in settings.items()}
    return from_dict(ScoreConfig, dict(settings), "score")

