"""Raw event files -> a prepared-dataset folder: events, sessions, vocabulary, splits, RL transitions.

Three passes keep memory bounded by one bucket, not by the input:
1. stream every file, validate, quarantine bad rows, exclude (and count) rows of dropped event types, and
   scatter kept rows into user-hash buckets on disk (datasets/scatter.py);
2. per bucket: sort, quarantine duplicates, cut sessions, drop short ones, count items (datasets/sessionize.py);
   then globally: number sessions by start time, sample `max_sessions` of them (then recount items and
   event types over the sample, one light pass), split them (datasets/splits.py), build the item vocabulary
   (datasets/vocabulary.py);
3. per bucket: map items, write events and the transitions of each split, sampled sessions only (datasets/emit.py).
The folder's manifest.json (see `MANIFEST_KEYS` in datasets/manifest.py) is written last, so its presence means
the folder is complete; a second run with the same inputs and config re-uses the folder.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from seqrec.core.io import atomic_write_text
from seqrec.core.lock import output_lock
from seqrec.core.progress import ProgressLines, TickingBar

from .duplicates import duplicate_rows, earliest_duplicate
from .emit import emit
from .inputs import FileStats, bucket_count, check_inputs, merged_event_map
from .manifest import FORMAT_VERSION, load_manifest, outputs_exist
from .quarantine import Quarantine, nothing_usable
from .readers import BadRows, InputError, SourceSpec
from .scatter import Scatter
from .schema import DEFAULT_REWARDS, EVENT_TYPES, FIRST_ITEM, QUARANTINE_SCHEMA
from .sessionize import sessionize
from .sessions import gap_us
from .splits import number_sessions
from .validate import EventTypes
from .vocabulary import count_sample, vocabulary


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


def prepare(inputs: list[Path], spec_of: Callable[[Path], SourceSpec], cfg: PrepareConfig, out: Path,
            progress: bool | None = None) -> dict:
    """Prepare `inputs` into the folder `out` and return the manifest (also written to out/manifest.json). Holds
    `out`'s lock throughout (seqrec/core/lock.py): a second writer of `out` stops with an error naming this one."""
    with output_lock(out, "seqrec prepare"):
        return _prepare(inputs, spec_of, cfg, Path(out), progress)


