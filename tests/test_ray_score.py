"""The Ray Data scoring engine (`seqrec score --engine ray`) on a local Ray of 2 CPUs: the local engine's rows
and quarantine exactly, whatever the batching; the job finishes with fractional-CPU actors; users stay whole
through any split of the per-user table; clear errors for an unknown engine and a missing Ray."""

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray", reason="the Ray engine needs the ray extra: pip install -e '.[ray]'")

from seqrec.cli.main import build_parser, main  # noqa: E402
from seqrec.core.config import ConfigError  # noqa: E402
from seqrec.serve.factory import ENGINES, make_engine  # noqa: E402
from seqrec.serve.local import LocalEngine  # noqa: E402
from seqrec.serve.ray_engine import RayEngine, actor_cpus, nest_rows, unnest_rows  # noqa: E402

DEADLINE_S = 240  # a hung job (actors starving the read tasks) fails here instead of hanging the suite
SORT = ["user_id", "session_id", "session_start", "rank"]  # a session's key, then the rank


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray of 2 CPUs for the module (the engine joins a Ray already started and leaves it running)."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def inputs(score_world, tmp_path_factory) -> list[Path]:
    """The world's log split over two files (sessions in both) and a CSV with bad rows and duplicates."""
    d = tmp_path_factory.mktemp("ray_inputs")
    log = pq.read_table(score_world["log"])
    pq.write_table(log.take(pa.array(np.arange(0, log.num_rows, 2))), d / "a.parquet", row_group_size=97)
    pq.write_table(log.take(pa.array(np.arange(1, log.num_rows, 2))), d / "b.parquet", row_group_size=89)
    good = log.slice(0, 40).to_pandas()
    good["timestamp"] = good["timestamp"].map(lambda t: t.isoformat())
    text = good[["user_id", "session_id", "item_id", "event_type", "timestamp"]]
    bad = pd.DataFrame([
        {"user_id": "", "session_id": 1, "item_id": 3, "event_type": "view", "timestamp": "2024-01-02T00:00:00Z"},
        {"user_id": 5, "session_id": 1, "item_id": 3, "event_type": "teleport", "timestamp": "2024-01-02T00:00:00Z"},
        {"user_id": 5, "session_id": 1, "item_id": 3, "event_type": "view", "timestamp": "yesterday"},
    ])
    pd.concat([text, text.iloc[[0, 1, 2]], bad], ignore_index=True).to_csv(d / "c.csv", index=False)
    return [d / "a.parquet", d / "b.parquet", d / "c.csv"]


def cli_score(run: Path, inputs: list[Path], out: Path, *extra: str) -> dict:
    assert main(["score", "--run", str(run), "--input", *map(str, inputs), "--out", str(out), "--no-progress",
                 *extra]) == 0
    return json.loads((out / "manifest.json").read_text())


def with_deadline(fn, seconds: float = DEADLINE_S):
    """fn() in a thread; fails the test when it has not returned within `seconds`."""
    box: dict = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        pytest.fail(f"the Ray job did not finish within {seconds} s (starved read tasks?)")
    if "error" in box:
        raise box["error"]
    return box["value"]


def sorted_rows(out: Path) -> pa.Table:
    t = pq.read_table(out / "scores")
    return t.sort_by([(c, "ascending") for c in SORT if c in t.column_names]).combine_chunks()


def assert_same_rows(a: Path, b: Path) -> None:
    """Every column of every row equal (rows sorted by session key and rank; dictionaries compared as values)."""
    ta, tb = sorted_rows(a), sorted_rows(b)
    assert ta.column_names == tb.column_names and ta.num_rows == tb.num_rows > 0
    for name in ta.column_names:
        x, y = ta.column(name), tb.column(name)
        if pa.types.is_dictionary(x.type):
            x, y = x.cast(x.type.value_type), y.cast(y.type.value_type)
        assert x.type == y.type and x.equals(y), name


