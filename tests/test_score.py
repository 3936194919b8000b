"""Batch scoring (`seqrec score`): one block of rows per input session, identical output for the same seed,
resume after kill -9 equal to an uninterrupted run, quarantine accounting, OOV mapping and the popularity
fallback, the manifest, runs with and without a retrieval model, purity of score_batch, the nudge draws,
session states by hand, the demo and the benchmark script at tiny size."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from seqrec.datasets.adapters import source_spec
from seqrec.datasets.duplicates import find_duplicates
from seqrec.datasets.sessions import gap_us

from seqrec.cli.main import main
from seqrec.retrieval.rerank import rerank_batch as pipeline_batch
from seqrec.runs.score_config import ScoreConfig
from seqrec.serve.engines import ScoreJob
from seqrec.serve.local import LocalEngine
from seqrec.serve.scoring import draw_arms, load_bundle, score_batch, session_keys, uniforms, window_matrix
from seqrec.serve.sessions_state import session_states

ROOT = Path(__file__).resolve().parents[1]
TOP = 10


@pytest.fixture(scope="module")
def world(score_world) -> dict:
    """The shared scoring world of tests/conftest.py (a generated log, its prepared folder, two trained runs)."""
    return score_world


def score(run: Path, inputs: list[Path], out: Path, *extra: str) -> dict:
    assert main(["score", "--run", str(run), "--input", *map(str, inputs), "--out", str(out), "--no-progress",
                 *extra]) == 0
    return json.loads((out / "manifest.json").read_text())


def scores_of(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "scores")


def log_sessions(log: Path) -> int:
    """Sessions of a generated log, counted independently: distinct (user, session id) pairs."""
    t = pq.read_table(log, columns=["user_id", "session_id"]).to_pandas()
    return len(t.drop_duplicates())


def test_one_block_of_rows_per_input_session(world, tmp_path):
    m = score(world["tower"], [world["log"]], tmp_path / "out", "--bucket-rows", "500")
    sessions = log_sessions(world["log"])
    assert m["sessions"] == {"in": sessions, "scored": sessions, "fallback": 0}
    df = scores_of(tmp_path / "out")
    blocks = df.groupby(["user_id", "session_id"], sort=False)
    assert blocks.ngroups == sessions and len(df) == m["rows"] == sessions * TOP
    assert all(list(g["rank"]) == list(range(1, TOP + 1)) for _, g in blocks)  # contiguous, in rank order
    first = df["rank"].to_numpy() == 1
    assert (np.flatnonzero(first) % TOP == 0).all()  # each block is contiguous in the file
    assert blocks["item_id"].nunique().eq(TOP).all()  # no item twice in a session's list
    assert df.groupby(["user_id", "session_id"])["final_score"].apply(lambda s: s.is_monotonic_decreasing).all()
    for col in ("two_tower_score", "supervised_score", "q_value", "final_score", "propensity"):
        assert df[col].notna().all(), col  # a retrieval model, a Q head, no fallback: no nulls
    assert len(m["parts"]) > 1 and sorted(p.name for p in (tmp_path / "out" / "scores").iterdir()) == \
        sorted(Path(p).name for p in m["parts"])


def test_sessions_split_across_files_and_buckets_score_as_one(world, tmp_path):
    log = pq.read_table(world["log"])
    even, odd = np.arange(0, log.num_rows, 2), np.arange(1, log.num_rows, 2)  # every session in both files
    pq.write_table(log.take(pa.array(even)), tmp_path / "a.parquet", row_group_size=97)
    pq.write_table(log.take(pa.array(odd)), tmp_path / "b.parquet", row_group_size=89)
    one = score(world["tower"], [world["log"]], tmp_path / "one", "--bucket-rows", "300")
    two = score(world["tower"], [tmp_path / "a.parquet", tmp_path / "b.parquet"], tmp_path / "two",
                "--bucket-rows", "300")
    assert one["sessions"] == two["sessions"] and one["rows"] == two["rows"] and len(two["inputs"]) == 2
    key = ["user_id", "session_id", "rank"]
    a = scores_of(tmp_path / "one").sort_values(key).reset_index(drop=True)
    b = scores_of(tmp_path / "two").sort_values(key).reset_index(drop=True)
    cols = [c for c in a.columns if c not in ("config_hash",)]  # the hash covers the same settings; inputs differ
    pd.testing.assert_frame_equal(a[cols], b[cols])


@pytest.mark.parametrize("index", ["exact", "faiss"])
def test_a_sessions_rows_do_not_depend_on_the_batch_it_is_scored_in(world, index):
    """Batches of 1, 2, 3 and 33 sessions (where BLAS and faiss switch kernels) give the same bits as one
    batch of all: score_batch pads its model passes, so Ray's batching or a resume cannot change a row."""
    if index == "faiss":
        pytest.importorskip("faiss", reason="faiss-cpu is not installed (the optional extra seqrec[ann])")
    bundle = load_bundle(world["tower"], ScoreConfig(index=index, seed=3))
    events = pq.read_table(world["log"]).rename_columns({"event_type": "event"})
    states = session_states(events, bundle.window, gap_us(bundle.info["session_gap_minutes"]))
    whole = score_batch(bundle, states.slice(0, 60))
    for lo, n in ((0, 1), (1, 2), (3, 3), (6, 33), (39, 21)):
        part = score_batch(bundle, states.slice(lo, n))
        first = whole.column("rank").to_numpy() == 1
        rows = np.flatnonzero(np.cumsum(first) - 1 >= lo)[:part.num_rows]  # whole's rows of these sessions
        assert part.equals(whole.take(pa.array(rows))), (lo, n)