def _prepare(inputs: list[Path], spec_of: Callable[[Path], SourceSpec], cfg: PrepareConfig, out: Path,
             progress: bool | None) -> dict:
    """`prepare` under the lock; `progress` None prints a line every few seconds when stderr is no terminal."""
    t0 = time.perf_counter()
    lines = ProgressLines.for_progress("seqrec prepare", progress)
    inputs = [Path(p) for p in inputs]
    specs = [spec_of(p) for p in inputs]  # raises for a bad map before any work
    check_inputs(inputs)
    files = [FileStats.of(p, s) for p, s in zip(inputs, specs)]
    config = _config_dict(cfg, specs)
    cache_key = hashlib.sha256(json.dumps({"v": FORMAT_VERSION, "config": config,
                                           "inputs": [f.sha256 for f in files]}, sort_keys=True).encode()).hexdigest()
    previous = load_manifest(out)
    if previous and previous.get("cache_key") == cache_key and outputs_exist(out, previous):
        previous["reused"] = True
        return previous

    out.mkdir(parents=True, exist_ok=True)
    for stale in ("manifest.json", "quarantine.parquet"):
        (out / stale).unlink(missing_ok=True)
    work = out / "_work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    event_types = EventTypes.build(merged_event_map(specs), dict(cfg.rewards))
    names = event_types.names
    id_types: dict[str, str] = {}
    id_type = cfg.id_type if cfg.id_type != "auto" else next((s.id_type for s in specs if s.id_type != "auto"), "auto")
    if id_type != "auto":  # named adapters know their ids are integers: a stray text id is then quarantined
        id_types.update({"user_id": id_type, "item_id": id_type, "session_id": id_type})
    scatter = Scatter(work, bucket_count(inputs, files, cfg.bucket_rows), event_types, id_types)
    quarantine = Quarantine(out / "quarantine.parquet", files)

    def on_bad(file_index: int, bad: BadRows) -> None:
        if cfg.strict and len(bad):
            i = int(np.argmin(bad.rows))
            raise _StrictStop(file_index, int(bad.rows[i]), f"{files[file_index].path}: row {bad.rows[i]}: field "
                              f"{bad.fields[i]!r}: {bad.reasons[i]} (value {bad.values[i]!r}); rerun without "
                              "--strict to quarantine bad rows")
        quarantine.add(file_index, bad)

    def on_duplicates(dups: pa.Table) -> None:
        for fi, bad in duplicate_rows(dups, names):
            files[fi].rows_kept -= len(bad)
            on_bad(fi, bad)

    nothing: InputError | None = None  # no row kept: an error, after the quarantine file is written
    try:
        timings = {}
        t = time.perf_counter()
        try:
            bar = TickingBar(_progress_bar(sum(f.bytes for f in files), progress), lambda: lines.tick(
                lambda: f"pass 1: {sum(f.rows_read for f in files):,} rows read"))
            scatter.run(inputs, specs, files, on_bad, bar)
        except _StrictStop as stop:  # a duplicate before the bad row is the first bad row
            raise _strict_duplicate(scatter, files, before=stop.position) or stop from None
        if cfg.strict and (dup := _strict_duplicate(scatter, files, before=None)):
            raise dup
        timings["read_validate_s"] = time.perf_counter() - t
        nothing = nothing_usable(files, quarantine.reasons, out / "quarantine.parquet")
        if nothing is not None:
            raise nothing
        t = time.perf_counter()
        schema = scatter.schema()
        columns = schema.names if schema is not None else []  # (the manifest lists their id types)
        cut = _Counter(lines, "pass 2: {:,} sessions cut, bucket {}/" + str(len(scatter.buckets)))
        per_bucket, stats = sessionize(work, sorted(scatter.buckets), schema, len(names), cfg.min_session_length,
                                       gap_us(cfg.session_gap_minutes), on_duplicates, on_bucket=cut)
        timings["sessions_s"] = time.perf_counter() - t
        t = time.perf_counter()
        session_table, lookup, sample = number_sessions(per_bucket, id_types.get("user_id") == "int",
                                                        cfg.max_sessions, cfg.split, cfg.split_fractions, cfg.seed)
        if cfg.max_sessions is not None:  # the vocabulary and event counts describe the sample only
            stats.update(count_sample(per_bucket, lookup, len(names)))
        vocab = vocabulary(stats["item_counts"], id_types.get("item_id") == "int", cfg.min_item_count)
        splits = emit(out, per_bucket, session_table, vocab, lookup, names, event_types.rewards, cfg.window,
                      cfg.split == "loo", on_bucket=_Counter(lines, "pass 3: {:,} events written, bucket {}/"
                                                             + str(len(per_bucket))))
        timings["write_s"] = time.perf_counter() - t
    finally:
        quarantine.close()
        shutil.rmtree(work, ignore_errors=True)
        if nothing is not None and not quarantine.written:
            pq.write_table(QUARANTINE_SCHEMA.empty_table(), out / "quarantine.parquet")
    if not quarantine.written:  # always leave a (possibly empty) quarantine file for scripts
        pq.write_table(QUARANTINE_SCHEMA.empty_table(), out / "quarantine.parquet")

    for f in files:
        assert f.rows_kept + f.rows_quarantined + f.rows_excluded == f.rows_read, f"row accounting broke for {f.path}"
    assert sum(scatter.excluded.values()) == sum(f.rows_excluded for f in files), "excluded rows miscounted"
    manifest = {
        "format_version": FORMAT_VERSION,
        "rows_read": sum(f.rows_read for f in files),
        "rows_kept": sum(f.rows_kept for f in files),
        "rows_quarantined": sum(f.rows_quarantined for f in files),
        "rows_excluded": sum(f.rows_excluded for f in files),
        "quarantine_reasons": dict(sorted(quarantine.reasons.items())),
        "excluded_by_event": dict(scatter.excluded),
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
        "catalogue_size": int(len(vocab)) + FIRST_ITEM,
        "items_seen": int(stats["items_seen"]),
        "event_types": [{"name": n, "code": i, "reward": r} for i, (n, r) in
                        enumerate(zip(names, event_types.rewards))],
        "id_types": {k: v for k, v in id_types.items() if k in columns},
        "splits": splits,
        "config": config,
        "inputs": [asdict(f) for f in files],
        "cache_key": cache_key,
        "timings": {**{k: round(v, 3) for k, v in timings.items()}, "total_s": round(time.perf_counter() - t0, 3)},
        "reused": False,
    }
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2))
    return manifest


class _Counter:
    """Counts what each bucket of a pass reports (sessions cut, events written) and hands the running total and
    the bucket number to the progress lines, formatted by `template`."""

    def __init__(self, lines: ProgressLines, template: str) -> None:
        self.lines, self.template, self.total, self.buckets = lines, template, 0, 0

    def __call__(self, n: int) -> None:
        self.total += n
        self.buckets += 1
        self.lines.tick(lambda: self.template.format(self.total, self.buckets))


def _strict_duplicate(scatter: Scatter, files: list[FileStats], before: tuple[int, int] | None) -> InputError | None:
    """--strict: the duplicate that comes first in input order (and before `before`), as an error."""
    if not scatter.schemas:
        return None
    best = earliest_duplicate(scatter.work, scatter.buckets, scatter.schema())
    if best is None or (before is not None and best > before):
        return None
    return InputError(f"{files[best[0]].path}: row {best[1]}: field '*': duplicate_event (same user, item, "
                      "event type and time as an earlier row); rerun without --strict to quarantine bad rows")


def _config_dict(cfg: PrepareConfig, specs: list[SourceSpec]) -> dict:
    """The config as manifest.json records it (and the re-use key hashes it): plain JSON, with each distinct
    reader; bucket_rows left out."""
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
        if sd["columns"].get("user") is not None and sd["columns"]["user"] == sd["columns"].get("session"):
            sd["user_from_session"] = True  # a session-only log: the session id stands in for the user
        if sd not in unique:
            unique.append(sd)
    d["readers"] = unique
    return d


def _progress_bar(total_bytes: int, progress: bool | None):
    """Bytes read, shown when asked for, or by default for inputs of 64 MiB and more."""
    from tqdm import tqdm

    disable = (not progress) if progress is not None else (total_bytes < (64 << 20) or None)
    return tqdm(total=total_bytes, unit="B", unit_scale=True, desc="prepare", disable=disable, leave=False)