def assert_same_job(local: Path, far: Path) -> dict:
    """The Ray output `far` holds the local output's rows and quarantine exactly; returns its manifest."""
    a, m = (json.loads((p / "manifest.json").read_text()) for p in (local, far))
    assert m["engine"] == "ray" and a["engine"] == "local"
    for key in ("rows_read", "rows_kept", "rows_quarantined", "rows_excluded", "quarantine_reasons", "sessions",
                "rows", "config_hash", "model_version"):
        assert m[key] == a[key], key
    assert_same_rows(local, far)
    qa, qb = (pq.read_table(p / "quarantine.parquet") for p in (local, far))
    assert qa.equals(qb)  # the same rows in the same order: the same pass 1 and the same bucket order
    assert (far / "_COMPLETE").exists() and not (far / "_work").exists()
    parts = sorted(p.name for p in (far / "scores").iterdir())
    assert parts == sorted(Path(p).name for p in m["parts"]) and parts[0] == "part-00000.parquet"
    return m


# batches of 7 sessions (both engines): many batches over the 2 actors, and batches of 1 to 3 sessions at the
# ends of buckets, whose float32 products differ from larger batches' in the last bit (seqrec/ray_engine.py)
ARGS = ("--bucket-rows", "300", "--seed", "5", "--batch-size", "7")


def test_ray_equals_local_after_a_kill_then_reuses(score_world, inputs, local_ray, tmp_path, monkeypatch, capsys):
    run, out = score_world["tower"], tmp_path / "ray"
    cli_score(run, inputs, tmp_path / "local", *ARGS)

    def killed(self, *a, **k):
        raise RuntimeError("killed")

    monkeypatch.setattr(RayEngine, "_run", killed)  # dies after pass 1 and the batch files, before Ray
    with pytest.raises(RuntimeError, match="killed"):
        cli_score(run, inputs, out, *ARGS, "--engine", "ray")
    work = out / "_work"
    assert list((work / "batches").glob("*.parquet")) and list(work.glob("batched-*.json"))
    assert not list(work.glob("bucket-*.arrow")) and not (out / "_COMPLETE").exists()
    monkeypatch.undo()
    with_deadline(lambda: cli_score(run, inputs, out, *ARGS, "--engine", "ray"))
    m = assert_same_job(tmp_path / "local", out)
    assert m["resumed"] and m["quarantine_reasons"]["duplicate_event"] == 40 + 3  # c.csv: 40 logged events again,
    assert m["ray"]["actors"] == 2 and 0 < m["ray"]["cpus_per_actor"] < 1     # 3 of them twice
    assert m["ray"]["cpus_per_actor"] * m["ray"]["actors"] <= m["ray"]["cpus"] - 1  # a CPU left for reading
    t = m["timings"]
    assert ray.is_initialized()  # joined the module's Ray (started none of its own) and left it running
    assert {"ray_init_s", "actors_ready_s", "pipeline_s", "score_s", "total_s"} <= set(t)

    stamp = (out / "manifest.json").stat().st_mtime_ns
    capsys.readouterr()
    cli_score(run, inputs, out, *ARGS, "--engine", "ray")
    assert "re-used" in capsys.readouterr().out and (out / "manifest.json").stat().st_mtime_ns == stamp
    local = cli_score(run, inputs, out, *ARGS)  # another engine: another job, started afresh
    assert not local["reused"] and local["job_key"] != m["job_key"] and local["engine"] == "local"


def test_ray_equals_local_without_retrieval(score_world, inputs, local_ray, tmp_path):
    cli_score(score_world["plain"], inputs, tmp_path / "local", *ARGS)
    with_deadline(lambda: cli_score(score_world["plain"], inputs, tmp_path / "ray", *ARGS, "--engine", "ray"))
    m = assert_same_job(tmp_path / "local", tmp_path / "ray")
    assert not m["resumed"] and m["sessions"]["in"] == m["sessions"]["scored"] > 100


