"""Benchmark `seqrec score`: sessions per second and peak memory with the exact and the approximate (faiss)
index, beside the rate of the bare catalogue product (the bound for exact retrieval), all in one run.

Setup, cached under --work (delete it to rebuild):
- training log: the synthetic generator with a catalogue of --items items (--train-users users), plus one
  sweep session of views per 10 items so that every item is in the vocabulary; prepared with `seqrec prepare`;
- run: SASRec-SQN, width 64, with the two-tower candidate generator, trained briefly (--train-steps steps of
  each; the shapes, not the quality, set the cost of scoring); faiss IVF with --nprobe in its [index];
- scoring log: about --sessions sessions from the same generator (same world and catalogue, more users).

Measured, `--repeats` times in rotation (the machine is shared: read the ratios, taken in the same run):
- `seqrec score` in a fresh process per index (`--indexes exact,faiss`), --candidates and --top as given:
  end-to-end sessions/s over the process's wall time (start-up, reading, validation, sessions, scoring,
  writing), the engine's own sessions/s (manifest: after the process has started and imported torch), and
  peak RSS from wait4;
- the bare product: (B, D) x (D, I) with B = --batch, D = 64, I = the catalogue size, in this process with
  the same thread count, fastest of several; its rate in sessions/s is the bound for exact retrieval;
- recall@K of faiss against exact: the share of exact top-K candidates (two-tower scores) that the faiss
  index also returns, over --recall-sessions session states of the scoring log.

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

    from seqrec.train import run_config, train

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    train_log = work / f"train-{args.items}-{args.train_users}.parquet"
    if not train_log.exists():
        log = generate_events(SyntheticConfig(users=args.train_users, items=args.items, seed=args.seed))
        sweep = sweep_events(args.items, log.column("timestamp").combine_chunks().cast(pa.int64())[0].as_py())
        pq.write_table(pa.concat_tables([log.select(sweep.column_names), sweep]), train_log)
    data = work / f"data-{args.items}-{args.train_users}"
    prepare([train_log], lambda p: source_spec("events", p), PrepareConfig(seed=args.seed), data)
    run = work / f"run-{args.items}-{args.train_users}-{args.train_steps}-nprobe{args.nprobe}"
    if not (run / "checkpoints" / "last.pt").exists():
        raw = {"encoder": {"kind": "sasrec", "dim": 64}, "head": {"variant": "sqn"},
               "train": {"batch_size": 256, "max_steps": args.train_steps, "eval_every": args.train_steps},
               "retrieval": {"enabled": True, "max_steps": args.train_steps, "eval_every": args.train_steps,
                             "random_negatives": 256},
               "index": {"kind": "exact", "faiss_type": "ivf", "nprobe": args.nprobe},
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


def run_score(run: Path, log: Path, out: Path, index: str, args: argparse.Namespace) -> dict:
    """One `seqrec score` in a fresh process: wall seconds, peak RSS and the manifest."""
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "seqrec", "score", "--run", str(run), "--input", str(log), "--out", str(out),
           "--index", index, "--top", str(args.top), "--candidates", str(args.candidates), "--no-progress",
           "--batch-size", str(args.batch)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"seqrec score failed: {' '.join(cmd)}")
    manifest = json.loads((out / "manifest.json").read_text())
    return {"wall_s": wall, "peak_mib": usage.ru_maxrss / 1024, "manifest": manifest}


def product_rate(items: int, dim: int, batch: int, seconds: float = 3.0) -> float:
    """Sessions/s of the bare (batch, dim) x (dim, items) catalogue product (the row-padded one scoring uses),
    fastest pass over about `seconds`."""
    import torch

    from seqrec.catalogue import padded_scores

    g = torch.Generator().manual_seed(0)
    table, state = torch.randn(items, dim, generator=g), torch.randn(batch, dim, generator=g)
    with torch.no_grad():
        padded_scores(state, table)
        best, t_end = float("inf"), time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            t = time.perf_counter()
            padded_scores(state, table)
            best = min(best, time.perf_counter() - t)
    return batch / best


def faiss_recall(run: Path, log: Path, args: argparse.Namespace) -> float:
    """Mean share of the exact index's top-K two-tower candidates that the faiss index also returns."""
    import torch
    from seqrec.datasets.prepare import gap_us

    from seqrec.scoring import ScoreConfig, load_bundle, window_matrix
    from seqrec.sessions_state import session_states

    events = pq.ParquetFile(str(log)).read_row_groups([0], columns=["user_id", "session_id", "item_id",
                                                                   "timestamp"])
    exact = load_bundle(run, ScoreConfig(index="exact", top=args.top, candidates=args.candidates))
    approx = load_bundle(run, ScoreConfig(index="faiss", top=args.top, candidates=args.candidates))
    states = session_states(events, exact.window, gap_us(exact.info["session_gap_minutes"])).slice(
        0, args.recall_sessions)
    items = torch.from_numpy(window_matrix(exact, states.column("items")))
    hits = 0
    with torch.no_grad():
        user = exact.pipeline.tower.user(items)  # (B, D)
        _, a = exact.pipeline.index.search(user, args.candidates)  # (B, K)
        _, b = approx.pipeline.index.search(user, args.candidates)  # (B, K)
    for x, y in zip(a.numpy(), b.numpy()):
        hits += len(np.intersect1d(x, y))
    return hits / (len(a) * a.shape[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=1_000_000, help="sessions in the scoring log (about)")
    ap.add_argument("--items", type=int, default=26_702, help="catalogue size (RC15's)")
    ap.add_argument("--candidates", type=int, default=200)
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--batch", type=int, default=4096, help="sessions per scored batch and product batch")
    ap.add_argument("--indexes", default="exact,faiss")
    ap.add_argument("--nprobe", type=int, default=32, help="faiss IVF clusters searched per query")
    ap.add_argument("--train-users", type=int, default=20_000)
    ap.add_argument("--train-steps", type=int, default=20)
    ap.add_argument("--recall-sessions", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_score")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    run, log = build(args)
    indexes = args.indexes.split(",")
    results: dict[str, list[dict]] = {i: [] for i in indexes}
    bounds = []
    for r in range(args.repeats):
        bounds.append(product_rate(args.items + 2, 64, args.batch))
        for index in indexes:
            res = run_score(run, log, args.work / f"scored-{index}", index, args)
            results[index].append(res)
            m = res["manifest"]
            print(f"[{r + 1}/{args.repeats}] {index}: {m['sessions']['scored']:,} sessions in {res['wall_s']:.1f} s "
                  f"({m['sessions']['scored'] / res['wall_s']:,.0f}/s end to end, {m['sessions_per_s']:,.0f}/s "
                  f"engine; timings {m['timings']}), peak {res['peak_mib']:,.0f} MiB; bare product "
                  f"{bounds[-1]:,.0f} sessions/s", flush=True)
    bound = statistics.median(bounds)
    recall = faiss_recall(run, log, args) if "faiss" in indexes else None
    rows = []
    for index in indexes:
        rs = results[index]
        sessions = rs[0]["manifest"]["sessions"]["scored"]
        e2e = statistics.median(sessions / x["wall_s"] for x in rs)
        engine = statistics.median(x["manifest"]["sessions_per_s"] for x in rs)
        rows.append({"index": index, "sessions": sessions, "rows": rs[0]["manifest"]["rows"],
                     "events": rs[0]["manifest"]["rows_read"], "sessions_per_s": e2e, "engine_sessions_per_s": engine,
                     "peak_mib": max(x["peak_mib"] for x in rs), "fraction_of_bound": e2e / bound,
                     "engine_fraction_of_bound": engine / bound,
                     "recall": recall if index == "faiss" else 1.0})
    print(f"\ncatalogue {args.items + 2:,} (with padding and OOV), {args.candidates} candidates, top {args.top}, "
          f"batch {args.batch}, {args.threads} threads; bare product {bound:,.0f} sessions/s "
          f"(median of {len(bounds)})\n")
    print("| index | sessions | events | sessions/s end to end | engine sessions/s | / bare product | "
          f"recall@{args.candidates} | peak MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for x in rows:
        print(f"| {x['index']} | {x['sessions']:,} | {x['events']:,} | {x['sessions_per_s']:,.0f} | "
              f"{x['engine_sessions_per_s']:,.0f} | {x['fraction_of_bound']:.2f} (engine "
              f"{x['engine_fraction_of_bound']:.2f}) | {x['recall']:.3f} | {x['peak_mib']:,.0f} |")
    if args.json:
        args.json.write_text(json.dumps({"bound_sessions_per_s": bound, "bounds": bounds, "rows": rows,
                                         "args": {k: str(v) for k, v in vars(args).items()}}, indent=1))


if __name__ == "__main__":
    main()
