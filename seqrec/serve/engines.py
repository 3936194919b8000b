"""Batch-scoring engines: raw event files -> scored Parquet parts, quarantine, manifest.json and _COMPLETE.

An engine runs the one pure function `seqrec.serve.scoring.score_batch(bundle, sessions)` over every session of a
job's inputs (DESIGN.md, the Engine seam). `LocalEngine` (`--engine local`, the default) does it on one
machine in memory bounded by one bucket, not by the input (`RayEngine`, seqrec/ray_engine.py, shares step 1 (`begin`),
the duplicates of step 2 (`bucket_events`) and step 3 (`finish`) with it):

1. read every input with the readers and the validator of `seqrec prepare`: bad rows go to the quarantine
   with their reason, rows of event types mapped to `drop` are excluded and counted; kept rows (only the
   columns scoring needs) are scattered into user-hash buckets on disk (Arrow IPC), so every session lies
   whole in one bucket whatever the order of the input;
2. per bucket: quarantine duplicate events, cut sessions and build their states (seqrec/sessions_state.py),
   score them `batch_size` sessions at a time into OUT/scores/part-BBBBB.parquet (written under a temporary
   name, then renamed), then note the bucket as done. Batches are scored by `workers` threads at once, each
   running torch with one thread: whole batches in parallel instead of every operation split across cores,
   which on a machine shared with other jobs avoids OpenMP threads spin-waiting for each other (and makes
   the rows independent of the worker count);
3. merge the quarantine, check the counts (per input rows read = kept + quarantined + excluded; sessions
   in = sessions scored), write manifest.json, then _COMPLETE.

Resume: OUT/_work holds the job key, the scatter's counts and a note per finished bucket. Started again after a
kill at any point, the same command skips finished buckets and redoes the others whole (same content), so no
session is lost or written twice. A finished OUT of the same job is re-used; another job (other inputs, run or
settings) clears OUT's scoring files and starts afresh.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import torch

from seqrec.datasets.prepare import (
    FileStats,
    bucket_of,
    conform_table,
    estimate_rows,
    gap_us,
    read_manifest,
    unify_schemas,
)
from seqrec.datasets.readers import BadRows, InputError, SourceSpec, read_file
from seqrec.datasets.schema import QUARANTINE_SCHEMA
from seqrec.datasets.validate import EventTypes, Validator
from seqrec.serve.scoring import ScoreConfig, ScoringBundle, load_bundle, score_batch
from seqrec.serve.sessions_state import find_duplicates, session_states

ENGINES: tuple[str, ...] = ("local", "ray")
MANIFEST_FORMAT = 1
READ_ROWS = 1 << 18  # rows per record batch read in pass 1: reading and validating a batch bounds its memory
KEEP_COLUMNS = ("user_id", "session_id", "item_id", "event", "timestamp", "_file", "_row")
SCORES = "scores"  # OUT/scores/ holds only the part files: one Parquet dataset, readable as a whole
PARQUET = {"compression": "zstd", "use_dictionary": ["nudge_id", "nudge_family", "model_version", "config_hash"]}


@dataclass(frozen=True)
class ScoreJob:
    """One `seqrec score` call: the run, the inputs with how to read each, the output folder and the settings."""

    run: Path
    inputs: tuple[Path, ...]
    specs: tuple[SourceSpec, ...]
    out: Path
    config: ScoreConfig = field(default_factory=ScoreConfig)


class Engine(Protocol):
    """Runs score_batch over every session of a job and writes OUT (parts, quarantine, manifest, _COMPLETE)."""

    def score(self, job: ScoreJob, progress: bool | None = None) -> dict:
        """Score the job; returns the manifest written to OUT/manifest.json."""
        ...


def reader_defaults(run: Path) -> tuple[str, tuple[tuple[str, str], ...]]:
    """(source, event map) of the data the run was prepared from: scoring reads new logs of the same format
    the same way unless told otherwise ("synthetic" data is read with the generic reader)."""
    from seqrec.datasets.adapters import SOURCES
    from seqrec.runs.config import saved_config

    cfg = read_manifest(saved_config(run).data)["config"]
    source = cfg.get("source", "events")
    merged: dict[str, str] = {}
    for reader in cfg.get("readers", []):
        merged.update(reader.get("event_map", {}))
    return (source if source in SOURCES else "events"), tuple(merged.items())


def write_json(path: Path, data: dict) -> None:
    """Write `data` as JSON atomically (a temporary file, then a rename): a kill never leaves half a note."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def read_json(path: Path) -> dict | None:
    """The JSON object in `path`, or None when it is missing or unreadable (a note not yet written)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _quarantine_table(path: str, bad: BadRows) -> pa.Table:
    return pa.table({"source_file": pa.array([path] * len(bad), pa.string()), "row": pa.array(bad.rows, pa.int64()),
                     "field": pa.array(bad.fields, pa.string()), "reason": pa.array(bad.reasons, pa.string()),
                     "value": pa.array(bad.values, pa.string())}, schema=QUARANTINE_SCHEMA)


def _progress(unit: str, desc: str, total: int | None, progress: bool | None, small: bool):
    from tqdm import tqdm

    disable = (not progress) if progress is not None else (small or None)
    return tqdm(total=total, unit=unit, unit_scale=unit == "B", desc=desc, disable=disable, leave=False)


@dataclass(frozen=True)
class Started:
    """A job past pass 1: the loaded run, its key, the work folder, pass 1's counts and seconds."""

    bundle: ScoringBundle
    key: str
    work: Path
    scatter: dict
    resumed: bool
    load_s: float
    read_s: float


