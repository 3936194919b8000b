"""The RC15 and RetailRocket configs and experiments/reproduce_papers.py on tiny fake files in the real formats.

The full files are not on these machines: the fakes are written here in the exact formats (YooChoose clicks
and buys .dat files, RetailRocket events.csv) and the whole chain runs at toy size; the figures are not
checked, only that the papers' preprocessing and hyper-parameters are what runs.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from seqrec.cli.main import main
from seqrec.runs.config import load_run_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "experiments" / "configs"
MODELS = ("sasrec", "sasrec_sqn", "sasrec_sac", "sasrec_snqn", "sasrec_sa2c", "gru4rec")
LR = {"rc15": 0.01, "retailrocket": 0.005}
VARIANT = {"sasrec": "ce", "sasrec_sqn": "sqn", "sasrec_sac": "sac", "sasrec_snqn": "snqn", "sasrec_sa2c": "sa2c",
           "gru4rec": "ce"}


def _iso(t: dt.datetime) -> str:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def write_rc15(folder: Path, sessions: int = 60, seed: int = 0) -> tuple[Path, Path]:
    """yoochoose-clicks.dat (session,time,item,category) and yoochoose-buys.dat (session,time,item,price,qty)."""
    rng = np.random.default_rng(seed)
    clicks, buys = [], []
    t = dt.datetime(2014, 4, 1, tzinfo=dt.UTC)
    for s in range(1, sessions + 1):
        t += dt.timedelta(minutes=int(rng.integers(1, 90)))
        u = t
        for _ in range(int(rng.integers(1, 7))):
            u += dt.timedelta(seconds=int(rng.integers(5, 400)), milliseconds=int(rng.integers(0, 999)))
            item = 214_530_000 + int(rng.integers(0, 40))
            clicks.append(f"{s},{_iso(u)},{item},{rng.choice(['0', 'S', '2053'])}")
            if rng.random() < 0.15:
                buys.append(f"{s},{_iso(u + dt.timedelta(seconds=40))},{item},{int(rng.integers(0, 5000))},1")
    paths = folder / "yoochoose-clicks.dat", folder / "yoochoose-buys.dat"
    paths[0].write_text("\n".join(clicks) + "\n")
    paths[1].write_text("\n".join(buys) + "\n")
    return paths


def write_retailrocket(folder: Path, visitors: int = 40, seed: int = 0) -> Path:
    """events.csv: timestamp (ms),visitorid,event,itemid,transactionid; visits hours apart."""
    rng = np.random.default_rng(seed)
    lines = ["timestamp,visitorid,event,itemid,transactionid"]
    for v in range(visitors):
        t = 1_433_221_332_117 + int(rng.integers(0, 10**9))
        for _ in range(int(rng.integers(1, 8))):
            t += int(rng.integers(1, 4)) * 3_600_000  # an hour or more: a 30-minute cut would split visitors
            event = rng.choice(["view"] * 5 + ["addtocart", "transaction"])
            lines.append(f"{t},{1000 + v},{event},{int(rng.integers(1, 50))},"
                         f"{int(rng.integers(1, 99)) if event == 'transaction' else ''}")
    path = folder / "events.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> dict[str, Path]:
    """Both fake datasets prepared with their papers' prepare configs (and a small sample for RC15)."""
    folder = tmp_path_factory.mktemp("papers")
    rc15 = write_rc15(folder)
    rr = write_retailrocket(folder)
    out = {"rc15": folder / "rc15", "retailrocket": folder / "retailrocket"}
    assert main(["prepare", "--config", str(CONFIGS / "rc15_prepare.toml"), "--input", *map(str, rc15),
                 "--out", str(out["rc15"]), "--max-sessions", "25"]) == 0
    assert main(["prepare", "--config", str(CONFIGS / "retailrocket_prepare.toml"), "--input", str(rr),
                 "--out", str(out["retailrocket"])]) == 0
    return {**out, "rc15_inputs": rc15, "retailrocket_input": rr}


@pytest.mark.parametrize("dataset", ["rc15", "retailrocket"])
@pytest.mark.parametrize("model", MODELS)
def test_training_configs_carry_the_papers_hyper_parameters(prepared, dataset, model):
    cfg = load_run_config(CONFIGS / f"{dataset}_{model}.toml", data=str(prepared[dataset]))
    enc, head, train = cfg.encoder, cfg.head, cfg.train
    assert (enc.kind, enc.dim, enc.dropout) == ("gru" if model == "gru4rec" else "sasrec", 64, 0.1)
    assert (enc.blocks, enc.heads, enc.max_len) == (1, 1, 10)
    assert (train.batch_size, train.lr, train.select_metric) == (256, LR[dataset], "purchase/ndcg@10")
    assert train.eval_every == 4000 and train.max_steps >= 100_000  # about 30 epochs (the configs' comment)
    assert head.gamma == 0.5 and head.variant == VARIANT[model]
    if head.variant in ("snqn", "sa2c"):
        assert head.negatives == 10
    assert head.warmup_steps == {"sac": 30_000, "sa2c": 15_000}.get(head.variant, 0)
    if head.variant == "sa2c":
        assert (head.advantage_min, head.advantage_max) == (0.0, 10.0)


