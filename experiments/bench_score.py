"""Benchmark `seqrec score`: sessions per second and peak memory with the exact and the approximate (faiss)
index, beside the rate of the bare catalogue product (the bound for exact retrieval), all in one run.

Setup, cached under --work (delete it to rebuild):
- training log: the synthetic generator with a catalogue of --items items (--train-users users), plus one
  sweep session of views per 10 items so that every item is in the vocabulary; prepared with `seqrec prepare`;
- run: SASRec-SQN, width 64, with the two-tower candidate generator, trained --train-steps steps each (the
  shapes set the cost of scoring; the training sets how well faiss's IVF clusters fit the item vectors, hence
  the recall at a given nprobe);
- scoring log: about --sessions sessions from the same generator (same world and catalogue, more users).

Measured, `--repeats` times (the machine is shared: read the ratios, taken in the same run), in two modes:
- wall: `seqrec score` in a fresh process per index (`--indexes exact,faiss`; faiss IVF with --nprobe) with
  --threads threads, sessions/s over the process's wall time (start-up, reading, validation, sessions,
  scoring, writing), beside the bare product (B, D) x (D, I), B = --batch, D = 64, I = the catalogue, timed
  the same way in this process with the same threads (fastest pass): the bound for exact retrieval;
- cpu: the same with one thread, timed by CPU time (the process's user + system time from wait4; the product's
  thread time), which other processes on the machine disturb far less than the clock. With two threads on a
  busy machine, OpenMP threads spin-wait for each other and both the clock and the CPU time suffer;
- peak RSS of each scoring process (its own VmHWM, in its manifest: wait4's maxrss would count this bench
  process's memory too, which the child holds between fork and exec); the engine's sessions/s (after start-up);
- retrieval alone, one thread, CPU time: recall@K against exact (the share of the exact top-K two-tower
  candidates the index also returns) and queries per CPU-second, for the exact index, IVF at each nprobe of
  --sweep and HNSW at each ef_search of --sweep-hnsw, over --recall-sessions session states.

    python experiments/bench_score.py                                  # 1,000,000 sessions, 26,702 items
    python experiments/bench_score.py --sessions 100000                # a reduced run
    python experiments/bench_score.py --sessions 2000 --items 500 --train-users 300 --train-steps 2 --work /tmp/b
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
SESSIONS_PER_USER = 3.0  # the generator's default mean_sessions_per_user


def sweep_events(items: int, start_us: int) -> pa.Table:
    """One view of every item 0..items-1, in sessions of 10 views by users no generated log has."""
    item = np.arange(items, dtype=np.int64)
    user = 10**12 + item // 10
    ts = start_us + item * 1_000_000
    return pa.table({"user_id": user, "session_id": user, "item_id": item, "event_type": ["view"] * items,
                     "timestamp": pa.array(ts, pa.timestamp("us", tz="UTC"))})


def build(args: argparse.Namespace) -> tuple[Path, Path]:
    """(run folder, scoring log), built once under --work."""
    from seqrec.datasets.adapters import source_spec
    from seqrec.datasets.prepare import PrepareConfig, prepare
    from seqrec.datasets.synthetic import SyntheticConfig, generate_events, write_events

    from seqrec.runs.config import run_config
    from seqrec.runs.train import train

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    train_log = work / f"train-{args.items}-{args.train_users}.parquet"
    if not train_log.exists():
        log = generate_events(SyntheticConfig(users=args.train_users, items=args.items, seed=args.seed))
        sweep = sweep_events(args.items, log.column("timestamp").combine_chunks().cast(pa.int64())[0].as_py())
        pq.write_table(pa.concat_tables([log, sweep], promote_options="default"), train_log)
    data = work / f"data-{args.items}-{args.train_users}"
    prepare([train_log], lambda p: source_spec("events", p), PrepareConfig(seed=args.seed), data)
    run = work / f"run-{args.items}-{args.train_users}-{args.train_steps}"
    if not (run / "checkpoints" / "last.pt").exists():
        raw = {"encoder": {"kind": "sasrec", "dim": 64}, "head": {"variant": "sqn"},
               "train": {"batch_size": 256, "max_steps": args.train_steps, "eval_every": args.train_steps},
               "retrieval": {"enabled": True, "max_steps": args.train_steps, "eval_every": args.train_steps,
                             "random_negatives": 256},
               "index": {"kind": "exact", "faiss_type": "ivf"},
               "rerank": {"candidates": args.candidates}}
        t = time.perf_counter()
        train(run_config(raw, [], str(data)), run, progress=False)
        print(f"trained {run} in {time.perf_counter() - t:.0f} s", flush=True)
    users = max(1, round(args.sessions / SESSIONS_PER_USER))
    score_log = work / f"score-{args.items}-{users}.parquet"
    if not score_log.exists():
        t = time.perf_counter()
        n = write_events(SyntheticConfig(users=users, items=args.items, seed=args.seed), score_log)
        print(f"generated {n:,} events ({users:,} users) -> {score_log} in {time.perf_counter() - t:.0f} s",
              flush=True)
    return run, score_log


def run_score(run: Path, log: Path, out: Path, index: str, threads: int, args: argparse.Namespace) -> dict:
    """One `seqrec score` in a fresh process with `threads` threads: wall and CPU seconds, peak RSS, manifest."""
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "seqrec", "score", "--run", str(run), "--input", str(log), "--out", str(out),
           "--index", index, "--top", str(args.top), "--candidates", str(args.candidates), "--no-progress",
           "--batch-size", str(args.batch), "--nprobe", str(args.nprobe)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"seqrec score failed: {' '.join(cmd)}")
    manifest = json.loads((out / "manifest.json").read_text())
    # the process's own VmHWM: wait4's maxrss would also count this (large) process's memory, inherited by the
    # child between fork and exec
    peak = manifest.get("peak_rss_mib") or usage.ru_maxrss / 1024
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_mib": peak, "manifest": manifest}


def product_rate(items: int, dim: int, batch: int, clock=time.perf_counter, seconds: float = 3.0) -> float:
    """Sessions/s of the bare (batch, dim) x (dim, items) catalogue product (the row-padded one scoring uses),
    fastest pass over about `seconds` by `clock` (wall time, or time.thread_time: CPU time of one thread)."""
    import torch

    from seqrec.models.catalogue import padded_scores

    g = torch.Generator().manual_seed(0)
    table, state = torch.randn(items, dim, generator=g), torch.randn(batch, dim, generator=g)
    with torch.no_grad():
        padded_scores(state, table)
        best, t_end = float("inf"), time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            t = clock()
            padded_scores(state, table)
            best = min(best, clock() - t)
    return batch / max(best, 1e-9)


def recall_sweep(run: Path, log: Path, args: argparse.Namespace) -> list[dict]:
    """Recall@K against exact and search rate (queries per CPU-second, one thread) of faiss IVF at each
    nprobe of --sweep and of HNSW at each ef_search of --sweep-hnsw, over --recall-sessions session states
    of the scoring log; the exact index's own rate first. The user vectors come from the run's two-tower."""
    import torch
    from seqrec.datasets.sessions import gap_us

    from seqrec.retrieval.config import IndexConfig
    from seqrec.retrieval.index import ExactIndex, FaissIndex, import_faiss
    from seqrec.runs.score_config import ScoreConfig
    from seqrec.serve.scoring import load_bundle, window_matrix
    from seqrec.serve.sessions_state import session_states

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    import_faiss().omp_set_num_threads(1)
    bundle = load_bundle(run, ScoreConfig(index="exact", top=args.top, candidates=args.candidates))
    events = pq.ParquetFile(str(log)).read_row_groups([0], columns=["user_id", "session_id", "item_id",
                                                                   "timestamp"])
    states = session_states(events, bundle.window, gap_us(bundle.info["session_gap_minutes"]))
    items = torch.from_numpy(window_matrix(bundle, states.column("items")[:args.recall_sessions]))
    k = args.candidates
    with torch.no_grad():
        user = bundle.pipeline.tower.user(items)  # (B, D)
        table = bundle.pipeline.tower.item_table()  # (I, D)

    def timed(index) -> tuple[np.ndarray, float]:
        index.search(user[:64], k)  # warm-up
        t = time.thread_time()
        ids = index.search(user, k)[1].numpy()
        return ids, len(user) / max(time.thread_time() - t, 1e-9)

    exact, exact_rate = timed(ExactIndex(table))
    rows = [{"index": "exact", "recall": 1.0, "queries_per_cpu_s": exact_rate}]
    configs = [("ivf", IndexConfig(kind="faiss", faiss_type="ivf", nprobe=int(n))) for n in args.sweep.split(",")]
    configs += [("hnsw", IndexConfig(kind="faiss", faiss_type="hnsw", ef_search=int(e)))
                for e in args.sweep_hnsw.split(",") if e]
    for name, cfg in configs:
        ids, rate = timed(FaissIndex(table, cfg))
        hits = sum(len(np.intersect1d(a, b)) for a, b in zip(exact, ids))
        rows.append({"index": f"faiss {name} " + (f"nprobe={cfg.nprobe}" if name == "ivf" else f"ef={cfg.ef_search}"),
                     "recall": hits / exact.size, "queries_per_cpu_s": rate})
    torch.set_num_threads(threads)
    import_faiss().omp_set_num_threads(threads)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=1_000_000, help="sessions in the scoring log (about)")
    ap.add_argument("--items", type=int, default=26_702, help="catalogue size (RC15's)")
    ap.add_argument("--candidates", type=int, default=200)
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--batch", type=int, default=4096, help="sessions per scored batch and product batch")
    ap.add_argument("--indexes", default="exact,faiss")
    ap.add_argument("--nprobe", type=int, default=20, help="faiss IVF clusters searched per query when scoring")
    ap.add_argument("--sweep", default="8,16,20,24,32,64", help="IVF nprobe values of the recall sweep")
    ap.add_argument("--sweep-hnsw", default="200,400", help="HNSW ef_search values of the recall sweep")
    ap.add_argument("--train-users", type=int, default=20_000)
    ap.add_argument("--train-steps", type=int, default=300)
    ap.add_argument("--recall-sessions", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2, help="threads of the wall-clock runs (CPU-time runs use 1)")
    ap.add_argument("--modes", default="wall,cpu", help="wall: runs with --threads timed by the clock; cpu: runs "
                                                        "with one thread timed by CPU time (robust to other load)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_score")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    import torch

    from seqrec.models.device import retain_heap

    retain_heap()  # as the seqrec CLI does: the product's output buffer is not page-faulted in afresh each time
    run, log = build(args)
    indexes, modes = args.indexes.split(","), args.modes.split(",")
    threads = {"wall": args.threads, "cpu": 1}
    results: dict[tuple[str, str], list[dict]] = {(i, m): [] for i in indexes for m in modes}
    bounds: dict[str, list[float]] = {m: [] for m in modes}
    for r in range(args.repeats):
        for mode in modes:
            torch.set_num_threads(threads[mode])
            clock = time.thread_time if mode == "cpu" else time.perf_counter
            bounds[mode].append(product_rate(args.items + 2, 64, args.batch, clock=clock))
            for index in indexes:
                res = run_score(run, log, args.work / f"scored-{index}", index, threads[mode], args)
                results[(index, mode)].append(res)
                m = res["manifest"]
                print(f"[{r + 1}/{args.repeats}] {index}, {threads[mode]} thread(s): {m['sessions']['scored']:,} "
                      f"sessions in {res['wall_s']:.1f} s, {res['cpu_s']:.1f} CPU s (engine {m['sessions_per_s']:,.0f}"
                      f"/s, {m['timings']}), peak {res['peak_mib']:,.0f} MiB; bare product {bounds[mode][-1]:,.0f} "
                      f"sessions/{'CPU-' if mode == 'cpu' else ''}s", flush=True)
    torch.set_num_threads(args.threads)
    bound = {m: statistics.median(v) for m, v in bounds.items()}
    sweep = recall_sweep(run, log, args) if "faiss" in indexes else []
    run_recall = next((x["recall"] for x in sweep if x["index"] == f"faiss ivf nprobe={args.nprobe}"), None)
    rows = []
    for index in indexes:
        row = {"index": index if index == "exact" else f"faiss ivf nprobe={args.nprobe}",
               "recall": 1.0 if index == "exact" else run_recall}
        for mode in modes:
            rs = results[(index, mode)]
            sessions = rs[0]["manifest"]["sessions"]["scored"]
            seconds = "cpu_s" if mode == "cpu" else "wall_s"
            rate = statistics.median(sessions / x[seconds] for x in rs)
            row.update({"sessions": sessions, "events": rs[0]["manifest"]["rows_read"], f"{mode}_rate": rate,
                        f"{mode}_fraction": rate / bound[mode],
                        f"{mode}_engine_rate": statistics.median(x["manifest"]["sessions_per_s"] for x in rs),
                        f"{mode}_peak_mib": max(x["peak_mib"] for x in rs)})
        rows.append(row)
    print(f"\ncatalogue {args.items + 2:,} (with padding and OOV), {args.candidates} candidates, top {args.top}, batch "
          f"{args.batch}; bare product: " + ", ".join(
              f"{bound[m]:,.0f} sessions/s ({args.threads} thread(s), wall)" if m == "wall" else
              f"{bound[m]:,.0f} sessions per CPU-second (1 thread)" for m in modes)
          + f"; medians of {args.repeats} run(s)\n")
    head = {"wall": f"sessions/s ({args.threads} thread(s)) | / bare product", "cpu": "sessions per CPU-s (1 thread) | "
            "/ bare product per CPU-s"}
    print("| index | sessions | events | " + " | ".join(head[m] for m in modes) + f" | recall@{args.candidates} | "
          "peak MiB |")
    print("|---" * (5 + 2 * len(modes)) + "|")
    for x in rows:
        recall = "-" if x["recall"] is None else f"{x['recall']:.3f}"
        rates = " | ".join(f"{x[f'{m}_rate']:,.0f} | {x[f'{m}_fraction']:.2f}" for m in modes)
        peak = max(x[f"{m}_peak_mib"] for m in modes)
        print(f"| {x['index']} | {x['sessions']:,} | {x['events']:,} | {rates} | {recall} | {peak:,.0f} |")
    if sweep:
        print(f"\nretrieval alone over {args.recall_sessions:,} session states (one thread, CPU time):\n")
        print(f"| index | recall@{args.candidates} | queries per CPU-s |")
        print("|---|---|---|")
        for x in sweep:
            print(f"| {x['index']} | {x['recall']:.3f} | {x['queries_per_cpu_s']:,.0f} |")
    if args.json:
        args.json.write_text(json.dumps({"bound": bound, "bounds": bounds, "rows": rows, "sweep": sweep,
                                         "args": {k: str(v) for k, v in vars(args).items()}}, indent=1))


if __name__ == "__main__":
    main()