def test_empty_input_scores_nothing_and_says_so(world, tmp_path):
    empty = pq.read_table(world["log"]).slice(0, 0)
    pq.write_table(empty, tmp_path / "empty.parquet")
    m = score(world["tower"], [tmp_path / "empty.parquet"], tmp_path / "out")
    assert m["rows_read"] == 0 and m["sessions"] == {"in": 0, "scored": 0, "fallback": 0} and m["parts"] == []
    assert (tmp_path / "out" / "_COMPLETE").exists()


def test_same_seed_same_output_other_seed_other_nudges_only(world, tmp_path):
    a = score(world["tower"], [world["log"]], tmp_path / "a", "--seed", "7")
    b = score(world["tower"], [world["log"]], tmp_path / "b", "--seed", "7", "--batch-size", "64", "--workers", "3")
    c = score(world["tower"], [world["log"]], tmp_path / "c", "--seed", "8")
    ta, tb, tc = (pq.read_table(p / "scores") for p in (tmp_path / "a", tmp_path / "b", tmp_path / "c"))
    assert a["config_hash"] == b["config_hash"] != c["config_hash"]  # the batch size is not part of the hash
    assert ta.equals(tb)  # same seed: identical rows, whatever the batch size and the number of workers
    da, dc = ta.to_pandas(), tc.to_pandas()
    same = ["user_id", "session_id", "rank", "item_id", "final_score", "q_value"]
    pd.testing.assert_frame_equal(da[same], dc[same])  # the seed only draws the nudges
    assert (da["nudge_id"].astype(str) != dc["nudge_id"].astype(str)).mean() > 0.1


def _done_buckets(out: Path) -> int:
    return len(list((out / "_work").glob("done-*.json")))


