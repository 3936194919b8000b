"""Benchmark `seqrec prepare`: events per second and peak memory on generated SDK logs.

Each size runs in a fresh process (peak RSS from wait4), beside a bare pyarrow read of the same file in
the same run, so the ratio stays meaningful on a noisy shared machine. Peak memory at several input
sizes shows whether memory grows with the input.

    python experiments/bench_prepare.py                       # 2.5M, 5M, 10M events, Parquet and CSV
    python experiments/bench_prepare.py --sizes 100000 --formats parquet   # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.csv as pcsv
import pyarrow.parquet as pq
from seqrec.datasets.synthetic import config_for_events, write_events


def bare_read_seconds(path: Path) -> float:
    """Seconds to stream the file through pyarrow with no parsing beyond the format itself."""
    t = time.perf_counter()
    if path.suffix == ".parquet":
        for _ in pq.ParquetFile(str(path)).iter_batches(1 << 20):
            pass
    else:
        for _ in pcsv.open_csv(str(path), read_options=pcsv.ReadOptions(use_threads=False, block_size=16 << 20)):
            pass
    return time.perf_counter() - t


def run_prepare(path: Path, out: Path) -> tuple[float, int, dict]:
    """Wall seconds, peak RSS bytes of a fresh `seqrec prepare` process, and its manifest."""
    cmd = [sys.executable, "-m", "seqrec", "prepare", "--input", str(path), "--out", str(out), "--no-progress"]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"prepare failed on {path}")
    return wall, usage.ru_maxrss * 1024, json.loads((out / "manifest.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="2500000,5000000,10000000", help="comma-separated event counts")
    ap.add_argument("--formats", default="parquet,csv", help="comma-separated: parquet, csv")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "seqrec-bench-prepare")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for fmt in args.formats.split(","):
        for n in (int(s) for s in args.sizes.split(",")):
            path = args.workdir / f"events-{n}-seed{args.seed}.{fmt}"
            if not path.exists():
                t = time.perf_counter()
                written = write_events(config_for_events(n, seed=args.seed), path)
                print(f"generated {written:,} events -> {path} in {time.perf_counter() - t:.1f} s", flush=True)
            bare = bare_read_seconds(path)
            out = args.workdir / f"prepared-{n}-{fmt}"
            wall, rss, m = run_prepare(path, out)
            read = m["rows_read"]
            rows.append((fmt, read, wall, read / wall, rss / 2**20, read / bare, (read / wall) / (read / bare),
                         m["timings"]))
            print(f"{fmt:8s} {read:>11,} events  {wall:7.2f} s  {read / wall:>12,.0f} ev/s  "
                  f"peak {rss / 2**20:7.0f} MiB  bare read {read / bare:>12,.0f} ev/s  "
                  f"ratio {(read / wall) / (read / bare):.3f}  stages {m['timings']}", flush=True)
    print("\n| format | events | seconds | events/s | peak MiB | bare read events/s | prepare / bare read |")
    print("|---|---|---|---|---|---|---|")
    for fmt, n, wall, rate, mib, bare_rate, ratio, _ in rows:
        print(f"| {fmt} | {n:,} | {wall:.2f} | {rate:,.0f} | {mib:,.0f} | {bare_rate:,.0f} | {ratio:.3f} |")


if __name__ == "__main__":
    main()