@pytest.mark.parametrize("dataset", ["rc15", "retailrocket"])
def test_prepare_configs_set_the_papers_rewards_and_split(prepared, dataset):
    m = json.loads((prepared[dataset] / "manifest.json").read_text())
    rewards = {t["name"]: t["reward"] for t in m["event_types"]}
    assert rewards["view"] == 0.2 and rewards["purchase"] == 1.0
    c = m["config"]
    assert (c["min_session_length"], c["window"], c["split"], c["split_fractions"]) == (3, 10, "random",
                                                                                       [0.8, 0.1, 0.1])


def test_rc15_config_joins_clicks_and_buys_and_samples_sessions(prepared):
    m = json.loads((prepared["rc15"] / "manifest.json").read_text())
    assert m["config"]["source"] == "rc15" and m["sessions"]["max_sessions"] == 25
    assert sum(s["sessions"] for s in m["splits"].values()) == 25 < m["sessions"]["after_filter"]
    ev = pq.read_table(prepared["rc15"] / "events.parquet").to_pandas()
    assert ev["session"].nunique() == 25 and ev.groupby("session").size().min() >= 3
    assert (ev["user_id"] == ev["session_id"]).all()  # session-only log: the session stands in for the user
    clicks, buys = (p.read_text().splitlines() for p in prepared["rc15_inputs"])
    sampled = set(ev["session_id"].tolist())
    raw_buys = {(int(b.split(",")[0]), int(b.split(",")[2])) for b in buys if int(b.split(",")[0]) in sampled}
    got_buys = set(zip(ev[ev.event_type == "purchase"]["session_id"], ev[ev.event_type == "purchase"]["item_id"]))
    assert got_buys == raw_buys  # buys land in their click sessions
    vocab = pq.read_table(prepared["rc15"] / "vocab.parquet").to_pydict()
    assert dict(zip(vocab["item_id"], vocab["count"])) == dict(Counter(ev["item_id"].tolist()))
    all_items = {int(line.split(",")[2]) for line in clicks}
    assert set(vocab["item_id"]) < all_items  # the vocabulary is the sample's


def test_retailrocket_config_visitor_sessions_carts_as_purchases_transactions_dropped(prepared):
    m = json.loads((prepared["retailrocket"] / "manifest.json").read_text())
    rows = [line.split(",") for line in prepared["retailrocket_input"].read_text().splitlines()[1:]]
    raw = Counter(r[2] for r in rows)
    assert m["excluded_by_event"] == {"transaction": raw["transaction"]} and m["rows_quarantined"] == 0
    assert m["rows_kept"] + m["rows_excluded"] == m["rows_read"] == len(rows)
    per_visitor = Counter(r[1] for r in rows if r[2] != "transaction")
    assert m["sessions"]["before_filter"] == len(per_visitor)  # one session per visitor, hours apart or not
    assert m["sessions"]["after_filter"] == sum(1 for n in per_visitor.values() if n >= 3)
    ev = pq.read_table(prepared["retailrocket"] / "events.parquet").to_pandas()
    assert set(ev["event_type"]) <= {"view", "purchase"}
    kept = {v for v, n in per_visitor.items() if n >= 3}
    assert (ev["event_type"] == "purchase").sum() == sum(1 for r in rows if r[2] == "addtocart" and r[1] in kept)


@pytest.mark.parametrize("dataset", ["rc15", "retailrocket"])
def test_reproduce_papers_runs_the_whole_chain(prepared, tmp_path, dataset):
    inputs = prepared["rc15_inputs"] if dataset == "rc15" else [prepared["retailrocket_input"]]
    out = tmp_path / "runs"
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "reproduce_papers.py"), "--dataset", dataset,
                           "--input", *map(str, inputs), "--data", str(tmp_path / "data"), "--out", str(out),
                           "--seeds", "0", "--max-sessions", "30", "--set", "train.max_steps=2",
                           "--set", "train.eval_every=1", "--set", "train.batch_size=16", "--set", "encoder.dim=8"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert manifest["config"]["source"] == dataset and manifest["sessions"]["max_sessions"] == 30
    table = (out / "table.md").read_text()
    for model in MODELS[:5]:
        assert f"| {dataset}_{model} |" in table
        assert (out / f"{dataset}_{model}-seed0" / "metrics.json").exists()
    papers = (out / "papers.md").read_text()
    assert "| SASRec-SA2C (paper) |" in papers and "| SASRec-SNQN (seqrec, seeds: 1) |" in papers
    assert "| prepared |" in papers and "| papers |" in papers