def begin(job: ScoreJob, engine: str, key_extra: dict, progress: bool | None) -> Started | dict:
    """Check the inputs and load the run; re-use a finished OUT of the same job (returns its manifest), else
    resume its pass 1 or start afresh: clear OUT's scoring files, read, validate and scatter (pass 1).
    `engine` and `key_extra` (settings that shape OUT's files) enter the job key with the inputs and the run."""
    t0 = time.perf_counter()
    cfg, out = job.config, job.out
    for p in job.inputs:
        if not p.exists():
            raise InputError(f"{p}: no such file")
        if p.is_dir():
            raise InputError(f"{p}: is a directory, not an event file")
    bundle = load_bundle(job.run, cfg)
    t_load = time.perf_counter() - t0
    inputs = [FileStats.of(p, s) for p, s in zip(job.inputs, job.specs)]
    specs = [{**asdict(s), "columns": dict(s.columns), "event_map": dict(s.event_map)} for s in job.specs]
    key = json.dumps({"config_hash": bundle.config_hash, "inputs": [i.sha256 for i in inputs], "readers": specs,
                      "bucket_rows": cfg.bucket_rows, "engine": engine, "format": MANIFEST_FORMAT, **key_extra},
                     sort_keys=True)
    job_key = hashlib.sha256(key.encode()).hexdigest()[:16]
    done = read_json(out / "manifest.json")
    if (out / "_COMPLETE").exists() and done and done.get("job_key") == job_key:
        shutil.rmtree(out / "_work", ignore_errors=True)  # left by a kill between _COMPLETE and the clean-up
        return {**done, "reused": True}
    work = out / "_work"
    resumed = (read_json(work / "job.json") or {}).get("job_key") == job_key and (work / "scatter.json").exists()
    if not resumed:  # a new job, or one killed before its scatter finished: start afresh
        _clear(out)
        work.mkdir(parents=True)
        write_json(work / "job.json", {"job_key": job_key, "config_hash": bundle.config_hash})
        scatter_inputs(job, bundle, inputs, work, progress)
    return Started(bundle, job_key, work, read_json(work / "scatter.json"), resumed, t_load,
                   time.perf_counter() - t0 - t_load)