def test_empty_input_needs_no_ray(score_world, tmp_path):
    pq.write_table(pq.read_table(score_world["log"]).slice(0, 0), tmp_path / "empty.parquet")
    m = cli_score(score_world["tower"], [tmp_path / "empty.parquet"], tmp_path / "out", "--engine", "ray")
    assert m["sessions"] == {"in": 0, "scored": 0, "fallback": 0} and m["parts"] == [] and m["engine"] == "ray"
    assert (tmp_path / "out" / "_COMPLETE").exists()


def test_batches_travel_as_whole_rows():
    states = pa.table({"user_id": ["b", "a", "b", "c", "a"], "session_start": pa.array(range(5), pa.timestamp("us")),
                       "items": pa.array([[1], [2, 3], [], [4], [5, 6, 7]], pa.list_(pa.int64()))})
    nested = nest_rows(states, 2)
    assert nested.num_rows == 3 and [len(r) for r in nested.column("rows").to_pylist()] == [2, 2, 1]
    assert unnest_rows(nested).equals(states)
    assert unnest_rows(nested.slice(1, 1)).equals(states.slice(2, 2))  # one row: exactly that batch
    assert unnest_rows(nest_rows(states.slice(0, 0), 2)).num_rows == 0


def test_actor_cpus_leave_a_cpu_for_reading():
    assert actor_cpus(2, 2) == 0.5 and actor_cpus(16, 4) == 0.5
    assert actor_cpus(2, 4) == 0.25  # 4 actors on 2 CPUs: 1 CPU in all
    assert actor_cpus(1, 1) == 0.0  # a 1-CPU Ray: the actors ask for nothing
    assert all(actor_cpus(c, a) * a <= max(c - 1, 0) + 1e-9 for c in (1, 2, 3, 8) for a in (1, 2, 5, 16))


def test_engine_names_and_clear_errors(monkeypatch, tmp_path, capsys):
    engines = next(a for a in build_parser()._subparsers._group_actions[0].choices["score"]._actions
                   if a.dest == "engine")
    assert tuple(engines.choices) == ENGINES == ("local", "ray")
    assert isinstance(make_engine("local"), LocalEngine) and isinstance(make_engine("ray"), RayEngine)
    with pytest.raises(ConfigError, match="unknown engine 'spark'; available: local, ray"):
        make_engine("spark")
    with pytest.raises(ConfigError, match="--ray-address needs --engine ray"):
        make_engine("local", ray_address="auto")
    with pytest.raises(SystemExit):
        main(["score", "--run", "r", "--input", "x", "--out", str(tmp_path), "--engine", "spark"])
    assert "invalid choice: 'spark'" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    monkeypatch.delitem(sys.modules, "seqrec.serve.ray_engine")
    with pytest.raises(ConfigError, match=r"needs Ray Data .*pip install -c constraints.txt -e '.\[ray\]'"):
        make_engine("ray")


def test_the_local_engine_never_imports_ray(tmp_path):
    code = ("import sys; from seqrec.serve.factory import make_engine; make_engine('local'); "
            "import seqrec.cli.main; print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "False"


def test_bench_scale_score_section_smoke(local_ray, tmp_path):
    """experiments/bench_scale.py --sections score at tiny size: a row per engine, the same sessions, each figure
    (its `seqrec score --engine ray` joins the module's Ray by --ray-address, as on a cluster)."""
    root = Path(__file__).resolve().parents[1]
    address = ray.get_runtime_context().gcs_address
    out = subprocess.run([sys.executable, str(root / "experiments" / "bench_scale.py"), "--sections", "score",
                          "--work", str(tmp_path), "--events", "2000", "--items", "60", "--score-sessions", "300",
                          "--score-train-users", "100", "--score-train-steps", "1", "--ray-address", address,
                          "--json", str(tmp_path / "b.json")], capture_output=True, text=True, timeout=DEADLINE_S)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads((tmp_path / "b.json").read_text())["score"]["rows"]
    assert [r["engine"].split(",")[0] for r in rows] == ["local", "ray"] and rows[0]["sessions"] == rows[1]["sessions"]
    assert all({"sessions/s (scoring)", "start-up s", "wall s"} <= set(r) for r in rows)