def test_kill_9_then_resume_gives_the_same_files_and_content(world, tmp_path):
    args = ["--run", str(world["tower"]), "--input", str(world["log"]), "--bucket-rows", "40", "--no-progress"]
    whole = tmp_path / "whole"
    assert main(["score", *args, "--out", str(whole)]) == 0

    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same float sums as this process (one thread)
    proc = subprocess.Popen([sys.executable, "-m", "seqrec", "score", *args, "--out", str(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while _done_buckets(killed) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    total = json.loads((whole / "manifest.json").read_text())["parts"]
    assert not (killed / "_COMPLETE").exists() and 0 < _done_buckets(killed) < len(total), "kill mid-run"
    m = score(world["tower"], [world["log"]], killed, "--bucket-rows", "40")
    assert m["resumed"] and (killed / "_COMPLETE").exists() and not (killed / "_work").exists()

    def files(root: Path) -> list[str]:
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

    assert files(whole) == files(killed)
    for rel in files(whole):
        if rel.endswith(".parquet"):
            assert pq.read_table(whole / rel).equals(pq.read_table(killed / rel)), rel
    w = json.loads((whole / "manifest.json").read_text())
    for key in ("sessions", "rows", "parts", "rows_read", "rows_kept", "config_hash", "job_key"):
        assert w[key] == m[key], key


def test_quarantine_accounting_and_dropped_events(world, tmp_path):
    good = pq.read_table(world["log"]).slice(0, 60).to_pandas()
    good["timestamp"] = good["timestamp"].map(lambda t: t.isoformat())
    text = good[["user_id", "session_id", "item_id", "event_type", "timestamp"]].copy()
    bad = pd.DataFrame([
        {"user_id": "", "session_id": 1, "item_id": 3, "event_type": "view", "timestamp": "2024-01-02T00:00:00Z"},
        {"user_id": 5, "session_id": 1, "item_id": 3, "event_type": "teleport", "timestamp": "2024-01-02T00:00:00Z"},
        {"user_id": 5, "session_id": 1, "item_id": 3, "event_type": "view", "timestamp": "yesterday"},
        {"user_id": 5, "session_id": 1, "item_id": 3, "event_type": "share", "timestamp": "2024-01-02T00:00:00Z"},
    ])
    frame = pd.concat([text, text.iloc[[0, 1]], bad], ignore_index=True)  # rows 0 and 1 twice: duplicates
    path = tmp_path / "events.csv"
    frame.to_csv(path, index=False)
    m = score(world["tower"], [path], tmp_path / "out", "--event-map", "share=drop")
    assert m["rows_read"] == len(frame) == m["rows_kept"] + m["rows_quarantined"] + m["rows_excluded"]
    assert m["quarantine_reasons"] == {"duplicate_event": 2, "missing_value": 1, "unknown_event_type": 1,
                                       "unparsable_value": 1}
    assert m["rows_excluded"] == 1 and m["excluded_by_event"] == {"share": 1}
    q = pq.read_table(tmp_path / "out" / "quarantine.parquet").to_pandas()
    assert len(q) == m["rows_quarantined"] and set(q["source_file"]) == {str(path)}
    assert sorted(q.loc[q["reason"] == "duplicate_event", "row"]) == [len(text) + 2, len(text) + 3]  # 1-based lines
    assert m["sessions"]["in"] == m["sessions"]["scored"] == len(text.drop_duplicates(["user_id", "session_id"]))


def test_oov_items_and_the_popularity_fallback(world, tmp_path):
    vocab = pq.read_table(world["data"] / "vocab.parquet").sort_by("index").to_pandas()
    known = int(vocab["item_id"].iloc[5])
    t0 = pd.Timestamp("2024-03-01", tz="UTC")
    rows = [(9001, 1, 999_001, 0), (9001, 1, 999_002, 1),  # nothing known: popularity fallback
            (9002, 2, 999_003, 0), (9002, 2, known, 1)]    # one known item of two
    frame = pd.DataFrame(rows, columns=["user_id", "session_id", "item_id", "minute"])
    frame["timestamp"] = t0 + pd.to_timedelta(frame.pop("minute"), unit="min")
    frame["event_type"] = "view"
    path = tmp_path / "new.parquet"
    frame.to_parquet(path)
    m = score(world["tower"], [path], tmp_path / "out")
    df = scores_of(tmp_path / "out")
    fb, mixed = df[df["user_id"] == 9001], df[df["user_id"] == 9002]
    assert m["sessions"]["fallback"] == 1 and fb["fallback"].all() and not mixed["fallback"].any()
    assert list(fb["item_id"]) == list(vocab["item_id"][:TOP])  # most frequent first
    assert fb[["two_tower_score", "supervised_score", "q_value"]].isna().all().all()
    assert np.allclose(fb["final_score"], vocab["count"][:TOP] / vocab["count"].sum())
    assert (fb["known_items"] == 0).all() and (mixed["known_items"] == 1).all()
    assert (mixed["session_events"] == 2).all() and mixed["two_tower_score"].notna().all()
    assert fb["propensity"].between(0, 1, inclusive="right").all()

    bundle = load_bundle(world["tower"], ScoreConfig())
    items = pa.array([[999_003, known], [known] * 12, []], pa.list_(pa.int64()))
    w = window_matrix(bundle, items)  # (3, W): left-padded, unknown -> OOV 1, only the last W
    assert w.shape == (3, bundle.window)
    assert w[0, :-2].sum() == 0 and w[0, -2] == 1 and w[0, -1] == 7  # vocabulary index of row 5 is 7
    assert (w[1] == 7).all() and (w[2] == 0).all()


def test_manifest_complete_marker_reuse_and_a_new_job(world, tmp_path, capsys):
    out = tmp_path / "out"
    m = score(world["tower"], [world["log"]], out)
    assert (out / "_COMPLETE").read_text().split() == [m["config_hash"], m["job_key"]]
    for key in ("model_version", "config_hash", "rows_read", "rows_kept", "rows_quarantined", "rows_excluded",
                "quarantine_reasons", "sessions", "rows", "parts", "inputs", "timings", "policy", "index",
                "null_columns"):
        assert key in m, key
    assert m["index"] == "exact" and m["retrieval"] and "bandit.json" in m["policy"]
    assert m["model_version"].startswith("tower:best@6,retrieval:best@4,bandit@")
    df = scores_of(out)
    assert set(df["config_hash"].astype(str)) == {m["config_hash"]}
    assert set(df["model_version"].astype(str)) == {m["model_version"]}
    stamp = (out / "manifest.json").stat().st_mtime_ns
    capsys.readouterr()
    again = score(world["tower"], [world["log"]], out)
    assert "re-used" in capsys.readouterr().out and (out / "manifest.json").stat().st_mtime_ns == stamp
    assert again["job_key"] == m["job_key"]
    five = score(world["tower"], [world["log"]], out, "--top", "5")  # another job: starts afresh
    assert not five["reused"] and five["rows"] == 5 * five["sessions"]["scored"] and len(scores_of(out)) == five["rows"]


def test_run_without_retrieval_ranks_the_catalogue_with_the_learner(world, tmp_path):
    m = score(world["plain"], [world["log"]], tmp_path / "out")
    assert not m["retrieval"] and any("two_tower_score: always" in c for c in m["null_columns"])
    assert any("q_value: always" in c for c in m["null_columns"])
    df = scores_of(tmp_path / "out")
    assert df["two_tower_score"].isna().all() and df["q_value"].isna().all() and df["supervised_score"].notna().all()
    assert "bandit.json" in m["policy"]  # fitted at train time for this run too
    bundle = load_bundle(world["plain"], ScoreConfig())
    states = session_states(pq.read_table(world["log"]), bundle.window, gap_us(30.0))
    x = torch.from_numpy(window_matrix(bundle, states.column("items")))
    with torch.no_grad():
        full = bundle.learner.scores(x)[:, 2:]  # (B, I - 2) real items
    expected = torch.topk(full, TOP, dim=1).indices + 2  # the learner's own full ranking
    got = bundle.item_ids.to_pandas()
    rows = score_batch(bundle, states).to_pandas()
    want = [got[i] for i in expected.reshape(-1).tolist()]
    assert list(rows["item_id"]) == want


def test_score_batch_is_pure_and_matches_the_reranker(world):
    bundle = load_bundle(world["tower"], ScoreConfig(seed=3))
    states = session_states(pq.read_table(world["log"]), bundle.window, gap_us(30.0),
                            bundle.user_spec.columns)
    probs = bundle.arm_probs.copy()
    whole = score_batch(bundle, states)
    halves = pa.concat_tables([score_batch(bundle, states.slice(0, 100)), score_batch(bundle, states.slice(100))])
    assert whole.equals(halves) and np.array_equal(probs, bundle.arm_probs)  # batches and calls change nothing
    # the lazy re-ranking of scoring.py gives what seqrec.retrieval.rerank.rerank_batch gives
    x = torch.from_numpy(window_matrix(bundle, states.column("items")))
    users = bundle.user_spec.encode({c: states.column(c).to_numpy(zero_copy_only=False)
                                     for c in bundle.user_spec.columns}, states.num_rows)
    ref = pipeline_batch(bundle.pipeline, x, users, TOP, bundle.candidates)
    df = whole.to_pandas()
    assert list(df["item_id"]) == [bundle.item_ids[i].as_py() for i in ref.ids.reshape(-1).tolist()]
    for col, t in (("two_tower_score", ref.two_tower), ("supervised_score", ref.supervised), ("q_value", ref.q),
                   ("final_score", ref.final)):
        np.testing.assert_allclose(df[col], t.reshape(-1).numpy(), rtol=1e-5, atol=1e-5)


def test_nudges_are_allowed_arms_with_their_probability(world):
    bundle = load_bundle(world["tower"], ScoreConfig())
    states = session_states(pq.read_table(world["log"]), bundle.window, gap_us(30.0))
    df = score_batch(bundle, states).to_pandas()
    index = {v: i for i, v in enumerate(bundle.item_ids.to_pylist()) if v is not None}
    items = df["item_id"].map(index).to_numpy()
    arms = df["nudge_id"].astype(str).map({a: i for i, a in enumerate(bundle.arm_ids)}).to_numpy()
    assert bundle.arm_mask[items, arms].all()  # never an arm the catalogue forbids with the item
    np.testing.assert_allclose(df["propensity"], bundle.arm_probs[items, arms])
    assert (df["nudge_family"].astype(str) == [bundle.arm_families[a] for a in arms]).all()
    assert not bundle.arm_mask.all()  # the shipped catalogue restricts health and grocery items


def test_draws_follow_the_probabilities_and_keys_are_stable():
    p = np.array([[0.7, 0.0, 0.2, 0.1]])
    u = uniforms(np.arange(40_000, dtype=np.uint64), np.ones(40_000, np.int16), seed=1)
    assert 0 <= u.min() and u.max() < 1
    arms = draw_arms(np.repeat(p, len(u), axis=0), u)
    np.testing.assert_allclose(np.bincount(arms, minlength=4) / len(u), p[0], atol=0.01)
    assert (arms != 1).all()  # probability 0: never drawn
    t = pa.table({"user_id": ["a", "b"], "session_start": pa.array([1, 1], pa.timestamp("us", tz="UTC"))})
    keys = session_keys(t)
    assert keys[0] != keys[1] and np.array_equal(keys, session_keys(t))


def test_session_states_by_hand():
    minute = 60_000_000
    ev = pa.table({"user_id": [2, 1, 1, 1, 1, 2], "item_id": [50, 10, 11, 12, 13, 51],
                   "timestamp": [0, 0, minute, 100 * minute, 101 * minute, minute],
                   "event": pa.array([0] * 6, pa.int16())})
    st = session_states(ev, window=3, gap_us=gap_us(30.0)).to_pandas()
    assert list(st["user_id"]) == [1, 1, 2] and list(st["events"]) == [2, 2, 2]
    assert [list(x) for x in st["items"]] == [[10, 11], [12, 13], [50, 51]]
    one = session_states(ev, window=3, gap_us=gap_us(float("inf"))).to_pandas()  # one session per user
    assert [list(x) for x in one["items"]] == [[11, 12, 13], [50, 51]]
    dup = pa.table({"user_id": [1, 1, 1], "item_id": [5, 5, 5], "timestamp": [0, 0, 1],
                    "event": pa.array([0, 0, 0], pa.int16())})
    order, is_dup = find_duplicates(dup)
    assert is_dup.tolist() == [False, True, False] and order.tolist() == [0, 1, 2]
    with_ids = ev.append_column("session_id", pa.array([7, 3, 4, 3, 4, 7]))  # interleaved SDK sessions
    st = session_states(with_ids, window=5, gap_us=gap_us(30.0)).to_pandas()
    assert [list(x) for x in st["items"]] == [[10, 12], [11, 13], [50, 51]]


def test_score_job_api_and_bad_inputs(world, tmp_path):
    job = ScoreJob(world["tower"], (world["log"],), (source_spec("events", world["log"]),), tmp_path / "o",
                   ScoreConfig(top=3, candidates=5))
    m = LocalEngine().score(job)
    assert m["rows"] == 3 * m["sessions"]["scored"]
    assert main(["score", "--run", str(world["tower"]), "--input", str(tmp_path / "nope.csv"), "--out",
                 str(tmp_path / "x")]) == 2
    assert main(["score", "--run", str(tmp_path), "--input", str(world["log"]), "--out", str(tmp_path / "x")]) == 2
    assert main(["score", "--run", str(world["tower"]), "--input", str(world["log"]), "--out", str(tmp_path / "x"),
                 "--top", "20", "--candidates", "10"]) == 2
    with pytest.raises(ValueError, match="candidates"):
        replace(ScoreConfig(), candidates=5)


def test_bandit_fitted_at_train_time(world):
    fit = json.loads((world["tower"] / "bandit_fit.json").read_text())
    assert fit["method"] == "ips" and fit["decisions"] > 0 and (world["tower"] / "bandit.npz").exists()


def test_demo_runs_every_stage(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--events", "4000", "--steps", "4", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "tensorboard --logdir" in text and str(out / "scored" / "scores") in text
    m = json.loads((out / "scored" / "manifest.json").read_text())
    assert m["sessions"]["in"] == m["sessions"]["scored"] > 0 and (out / "run" / "tb").is_dir()


def test_bench_score_smoke(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "bench_score.py"), "--sessions", "300",
                          "--items", "120", "--train-users", "150", "--train-steps", "2", "--recall-sessions", "50",
                          "--batch", "256", "--threads", "1", "--modes", "cpu", "--nprobe", "8", "--sweep", "8",
                          "--sweep-hnsw", "",
                          "--work", str(tmp_path)], capture_output=True, text=True, check=True, timeout=600)
    lines = out.stdout.splitlines()
    scored = [x for x in lines if x.startswith(("| exact |", "| faiss ivf nprobe=8 |")) and x.count("|") == 8]
    sweep = [x for x in lines if x.startswith(("| exact |", "| faiss ivf nprobe=8 |")) and x.count("|") == 4]
    assert len(scored) == 2 and len(sweep) == 2, out.stdout
