"""The Ray Data scoring engine (`seqrec score --engine ray [--ray-address ADDRESS]`, extra `seqrec[ray]`).

Same job, same rows as the local engine (seqrec/serve/local.py), with the scoring spread over a Ray cluster:

1. pass 1 is the local engine's (`engines.begin`, a job step both share): the driver reads and validates
   every input with prepare's readers, quarantines bad rows and scatters kept rows into user-hash buckets;
2. per bucket, the driver quarantines duplicates (`engines.bucket_events`) and cuts sessions
   (`session_states`) exactly as the local engine does, then slices the states into the local engine's
   batches of `batch_size` sessions and writes each batch as **one row** of a Parquet file (`nest_rows`);
3. Ray Data reads those files (`read_parquet`) and runs `map_batches` over a fixed pool of `SessionScorer`
   actors: each loads the run once (`load_bundle`), runs torch (and faiss) on one thread, and scores each
   batch with `score_batch`, the function the local engine calls; `write_parquet` writes the rows under
   OUT/_work, then they move to OUT/scores/part-NNNNN.parquet;
4. `engines.finish` merges the quarantine, checks the counts (sessions cut on the driver = sessions scored)
   and writes manifest.json ("engine": "ray", plus a "ray" entry: address, CPUs, actors, CPUs per actor) and
   _COMPLETE.

Why whole batches travel as single rows: sessions must be whole (a user's events all in one place before
sessions are cut, which the buckets give), and the rows must be the local engine's bit for bit. The draws
are keyed per session, so batching never changes the nudges, but the model's float32 arithmetic does:
PyTorch's CPU matrix products pick kernels by shape, so a session's scores can differ in the last bit with
the number of sessions scored beside it (measured: batches of 1 to 3 sessions, and of 33, on this machine).
Ray Data splits and merges blocks and batches as it likes; a row that is a whole batch survives any split,
so every session is scored in exactly the local engine's batch, on any number of actors.

Resources: a local Ray (no address) gets this machine's cores. The actors together ask for at most the CPUs of
the smallest node but one, and at most half a CPU each (`actor_cpus`): actors that each asked for a whole CPU
could take every CPU of a small cluster, leaving none for the read and write tasks (each asks for a whole CPU
on one node), and the job would hang. Counted per node, not over the cluster: on two 1-CPU nodes, an actor of
half a CPU on each left no node a whole CPU, and the job hung (tests/test_multinode.py); so wherever Ray puts
the actors, every node keeps a whole CPU.

Resume: a killed job started again re-uses pass 1 and the batch files already written (a note per bucket)
and redoes the Ray stage whole. Paths: on a cluster, the run folder (and its prepared data) and OUT must be
at the same paths on every node (a shared filesystem), and seqrec installed there; workers start in the
driver's working directory when it exists there, so a run's relative data path still resolves. Bit-equal
rows also need the same CPU kind (the same kernels) on every node.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import sys
import time
import uuid
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import ray.data
import torch

from seqrec.core.faults import kill_point
from seqrec.core.io import atomic_write, atomic_write_json
from seqrec.datasets.scatter import bucket_paths
from seqrec.datasets.sessions import gap_us
from seqrec.runs.score_config import ScoreConfig
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
    read_json,
    single_threaded,
)
from seqrec.serve.offer_settings import OfferSettings
from seqrec.serve.scoring import load_bundle, score_batch


@dataclass(frozen=True)
class RayConfig:
    """Where and on how much the Ray engine runs (the job's settings are its ScoreConfig)."""

    address: str | None = None     # a running cluster ("auto", "HOST:6379"); None: start a local Ray
    num_cpus: int | None = None    # CPUs of a local Ray; None: this machine's cores (ignored with an address)
    cpus_per_actor: float = 0.5    # the most one actor asks for; below 1 so that read and write tasks find a CPU

    def __post_init__(self) -> None:
        if self.num_cpus is not None and (isinstance(self.num_cpus, bool) or not isinstance(self.num_cpus, int)
                                          or self.num_cpus < 1):
            raise ValueError(f"num_cpus must be an int >= 1, got {self.num_cpus!r}")
        if not 0 < self.cpus_per_actor <= 1:
            raise ValueError(f"cpus_per_actor must be in (0, 1], got {self.cpus_per_actor!r}")


def actor_cpus(node_cpus: float, actors: int, most: float = 0.5) -> float:
    """CPUs each of `actors` actors asks for: at most `most`, and all of them together at most the CPUs of the
    smallest node but one, so that, even with every actor on one node, each node keeps a whole CPU for Ray
    Data's read and write tasks (0 with a 1-CPU node: then the actors ask for nothing, and Ray does not hold
    tasks back for them)."""
    return round(min(most, max(node_cpus - 1.0, 0.0) / actors), 4)


# ---------------------------------------------------------------------------------------------- batch rows


def nest_rows(table: pa.Table, size: int) -> pa.Table:
    """(N rows) -> one row per `size` consecutive rows (the last may hold fewer): column `rows`, a list of
    structs of every column. Whatever Ray Data splits or merges, such a row stays whole."""
    n = table.num_rows
    offsets = pa.array(np.r_[np.arange(0, n, size), n].astype(np.int64))  # (ceil(N / size) + 1,)
    struct = pa.StructArray.from_arrays([table.column(c).combine_chunks() for c in table.column_names],
                                        table.column_names)
    return pa.table({"rows": pa.LargeListArray.from_arrays(offsets, struct)})


def unnest_rows(nested: pa.Table) -> pa.Table:
    """The rows of a nest_rows table (or any slice of it), in order."""
    return pa.Table.from_struct_array(nested.column("rows").combine_chunks().flatten())


# ---------------------------------------------------------------------------------------------- the actor


class SessionScorer:
    """A Ray Data actor: loads the run once, then scores whole batches of session states."""

    def __init__(self, run: str, config: ScoreConfig, config_hash: str, cwd: str, ready_dir: str,
                 offers: OfferSettings | None = None) -> None:
        started = time.time()
        if os.path.isdir(cwd):
            os.chdir(cwd)  # a run's relative data path means what it means on the driver
        torch.set_num_threads(1)
        self.bundle = load_bundle(run, config, offers)
        single_threaded()  # faiss too, now that load_bundle may have imported it
        if self.bundle.config_hash != config_hash:
            raise RuntimeError(f"{socket.gethostname()}: {run} differs from the driver's (config hash "
                               f"{self.bundle.config_hash}, driver {config_hash}): every node needs the same run")
        note = {"host": socket.gethostname(), "node": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
                "started": started, "ready": time.time()}
        atomic_write_json(Path(ready_dir) / f"{uuid.uuid4().hex}.json", note)

    def __call__(self, batches: pa.Table) -> pa.Table:
        """(R batch rows) -> one row per (session, rank) of their sessions; each batch one score_batch call."""
        parts = []
        for i in range(batches.num_rows):
            states = unnest_rows(batches.slice(i, 1))
            rows = score_batch(self.bundle, states)
            scored = int(pc.sum(pc.equal(rows.column("rank"), 1)).as_py() or 0)
            if scored != states.num_rows:  # the local engine's check, per batch
                raise RuntimeError(f"{states.num_rows} sessions in but {scored} scored")
            parts.append(rows)
        return pa.concat_tables(parts)


# ---------------------------------------------------------------------------------------------- the engine


class RayEngine:
    """Scores with Ray Data: pass 1 on the driver, sessions and scores on a pool of actors (module docstring)."""

    def __init__(self, config: RayConfig | None = None) -> None:
        self.config = config or RayConfig()

    def score(self, job: ScoreJob, progress: bool | None = None) -> dict:
        t0 = time.perf_counter()
        started = begin(job, "ray", {"batch_size": job.config.batch_size}, progress)
        if isinstance(started, dict):
            return started
        t1 = time.perf_counter()
        totals, batches = self._batch(job, started)
        t_batch = time.perf_counter() - t1
        info: dict = {"address": self.config.address or "local"}
        shutil.rmtree(job.out / SCORES, ignore_errors=True)  # parts of a killed earlier Ray stage: redone whole
        if batches is not None:
            info |= self._run(job, started, batches, progress)
        totals = self._collect(job.out, totals)
        ray_times = {k: info.pop(k) for k in ("ray_init_s", "actors_ready_s", "pipeline_s", "ray_shutdown_s")
                     if k in info}
        timings = {"load_s": round(started.load_s, 3), "read_validate_s": round(started.read_s, 3),
                   "batch_s": round(t_batch, 3), **ray_times, "score_s": round(time.perf_counter() - t1, 3),
                   "total_s": round(time.perf_counter() - t0, 3)}
        return finish(job, started, totals, timings, "ray", {"workers": info.get("actors", 0), "ray": info})

    def _batch(self, job: ScoreJob, started: Started) -> tuple[dict, Path | None]:
        """Per bucket (skipping those noted done): duplicates quarantined, sessions cut as the local engine cuts
        them, work/batches/B.parquet with one row per batch of batch_size sessions; returns the counts and the
        folder of batch files (None when there is no session)."""
        work, totals, folder = started.work, new_totals(), started.work / "batches"
        bundle, size = started.bundle, job.config.batch_size
        gap = gap_us(float(bundle.info["session_gap_minutes"]))
        folder.mkdir(exist_ok=True)
        for b in started.scatter["buckets"]:
            note, path = work / f"batched-{b:05d}.json", folder / f"{b:05d}.parquet"
            result = read_json(note)
            if result is None:
                events, duplicates = bucket_events(b, started.scatter, work)
                states = bucket_states(events, bundle, gap, started.scatter["event_types"])
                del events
                # a row group per batch: units Ray Data can hand to different actors
                atomic_write(path, partial(pq.write_table, nest_rows(states, size), row_group_size=1,
                                           compression="zstd"))
                result = {"sessions_in": states.num_rows, "duplicates": duplicates}
                atomic_write_json(note, result)
                kill_point("score.batched")  # a test hook (seqrec/core/faults.py)
                for p in bucket_paths(work, b):
                    p.unlink()
            add_totals(totals, {"sessions_in": result["sessions_in"], "duplicates": result["duplicates"]})
        return totals, folder if totals["sessions_in"] else None

    def _run(self, job: ScoreJob, started: Started, folder: Path, progress: bool | None) -> dict:
        """The Ray stage: read the batch files, score on the actor pool, write Parquet; OUT/scores/part-N.
        Ray Data reads the folder, not a list of its files: given several paths, Ray 2.60 resolves them on
        threads, which with fsspec installed but not aiohttp races on a failing import (ImportError)."""
        cfg, work = job.config, started.work
        ctx, log = ray.data.DataContext.get_current(), logging.getLogger("ray.data")
        bars, level = ctx.enable_progress_bars, log.level
        t = time.perf_counter()
        own = not ray.is_initialized()
        if own:
            kw = ({"address": self.config.address} if self.config.address else
                  {"address": "local", "num_cpus": self.config.num_cpus or os.cpu_count() or 1})
            ray.init(**kw, include_dashboard=False, logging_level=logging.WARNING)
        t_init = time.perf_counter() - t
        try:
            cpus = float(ray.cluster_resources().get("CPU", 1.0))
            actors = cfg.workers or max(1, int(cpus))
            node_cpus = min((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n["Alive"]), default=cpus)
            per_actor = actor_cpus(node_cpus, actors, self.config.cpus_per_actor)
            ctx.enable_progress_bars = progress if progress is not None else sys.stderr.isatty()
            if not ctx.enable_progress_bars:
                log.setLevel(logging.WARNING)  # Ray Data's execution plan and per-run lines
            raw, ready = work / "ray-scores", work / "actors"
            for d in (raw, ready):
                shutil.rmtree(d, ignore_errors=True)
                d.mkdir(parents=True)
            kwargs = {"run": str(Path(job.run).resolve()), "config": _absolute(cfg),
                      "config_hash": started.bundle.config_hash, "cwd": os.getcwd(), "ready_dir": str(ready.resolve()),
                      "offers": job.offers}
            batches = sum(pq.ParquetFile(f).metadata.num_rows for f in folder.glob("*.parquet"))
            t_pipe, t_wall = time.perf_counter(), time.time()
            # read_parquet gives small files one block (one actor would do everything): blocks of one batch row,
            # streamed, so the pool shares the work batch by batch
            (ray.data.read_parquet(str(folder.resolve()))
             .repartition(target_num_rows_per_block=1)
             .map_batches(SessionScorer, batch_format="pyarrow", batch_size=1,
                          compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=per_actor,
                          fn_constructor_kwargs=kwargs)
             .write_parquet(str(raw.resolve()), min_rows_per_file=cfg.bucket_rows, **PARQUET))
            pipeline_s = time.perf_counter() - t_pipe
            notes = [json.loads(p.read_text()) for p in ready.glob("*.json")]
            (job.out / SCORES).mkdir(exist_ok=True)
            for i, path in enumerate(sorted(raw.glob("*.parquet"))):
                os.replace(path, job.out / SCORES / f"part-{i:05d}.parquet")
            info = {"address": self.config.address or "local", "cpus": cpus, "actors": actors,
                    "cpus_per_actor": per_actor, "batches": batches, "nodes": len({n["host"] for n in notes}),
                    "ray_nodes": len({n["node"] for n in notes})}  # nodes: machines; ray_nodes: Ray nodes
        finally:
            ctx.enable_progress_bars = bars
            log.setLevel(level)
            t = time.perf_counter()
            if own:
                ray.shutdown()
            t_down = time.perf_counter() - t
        # start-up: Ray itself, then the pool (from the pipeline's start to the last actor's run loaded; the
        # actors' clocks are the driver's on one machine, NTP-close on a cluster)
        actors_ready = max((n["ready"] for n in notes), default=t_wall) - t_wall
        return {**info, "ray_init_s": round(t_init, 3), "actors_ready_s": round(max(actors_ready, 0.0), 3),
                "pipeline_s": round(pipeline_s, 3), "ray_shutdown_s": round(t_down, 3)}

    @staticmethod
    def _collect(out: Path, totals: dict) -> dict:
        """Count the written parts: rows, sessions scored (rank-1 rows) and fallback sessions, part by part."""
        for path in sorted((out / SCORES).glob("part-*.parquet")) if (out / SCORES).is_dir() else []:
            t = pq.read_table(path, columns=["rank", "fallback"])
            first = t.column("rank").to_numpy() == 1
            n = int(first.sum())
            fallback = int(t.column("fallback").to_numpy(zero_copy_only=False)[first].sum())
            add_totals(totals, {"part": f"{SCORES}/{path.name}", "rows": t.num_rows,
                                "sessions_scored": n, "fallback": fallback})
        return totals


def _absolute(cfg: ScoreConfig) -> ScoreConfig:
    """The config with its catalogue path made absolute (workers may start elsewhere)."""
    return replace(cfg, catalogue=str(Path(cfg.catalogue).resolve())) if cfg.catalogue else cfg