def new_totals() -> dict:
    """Pass 2's counts, added to bucket by bucket (`add_totals`) and read by `finish`."""
    return {"sessions_in": 0, "sessions_scored": 0, "fallback": 0, "rows": 0, "duplicates": {}, "parts": []}


def add_totals(totals: dict, result: dict) -> None:
    """Add one bucket's (or part's) counts to the totals."""
    for k in ("sessions_in", "sessions_scored", "fallback", "rows"):
        totals[k] += result.get(k, 0)
    for fi, n in result.get("duplicates", {}).items():
        totals["duplicates"][fi] = totals["duplicates"].get(fi, 0) + n
    if "part" in result:
        totals["parts"].append(result["part"])


class LocalEngine:
    """Scores on this machine, bucket by bucket (see the module docstring)."""

    def score(self, job: ScoreJob, progress: bool | None = None) -> dict:
        t0 = time.perf_counter()
        started = begin(job, "local", {"batch_size": job.config.batch_size}, progress)
        if isinstance(started, dict):
            return started
        totals = self._score_buckets(job, started, progress)
        timings = {"load_s": round(started.load_s, 3), "read_validate_s": round(started.read_s, 3),
                   "score_s": round(totals.pop("score_s"), 3), "total_s": round(time.perf_counter() - t0, 3)}
        return finish(job, started, totals, timings, "local", {"workers": totals.pop("workers")})

    # ------------------------------------------------------------------------------------ pass 2
    def _score_buckets(self, job: ScoreJob, started: Started, progress: bool | None) -> dict:
        """Score every bucket not yet done; returns the totals over all buckets (done before or now)."""
        cfg, out, work, bundle = job.config, job.out, started.work, started.bundle
        gap = gap_us(float(bundle.info["session_gap_minutes"]))
        bar = _progress("session", "score", None, progress, False)
        totals = new_totals()
        t0 = time.perf_counter()
        workers = cfg.workers or torch.get_num_threads()
        buckets = started.scatter["buckets"]
        with _one_thread_each(workers) as pool:
            for b in buckets:
                note = work / f"done-{b:05d}.json"
                result = read_json(note)
                if result is None:
                    result = self._score_bucket(b, bundle, started.scatter, work, out, cfg.batch_size, gap, bar, pool,
                                                workers + 1)
                    write_json(note, result)
                    for path in work.glob(f"bucket-{b:05d}-*.arrow"):
                        path.unlink()
                add_totals(totals, result)
                bar.set_postfix(bucket=f"{len(totals['parts'])}/{len(buckets)}")
        bar.close()
        totals["score_s"] = time.perf_counter() - t0
        totals["workers"] = workers
        return totals

    def _score_bucket(self, b: int, bundle: ScoringBundle, scatter: dict, work: Path, out: Path, batch_size: int,
                      gap: int, bar, pool: ThreadPoolExecutor, ahead: int) -> dict:
        """One bucket: duplicates -> work/dup-B.parquet, sessions -> states -> OUT/scores/part-B.parquet; counts."""
        events, duplicates = bucket_events(b, scatter, work)
        states = session_states(events, bundle.window, gap, bundle.user_spec.columns)
        del events
        name = f"{SCORES}/part-{b:05d}.parquet"
        (out / SCORES).mkdir(exist_ok=True)
        tmp = out / SCORES / f".part-{b:05d}.parquet.tmp"
        writer, rows, scored, fallback = None, 0, 0, 0
        batches = (states.slice(lo, batch_size) for lo in range(0, states.num_rows, batch_size))
        for table in _ordered_map(pool, lambda batch: score_batch(bundle, batch), batches, ahead):
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema, **PARQUET)
            writer.write_table(table)
            rows += table.num_rows
            first = table.column("rank").to_numpy() == 1
            scored += int(first.sum())
            fallback += int(table.column("fallback").to_numpy(zero_copy_only=False)[first].sum())
            bar.update(int(first.sum()))
        writer.close()
        os.replace(tmp, out / name)
        if scored != states.num_rows:
            raise RuntimeError(f"bucket {b}: {states.num_rows} sessions in but {scored} scored")
        return {"part": name, "sessions_in": states.num_rows, "sessions_scored": scored, "fallback": fallback,
                "rows": rows, "duplicates": duplicates}


