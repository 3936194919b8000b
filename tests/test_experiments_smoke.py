"""Every experiment script runs end to end at tiny size (figures are not checked here, only that it works)."""

import json
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


def test_bench_train_smoke():
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "bench_train.py"), "--catalogues", "500",
                          "--steps", "2", "--batch", "32", "--warmup", "1", "--mm-samples", "2",
                          "--eval-batches", "1", "--variants", "gru4rec,sasrec,sasrec-sqn", "--epoch",
                          "--epoch-transitions", "64"],
                         capture_output=True, text=True, check=True, timeout=300)
    rows = [line.split(" | ")[0] for line in out.stdout.splitlines() if line.startswith("| ") and "| 500 |" in line]
    assert rows == ["| gru4rec", "| sasrec", "| sasrec-sqn"], out.stdout
    assert "GFLOP/s" in out.stdout and "| epoch s |" in out.stdout, out.stdout


def test_train_table_smoke(tmp_path):
    from seqrec.datasets.adapters import source_spec
    from seqrec.datasets.prepare import PrepareConfig, prepare
    from seqrec.datasets.synthetic import SyntheticConfig, write_events

    write_events(SyntheticConfig(users=120, items=30, seed=1), tmp_path / "ev.parquet")
    prepare([tmp_path / "ev.parquet"], lambda p: source_spec("events", p), PrepareConfig(), tmp_path / "data")
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "train_table.py"), "--data",
                          str(tmp_path / "data"), "--out", str(tmp_path / "runs"), "--models", "sasrec,gru4rec_sqn",
                          "--seeds", "0,1", "--set", "train.max_steps=4", "--set", "train.eval_every=2",
                          "--set", "encoder.dim=8"], capture_output=True, text=True, check=True, timeout=300)
    table = (tmp_path / "runs" / "table.md").read_text()
    assert "| popularity |" in table and "| recent items" in table, out.stdout
    assert "| sasrec |" in table and "| gru4rec_sqn |" in table, out.stdout
    # the finished runs again, at their last checkpoints: no training, a second table
    subprocess.run([sys.executable, str(ROOT / "experiments" / "train_table.py"), "--data", str(tmp_path / "data"),
                    "--out", str(tmp_path / "runs"), "--models", "sasrec", "--seeds", "0", "--checkpoint", "last",
                    "--set", "train.max_steps=4", "--set", "train.eval_every=2", "--set", "encoder.dim=8"],
                   capture_output=True, text=True, check=True, timeout=300)
    assert "last checkpoint" in (tmp_path / "runs" / "table_last.md").read_text()
    metrics = json.loads((tmp_path / "runs" / "sasrec-seed0" / "metrics.json").read_text())
    assert metrics["checkpoint"]["test"]["path"] == "checkpoints/last.pt"


def test_behaviour_hashes_repeat_exactly(tmp_path):
    """experiments/behaviour_hashes.py at tiny size, twice into the same path: the whole demo (generate, prepare,
    train, evaluate, score) is deterministic, so its fingerprints repeat to the digit."""
    import shutil

    cmd = [sys.executable, str(ROOT / "experiments" / "behaviour_hashes.py"), "--out", str(tmp_path / "h"),
           "--demo-events", "4000", "--steps", "4", "--skip-taobao"]
    first = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=300).stdout
    shutil.rmtree(tmp_path / "h")
    second = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=300).stdout
    lines = first.splitlines()
    assert len(lines) == 2 and lines[0].startswith("demo   metrics.json ") and "rows), quarantine" in lines[1], first
    assert first == second
