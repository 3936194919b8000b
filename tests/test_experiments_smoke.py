"""Every experiment script runs end to end at tiny size (figures are not checked here, only that it works)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_prepare_smoke(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "bench_prepare.py"), "--sizes", "20000",
                          "--formats", "parquet,csv", "--workdir", str(tmp_path)],
                         capture_output=True, text=True, check=True, timeout=300)
    table = [line for line in out.stdout.splitlines() if line.startswith("| parquet") or line.startswith("| csv")]
    assert len(table) == 2, out.stdout
