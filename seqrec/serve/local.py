"""The local engine (`seqrec score --engine local`, the default): scores a job on this machine, bucket by bucket.

Steps 1 and 3 are the job steps every engine shares (seqrec/serve/engines.py: `begin`, `finish`); step 2 is its
own: per bucket, take out the duplicates and cut sessions (`bucket_events`, `session_states`), score them
`batch_size` sessions at a time into OUT/scores/part-BBBBB.parquet (written atomically), then note the bucket as
done (resume skips it). Batches are scored by `workers` threads at once, each running torch with one thread:
whole batches in parallel instead of every operation split across cores, which on a machine shared with other
jobs avoids OpenMP threads spin-waiting for each other (and makes the rows independent of the worker count).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import pyarrow.parquet as pq
import torch

from seqrec.core.faults import kill_point
from seqrec.core.io import atomic_write, atomic_write_json
from seqrec.core.progress import ProgressLines, TickingBar
from seqrec.datasets.scatter import bucket_paths
from seqrec.datasets.sessions import gap_us
from seqrec.serve.engines import (
    PARQUET,
    SCORES,
    ScoreJob,
    Started,
    add_totals,
    begin,
    bucket_events,
    bucket_states,
    finish,
    new_totals,
    one_thread_each,
    progress_bar,
    read_json,
)
from seqrec.serve.scoring import ScoringBundle, score_batch

T = TypeVar("T")
R = TypeVar("R")


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
        lines = ProgressLines.for_progress("seqrec score", progress)
        totals = new_totals()
        buckets = started.scatter["buckets"]
        bar = TickingBar(progress_bar("session", "score", None, progress, False), lambda: lines.tick(
            lambda: f"pass 2: {bar.count:,} sessions scored, bucket {len(totals['parts']) + 1}/{len(buckets)}"))
        t0 = time.perf_counter()
        workers = cfg.workers or torch.get_num_threads()
        with one_thread_each(workers) as pool:
            for b in buckets:
                note = work / f"done-{b:05d}.json"
                result = read_json(note)
                if result is None:
                    result = self._score_bucket(b, bundle, started.scatter, work, out, cfg.batch_size, gap, bar, pool,
                                                workers + 1)
                    atomic_write_json(note, result)
                    for path in bucket_paths(work, b):
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
        states = bucket_states(events, bundle, gap, scatter["event_types"])
        del events
        name = f"{SCORES}/part-{b:05d}.parquet"
        (out / SCORES).mkdir(exist_ok=True)

        def write(tmp: Path) -> tuple[int, int, int]:
            writer, rows, scored, fallback = None, 0, 0, 0
            batches = (states.slice(lo, batch_size) for lo in range(0, states.num_rows, batch_size))
            for table in _ordered_map(pool, lambda batch: score_batch(bundle, batch), batches, ahead):
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema, **PARQUET)
                writer.write_table(table)
                kill_point("score.part")  # a test hook (seqrec/core/faults.py)
                rows += table.num_rows
                first = table.column("rank").to_numpy() == 1
                scored += int(first.sum())
                fallback += int(table.column("fallback").to_numpy(zero_copy_only=False)[first].sum())
                bar.update(int(first.sum()))
            writer.close()
            return rows, scored, fallback

        rows, scored, fallback = atomic_write(out / name, write)
        if scored != states.num_rows:
            raise RuntimeError(f"bucket {b}: {states.num_rows} sessions in but {scored} scored")
        return {"part": name, "sessions_in": states.num_rows, "sessions_scored": scored, "fallback": fallback,
                "rows": rows, "duplicates": duplicates}


def _ordered_map(pool: ThreadPoolExecutor, fn: Callable[[T], R], items: Iterable[T], ahead: int) -> Iterator[R]:
    """fn over items on the pool, results in input order, at most `ahead` tasks in flight (bounded memory)."""
    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()
