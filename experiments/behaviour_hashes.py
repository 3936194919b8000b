"""Fingerprints of what seqrec computes, to show that a change (a refactor) leaves behaviour unchanged.

Runs, each command a fresh `python -m seqrec` process on one torch thread:
  demo:   seqrec demo --out OUT/demo --steps S; seqrec evaluate --run OUT/demo/run
  taobao: seqrec prepare --source taobao; seqrec train (sasrec_sqn_retrieval.toml, re-rank by all three scores);
          seqrec evaluate; seqrec score of the whole slice
and prints one line per output: the sha256 (16 hex digits) of metrics.json without its timing keys, and of the
scored rows as values (sorted by user, session, start and rank, so neither part layout nor row order counts) with
their row count and the quarantine's hash. Run it before and after a change with the same --out path (the scored
rows carry a config hash that covers the run's path) and compare the lines.

  python experiments/behaviour_hashes.py --out /tmp/hashes            # before; move /tmp/hashes aside
  python experiments/behaviour_hashes.py --out /tmp/hashes            # after: the same lines
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
TIMING = ("states_per_s", "seconds", "per_s", "speed", "time", "ratio")  # measured, so never equal twice
TAOBAO = "taobao_userbehavior_slice/UserBehavior_slice_20171126_0100-0310UTC.csv"


def without_timings(obj: object) -> object:
    """A JSON value with every key that names a measured duration or rate dropped, at any depth."""
    if isinstance(obj, dict):
        return {k: without_timings(v) for k, v in obj.items() if not any(t in k for t in TIMING)}
    if isinstance(obj, list):
        return [without_timings(v) for v in obj]
    return obj


def metrics_hash(run: Path) -> str:
    data = without_timings(json.loads((run / "metrics.json").read_text()))
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def rows_hash(scored: Path) -> tuple[str, int, str]:
    """(hash of the rows as Python values, row count, hash of the quarantine rows) of a scored folder."""
    table = pa.concat_tables([pq.read_table(p) for p in sorted((scored / "scores").glob("*.parquet"))])
    keys = [c for c in ("user_id", "session_id", "session_start", "rank") if c in table.column_names]
    h = hashlib.sha256()
    for row in table.sort_by([(k, "ascending") for k in keys]).to_pylist():
        h.update(json.dumps(row, default=str, sort_keys=True).encode())
    q = scored / "quarantine.parquet"
    quarantine = sorted(json.dumps(r, default=str, sort_keys=True) for r in pq.read_table(q).to_pylist()) \
        if q.exists() else []
    return h.hexdigest()[:16], table.num_rows, hashlib.sha256("\n".join(quarantine).encode()).hexdigest()[:16]


def seqrec(*args: str | Path, log: Path) -> None:
    """One `seqrec` command in a fresh process (one torch thread), its output appended to `log`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with log.open("a") as f:
        subprocess.run([sys.executable, "-m", "seqrec", *map(str, args)], check=True, stdout=f, stderr=f, env=env,
                       cwd=ROOT)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, type=Path, help="work folder (use the same path before and after)")
    shared = Path(os.environ.get("SEQREC_SHARED_DATA", ROOT.parent / "shared" / "data"))
    p.add_argument("--shared-data", type=Path, default=shared, help=f"public data folder (default {shared})")
    p.add_argument("--demo-events", type=int, default=200_000)
    p.add_argument("--steps", type=int, default=60, help="training steps of both runs (retrieval: half)")
    p.add_argument("--skip-taobao", action="store_true", help="the demo only (no shared data needed)")
    args = p.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "commands.log"
    seqrec("demo", "--out", out / "demo", "--events", args.demo_events, "--steps", args.steps, "--no-progress",
           log=log)
    seqrec("evaluate", "--run", out / "demo" / "run", log=log)
    print(f"demo   metrics.json {metrics_hash(out / 'demo' / 'run')}")
    print("demo   scored rows  {} ({:,} rows), quarantine {}".format(*rows_hash(out / "demo" / "scored")))
    if args.skip_taobao:
        return
    slice_csv = args.shared_data / TAOBAO
    if not slice_csv.exists():
        raise SystemExit(f"{slice_csv}: no Taobao slice (give --shared-data, or --skip-taobao)")
    half = str(max(1, args.steps // 2))
    seqrec("prepare", "--source", "taobao", "--input", slice_csv, "--out", out / "tb_data", log=log)
    seqrec("train", "--config", ROOT / "experiments" / "configs" / "sasrec_sqn_retrieval.toml", "--data",
           out / "tb_data", "--out", out / "tb_run", "--set", f"train.max_steps={args.steps}",
           "--set", f"train.eval_every={half}", "--set", f"retrieval.max_steps={half}",
           "--set", f"retrieval.eval_every={max(1, args.steps // 4)}", "--set", "rerank.w_q=0.3",
           "--set", "rerank.w_tt=0.2", log=log)
    seqrec("evaluate", "--run", out / "tb_run", log=log)
    seqrec("score", "--run", out / "tb_run", "--input", slice_csv, "--source", "taobao", "--out",
           out / "tb_scored", log=log)
    print(f"taobao metrics.json {metrics_hash(out / 'tb_run')}")
    print("taobao scored rows  {} ({:,} rows), quarantine {}".format(*rows_hash(out / "tb_scored")))


if __name__ == "__main__":
    main()
