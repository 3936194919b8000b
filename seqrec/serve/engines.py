"""What every batch-scoring engine shares: the job, the Engine seam, and the steps around the scoring itself.

An engine runs the one pure function `seqrec.serve.scoring.score_batch(bundle, sessions)` over every session of a
job's inputs (DESIGN.md, the Engine seam). `LocalEngine` (seqrec/serve/local.py, `--engine local`, the default) and
`RayEngine` (seqrec/serve/ray_engine.py) both go through these steps, in memory bounded by one bucket:

1. `begin`: read every input with the readers and the validator of `seqrec prepare` (the same pass 1,
   seqrec/datasets/scatter.py): bad rows go to the quarantine with their reason, rows of event types mapped to
   `drop` are excluded and counted; kept rows (only the columns scoring needs) are scattered into user-hash
   buckets on disk (Arrow IPC), so every session lies whole in one bucket whatever the order of the input;
2. the engine's own: per bucket, `bucket_events` quarantines duplicate events as prepare does
   (seqrec/datasets/duplicates.py), then sessions are cut and their states built (seqrec/serve/sessions_state.py)
   and scored into OUT/scores/part-BBBBB.parquet;
3. `finish`: merge the quarantine, check the counts (per input rows read = kept + quarantined + excluded;
   sessions in = sessions scored), write manifest.json, then _COMPLETE.

Resume: OUT/_work holds the job key, the scatter's counts and a note per finished bucket. Started again after a
kill at any point, the same command skips finished buckets and redoes the others whole (same content), so no
session is lost or written twice. A finished OUT of the same job is re-used; another job (other inputs, run or
settings) clears OUT's scoring files and starts afresh. Every note and file is written atomically (seqrec/core/io.py).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from seqrec.core.io import atomic_write, atomic_write_json, atomic_write_text
from seqrec.core.progress import ProgressLines, TickingBar
from seqrec.datasets.duplicates import duplicate_rows, find_duplicates
from seqrec.datasets.inputs import FileStats, bucket_count, check_inputs, merged_event_map
from seqrec.datasets.manifest import read_manifest
from seqrec.datasets.quarantine import Quarantine, quarantine_table
from seqrec.datasets.readers import SourceSpec
from seqrec.datasets.scatter import Scatter, bucket_paths, read_bucket
from seqrec.datasets.schema import QUARANTINE_SCHEMA
from seqrec.datasets.validate import EventTypes
from seqrec.runs.score_config import ScoreConfig
from seqrec.serve.offer_settings import OfferSettings
from seqrec.serve.offers import END, offer_states
from seqrec.serve.scoring import ScoringBundle, load_bundle, state_event_codes
from seqrec.serve.sessions_state import session_states

MANIFEST_FORMAT = 3  # 2: rows carry product_propensity and joint_propensity; 3: and a run's offers (offer_*
# columns, seqrec/serve/offers.py); a job of an older format is not reused or resumed
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
    offers: OfferSettings = field(default_factory=OfferSettings)   # the run's offer learner: used when it has one


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


def read_json(path: Path) -> dict | None:
    """The JSON object in `path`, or None when it is missing or unreadable (a note not yet written)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def progress_bar(unit: str, desc: str, total: int | None, progress: bool | None, small: bool):
    """A tqdm bar counting `unit`s (bytes are scaled); shown when `progress`, or by default unless the job is
    `small` or stderr is no terminal."""
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
    check_inputs(list(job.inputs))
    bundle = load_bundle(job.run, cfg, job.offers)
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
        atomic_write_json(work / "job.json", {"job_key": job_key, "config_hash": bundle.config_hash})
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