# ------------------------------------------------------------------------------------ pass 1
def scatter_inputs(job: ScoreJob, bundle: ScoringBundle, inputs: list[FileStats], work: Path,
                   progress: bool | None) -> None:
    """Read and validate every input; quarantine bad rows; scatter kept rows to user-hash buckets."""
    cfg = job.config
    prepared = read_manifest(_data_dir(job.run))
    event_map: dict[str, str] = {}
    for s in job.specs:
        event_map.update(dict(s.event_map))
    event_types = EventTypes.build(tuple(event_map.items()), prepared["config"]["rewards"])
    id_types = {"item_id": prepared["id_types"]["item_id"]} if "item_id" in prepared.get("id_types", {}) else {}
    est = sum(estimate_rows(p, i.format) for p, i in zip(job.inputs, inputs))
    n_buckets = max(1, -(-est // cfg.bucket_rows))
    keep = (*KEEP_COLUMNS, *bundle.user_spec.columns)
    writers: dict[tuple[int, int], ipc.RecordBatchStreamWriter] = {}
    schemas: list[pa.Schema] = []
    reasons: dict[str, int] = {}
    excluded = dict.fromkeys(event_types.dropped, 0)
    quarantine = pq.ParquetWriter(work / "quarantine-read.parquet", QUARANTINE_SCHEMA)
    bar = _progress("B", "read", sum(i.bytes for i in inputs), progress, sum(i.bytes for i in inputs) < 64 << 20)
    try:
        for fi, (path, spec) in enumerate(zip(job.inputs, job.specs)):
            validate = Validator(str(path), fi, event_types, spec.time_unit, spec.event_type, id_types)
            stats, last = inputs[fi], 0
            for raw in read_file(path, spec, READ_ROWS):
                bad = raw.bad
                stats.rows_read += raw.table.num_rows + len(bad)
                kept = validate(raw, bad) if raw.table.num_rows else None
                if kept is not None and kept.num_rows:
                    stats.rows_kept += kept.num_rows
                    kept = kept.select([c for c in keep if c in kept.column_names])
                    if kept.schema not in schemas:
                        schemas.append(kept.schema)
                    k = schemas.index(kept.schema)
                    bucket = bucket_of(kept.column("user_id").combine_chunks(), n_buckets)  # (N,)
                    order = np.argsort(bucket, kind="stable")
                    counts = np.bincount(bucket, minlength=n_buckets)
                    ends = np.cumsum(counts)
                    grouped = kept.take(pa.array(order))
                    for b in np.flatnonzero(counts):
                        if (b, k) not in writers:
                            writers[(b, k)] = ipc.new_stream(str(work / f"bucket-{b:05d}-{k:03d}.arrow"),
                                                             kept.schema)
                        writers[(b, k)].write_table(grouped.slice(ends[b] - counts[b], counts[b]))
                if len(bad):
                    quarantine.write_table(_quarantine_table(str(path), bad))
                    stats.rows_quarantined += len(bad)
                    for r in bad.reasons:
                        reasons[r] = reasons.get(r, 0) + 1
                bar.update(raw.bytes_read - last)
                last = raw.bytes_read
            stats.rows_excluded = int(validate.excluded.sum())
            for name, count in zip(event_types.dropped, validate.excluded.tolist()):
                excluded[name] += count
    finally:
        for w in writers.values():
            w.close()
        quarantine.close()
        bar.close()
    write_json(work / "scatter.json", {"inputs": [asdict(i) for i in inputs], "reasons": reasons,
                                         "excluded": excluded, "n_buckets": n_buckets,
                                         "event_types": list(event_types.names),
                                         "buckets": sorted({int(b) for b, _ in writers})})

# ------------------------------------------------------------------------------------ pass 2, shared


def bucket_events(b: int, scatter: dict, work: Path) -> tuple[pa.Table, dict[str, int]]:
    """Bucket b's kept events without duplicates, in (user, time) order, and its duplicates per input (str index);
    the duplicates go to work/dup-B.parquet, as prepare quarantines them."""
    paths = sorted(work.glob(f"bucket-{b:05d}-*.arrow"))
    tables = []
    for path in paths:
        with pa.memory_map(str(path)) as src:
            tables.append(ipc.open_stream(src).read_all())
    schema = unify_schemas([t.schema for t in tables], [str(p) for p in paths])
    events = pa.concat_tables([conform_table(t, schema) for t in tables])
    del tables
    order, dup = find_duplicates(events)
    duplicates = _write_duplicates(events.take(pa.array(order[dup])), scatter, work / f"dup-{b:05d}.parquet")
    return events.take(pa.array(order[~dup])), duplicates


# ------------------------------------------------------------------------------------ finish
def finish(job: ScoreJob, started: Started, totals: dict, timings: dict, engine: str, extra: dict) -> dict:
    """Merge the quarantine, check every count, write manifest.json (with `extra`, the engine's own fields),
    then _COMPLETE; clear the work folder."""
    out, work, scatter, bundle = job.out, started.work, started.scatter, started.bundle
    inputs = scatter["inputs"]
    reasons = dict(scatter["reasons"])
    for fi, n in totals["duplicates"].items():
        inputs[int(fi)]["rows_kept"] -= n
        inputs[int(fi)]["rows_quarantined"] += n
        reasons["duplicate_event"] = reasons.get("duplicate_event", 0) + n
    for i in inputs:
        if i["rows_kept"] + i["rows_quarantined"] + i["rows_excluded"] != i["rows_read"]:
            raise RuntimeError(f"row accounting broke for {i['path']}: {i}")
    if totals["sessions_in"] != totals["sessions_scored"]:
        raise RuntimeError(f"{totals['sessions_in']} sessions in but {totals['sessions_scored']} scored")
    sources = [work / "quarantine-read.parquet"] + [work / f"dup-{b:05d}.parquet" for b in scatter["buckets"]]
    quarantined = _merge_quarantine([p for p in sources if p.exists()], out / "quarantine.parquet")
    if quarantined != sum(i["rows_quarantined"] for i in inputs):
        raise RuntimeError("the quarantine file does not hold every quarantined row")
    parts = totals["parts"]
    rows = sum(pq.ParquetFile(str(out / p)).metadata.num_rows for p in parts)
    if rows != totals["rows"]:
        raise RuntimeError(f"the parts hold {rows} rows, {totals['rows']} were written")
    sessions = totals["sessions_scored"]
    cfg = job.config
    manifest = {
        "format_version": MANIFEST_FORMAT, "engine": engine, "run": str(job.run),
        "model_version": bundle.model_version, "config_hash": bundle.config_hash, "job_key": started.key,
        "rows_read": sum(i["rows_read"] for i in inputs), "rows_kept": sum(i["rows_kept"] for i in inputs),
        "rows_quarantined": sum(i["rows_quarantined"] for i in inputs),
        "rows_excluded": sum(i["rows_excluded"] for i in inputs),
        "quarantine_reasons": dict(sorted(reasons.items())),
        "excluded_by_event": scatter["excluded"],
        "sessions": {"in": totals["sessions_in"], "scored": sessions, "fallback": totals["fallback"]},
        "rows": rows, "parts": parts, **extra, "top": cfg.top, "candidates": cfg.candidates,
        **bundle.info,
        "config": {k: v for k, v in asdict(cfg).items() if k != "device"}, "inputs": inputs,
        "timings": timings, "sessions_per_s": round(sessions / max(timings["total_s"], 1e-9), 1),
        "peak_rss_mib": _peak_rss_mib(),
        "resumed": started.resumed, "reused": False,
    }
    write_json(out / "manifest.json", manifest)
    (out / "_COMPLETE").write_text(f"{bundle.config_hash} {started.key}\n")
    shutil.rmtree(work, ignore_errors=True)
    return manifest


T = TypeVar("T")
R = TypeVar("R")


def single_threaded() -> None:
    """Make torch (and faiss, if loaded) run one thread in the calling thread. OpenMP's thread count is a
    per-thread setting: a new thread starts with the machine's, so each pool thread sets its own."""
    torch.set_num_threads(1)
    faiss = sys.modules.get("faiss")
    if faiss is not None:
        faiss.omp_set_num_threads(1)


@contextmanager
def _one_thread_each(workers: int) -> Iterator[ThreadPoolExecutor]:
    """A pool of `workers` threads, each running torch (and faiss) on one thread; this thread's own thread
    counts are restored after."""
    threads = torch.get_num_threads()
    faiss = sys.modules.get("faiss")
    try:
        with ThreadPoolExecutor(max_workers=workers, initializer=single_threaded) as pool:
            yield pool
    finally:
        torch.set_num_threads(threads)
        if faiss is not None:
            faiss.omp_set_num_threads(threads)


def _ordered_map(pool: ThreadPoolExecutor, fn: Callable[[T], R], items: Iterable[T], ahead: int) -> Iterator[R]:
    """fn over items on the pool, results in input order, at most `ahead` tasks in flight (bounded memory)."""
    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _peak_rss_mib() -> float | None:
    """Peak resident memory of this process's own address space (Linux VmHWM; None elsewhere). Unlike
    getrusage's maxrss it never counts a parent's memory inherited until exec."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def _data_dir(run: Path) -> str:
    from seqrec.runs.config import saved_config

    return saved_config(run).data


def _write_duplicates(dups: pa.Table, scatter: dict, path: Path) -> dict[str, int]:
    """Quarantine rows of a bucket's duplicate events (as prepare words them) into `path`; count per input."""
    files = dups.column("_file").to_numpy() if dups.num_rows else np.zeros(0, np.int16)
    names = scatter["event_types"]
    tables, counts = [], {}
    for fi in np.unique(files):
        sel = dups.filter(pa.array(files == fi))
        bad = BadRows()
        for u, i, e, t, r in zip(*(sel.column(c).to_pylist() for c in ("user_id", "item_id", "event", "timestamp",
                                                                          "_row"))):
            bad.add(int(r), "*", "duplicate_event", f"user={u} item={i} event={names[e]} time_us={t}")
        tables.append(_quarantine_table(scatter["inputs"][int(fi)]["path"], bad))
        counts[str(int(fi))] = sel.num_rows
    if tables:
        tmp = path.with_name(path.name + ".tmp")
        pq.write_table(pa.concat_tables(tables), tmp)
        os.replace(tmp, path)
    return counts


def _merge_quarantine(sources: list[Path], dest: Path) -> int:
    """Concatenate quarantine files (streamed by row group) into `dest`; returns its rows."""
    tmp = dest.with_name(dest.name + ".tmp")
    rows = 0
    with pq.ParquetWriter(tmp, QUARANTINE_SCHEMA) as writer:
        for src in sources:
            for batch in pq.ParquetFile(str(src)).iter_batches():
                writer.write_batch(batch)
                rows += batch.num_rows
    os.replace(tmp, dest)
    return rows


def _clear(out: Path) -> None:
    """Remove the scoring files of an earlier job from OUT (nothing else there)."""
    shutil.rmtree(out / "_work", ignore_errors=True)
    for name in ("_COMPLETE", "manifest.json", "quarantine.parquet"):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / SCORES, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