# ------------------------------------------------------------------------------------ pass 1
def scatter_inputs(job: ScoreJob, bundle: ScoringBundle, inputs: list[FileStats], work: Path,
                   progress: bool | None) -> None:
    """Read and validate every input; quarantine bad rows; scatter kept rows to user-hash buckets; note the
    counts in work/scatter.json."""
    prepared = read_manifest(_data_dir(job.run))
    event_types = EventTypes.build(merged_event_map(list(job.specs)), prepared["config"]["rewards"])
    id_types = {"item_id": prepared["id_types"]["item_id"]} if "item_id" in prepared.get("id_types", {}) else {}
    paths = list(job.inputs)
    scatter = Scatter(work, bucket_count(paths, inputs, job.config.bucket_rows), event_types, id_types,
                      keep=(*KEEP_COLUMNS, *bundle.input_columns), batch_rows=READ_ROWS)
    quarantine = Quarantine(work / "quarantine-read.parquet", inputs)
    total = sum(i.bytes for i in inputs)
    lines = ProgressLines.for_progress("seqrec score", progress)
    try:
        scatter.run(paths, list(job.specs), inputs, quarantine.add,
                    TickingBar(progress_bar("B", "read", total, progress, total < 64 << 20), lambda: lines.tick(
                        lambda: f"pass 1: {sum(i.rows_read for i in inputs):,} rows read")))
    finally:
        quarantine.close()
    atomic_write_json(work / "scatter.json", {"inputs": [asdict(i) for i in inputs], "reasons": quarantine.reasons,
                                              "excluded": scatter.excluded, "n_buckets": scatter.n_buckets,
                                              "event_types": list(event_types.names),
                                              "buckets": sorted(scatter.buckets)})


# ------------------------------------------------------------------------------------ pass 2, shared
def bucket_events(b: int, scatter: dict, work: Path) -> tuple[pa.Table, dict[str, int]]:
    """Bucket b's kept events without duplicates, in (user, time) order, and its duplicates per input (str index);
    the duplicates go to work/dup-B.parquet, as prepare quarantines them."""
    events = read_bucket(bucket_paths(work, b))
    order, dup = find_duplicates(events)
    duplicates = _write_duplicates(events.take(pa.array(order[dup])), scatter, work / f"dup-{b:05d}.parquet")
    return events.take(pa.array(order[~dup])), duplicates


def bucket_states(events: pa.Table, bundle: ScoringBundle, gap: int, event_names: list[str]) -> pa.Table:
    """A bucket's events -> its session states (seqrec/serve/sessions_state.py), with each session's offer
    history when the bundle has an offer learner (seqrec/serve/offers.py); `event_names`: scatter's event types."""
    offers = bundle.offers is not None
    states = session_states(events, bundle.window, gap, bundle.state_columns, ends=offers,
                            event_codes=state_event_codes(bundle, events, event_names))
    if offers:
        states = offer_states(states, events, bundle.offers, event_names).drop_columns([END])
    return states


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
    atomic_write_json(out / "manifest.json", manifest)
    atomic_write_text(out / "_COMPLETE", f"{bundle.config_hash} {started.key}\n")
    shutil.rmtree(work, ignore_errors=True)
    return manifest


def single_threaded() -> None:
    """Make torch (and faiss, if loaded) run one thread in the calling thread. OpenMP's thread count is a
    per-thread setting: a new thread starts with the machine's, so each pool thread sets its own."""
    torch.set_num_threads(1)
    faiss = sys.modules.get("faiss")
    if faiss is not None:
        faiss.omp_set_num_threads(1)


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
    rows = duplicate_rows(dups, scatter["event_types"])
    if rows:
        table = pa.concat_tables([quarantine_table(scatter["inputs"][fi]["path"], bad) for fi, bad in rows])
        atomic_write(path, lambda tmp: pq.write_table(table, tmp))
    return {str(fi): len(bad) for fi, bad in rows}


def _merge_quarantine(sources: list[Path], dest: Path) -> int:
    """Concatenate quarantine files (streamed by row group) into `dest`; returns its rows."""

    def merge(tmp: Path) -> int:
        rows = 0
        with pq.ParquetWriter(tmp, QUARANTINE_SCHEMA) as writer:
            for src in sources:
                for batch in pq.ParquetFile(str(src)).iter_batches():
                    writer.write_batch(batch)
                    rows += batch.num_rows
        return rows

    return atomic_write(dest, merge)


def _clear(out: Path) -> None:
    """Remove the scoring files of an earlier job from OUT (nothing else there)."""
    shutil.rmtree(out / "_work", ignore_errors=True)
    for name in ("_COMPLETE", "manifest.json", "quarantine.parquet"):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / SCORES, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)


@contextmanager
def one_thread_each(workers: int) -> Iterator[ThreadPoolExecutor]:
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
