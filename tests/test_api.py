"""The notebook API (seqrec.prepare / train / evaluate / load_run / score): docs/api.md's example runs as written,
the root package stays lazy, and Run.score gives exactly the rows and counts `seqrec score` writes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from seqrec.datasets.readers import InputError

import seqrec
from seqrec.cli.main import main
from seqrec.core.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
KEY = ["user_id", "session_start", "rank"]


def docs_example() -> str:
    """The one ```python block of docs/api.md."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "api.md").read_text(), re.S)
    assert len(blocks) == 1
    return blocks[0]


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> dict:
    """docs/api.md's example executed in a fresh folder; its variables, and that folder."""
    import os

    here, folder = Path.cwd(), tmp_path_factory.mktemp("api")
    os.chdir(folder)
    try:
        names: dict = {}
        exec(compile(docs_example(), "docs/api.md", "exec"), names)
    finally:
        os.chdir(here)
    names["work"], names["log"] = folder / names["work"], folder / names["log"]
    return names


def rows_of(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows in one order, categoricals as plain values (Parquet parts and memory may order categories apart)."""
    frame = frame.sort_values(KEY).reset_index(drop=True)
    return frame.apply(lambda c: c.astype(object) if isinstance(c.dtype, pd.CategoricalDtype) else c)


def cli_score(run: Path, events: pd.DataFrame, out: Path, *extra: str) -> tuple[pd.DataFrame, dict]:
    """`seqrec score` on the events written as a Parquet file: its rows and manifest."""
    path = out.with_suffix(".parquet")
    events.to_parquet(path)
    assert main(["score", "--run", str(run), "--input", str(path), "--out", str(out), "--no-progress", *extra]) == 0
    return pd.read_parquet(out / "scores"), json.loads((out / "manifest.json").read_text())


def test_the_docs_example_runs_and_gives_what_it_says(example):
    log = pq.read_table(example["log"]).to_pandas()
    manifest = example["manifest"]
    assert manifest["rows_read"] == manifest["rows_kept"] == len(log)
    assert manifest["sessions"]["before_filter"] == len(log[["user_id", "session_id"]].drop_duplicates())
    assert sum(s["sessions"] for s in manifest["splits"].values()) == manifest["sessions"]["after_filter"]
    assert example["result"]["step"] == 6 and example["result"]["best_step"] == 6
    metrics = example["metrics"]
    assert {"test", "popularity", "recent", "checkpoint", "pipeline", "recall"} <= set(metrics)
    keys = {"hr@5", "ndcg@5", "hr@10", "ndcg@10", "hr@20", "ndcg@20", "count"}
    assert set(metrics["test"]["view"]) == keys | {"repeat", "explore"}  # and the same for each kind of target
    assert set(metrics["test"]["view"]["repeat"]) == set(metrics["test"]["view"]["explore"]) == keys
    assert json.loads((example["work"] / "run" / "metrics.json").read_text()) == metrics
    scores, recent = example["scores"], example["recent"]
    sessions = len(recent[["user_id", "session_id"]].drop_duplicates())
    assert scores.attrs["sessions"] == sessions and len(scores) == sessions * 5
    assert scores.groupby(["user_id", "session_id"])["rank"].apply(list).map([1, 2, 3, 4, 5].__eq__).all()
    assert ((scores["propensity"] > 0) & (scores["propensity"] <= 1)).all()
    assert scores.attrs["rows_read"] == scores.attrs["rows_kept"] == len(recent)
    assert set(scores["item_id"]) <= set(log["item_id"])


def test_importing_seqrec_imports_no_torch_and_the_api_is_there_on_first_use():
    code = ("import sys, seqrec, seqrec.datasets.schema\n"
            "assert 'torch' not in sys.modules and 'seqrec.api' not in sys.modules\n"
            "assert callable(seqrec.prepare) and 'torch' not in sys.modules\n"
            "assert all(callable(getattr(seqrec, n)) for n in ('train', 'evaluate', 'load_run', 'score'))\n"
            "assert {'prepare', 'score'} <= set(dir(seqrec))\n"
            "try:\n    seqrec.nothing\nexcept AttributeError:\n    print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "ok"


def test_run_score_equals_seqrec_score_rows_and_counts(example, tmp_path):
    """Shuffled events with bad rows (missing item, unknown event type), a repeated event and a user whose items
    are all unknown (a fallback session): the same rows as `seqrec score`, the same counts as its manifest."""
    events = pq.read_table(example["log"]).to_pandas()
    events = events[events["user_id"] < 40].sample(frac=1.0, random_state=0).reset_index(drop=True)
    events["item_id"] = events["item_id"].astype("Int64")
    events.loc[3, "item_id"] = None
    events.loc[5, "event_type"] = "teleport"
    stranger = events.iloc[[0, 1]].copy()
    stranger["user_id"], stranger["item_id"], stranger["session_id"] = 10_000, 99_999, 10_000
    stranger["timestamp"] = stranger["timestamp"].iloc[0] + pd.to_timedelta([0, 60], unit="s")
    events = pd.concat([events, events.iloc[[7]], stranger], ignore_index=True)
    run = seqrec.load_run(example["work"] / "run", top=4, seed=5)
    ours = run.score(events)
    cli, manifest = cli_score(example["work"] / "run", events, tmp_path / "cli", "--top", "4", "--seed", "5")
    pd.testing.assert_frame_equal(rows_of(ours), rows_of(cli), check_exact=True)
    for key in ("rows_read", "rows_kept", "rows_quarantined", "rows_excluded", "quarantine_reasons"):
        assert ours.attrs[key] == manifest[key], key
    assert ours.attrs["quarantine_reasons"] == {"duplicate_event": 1, "missing_value": 1, "unknown_event_type": 1}
    assert ours.attrs["sessions"] == manifest["sessions"]["scored"]
    assert ours.attrs["fallback"] == manifest["sessions"]["fallback"] == 1
    assert run.config_hash == manifest["config_hash"] and run.model_version == manifest["model_version"]


def test_sessions_cut_by_inactivity_and_a_pyarrow_table_score_as_the_cli_does(example, tmp_path):
    """Without session ids sessions are cut by the run's inactivity gap; an Arrow table scores like a DataFrame."""
    import pyarrow as pa

    events = pq.read_table(example["log"]).to_pandas()
    events = events[events["user_id"] % 7 == 0].drop(columns=["session_id"])
    ours = seqrec.score(example["work"] / "run", pa.Table.from_pandas(events), top=3, checkpoint="last")
    cli, manifest = cli_score(example["work"] / "run", events, tmp_path / "cli", "--top", "3", "--checkpoint", "last")
    pd.testing.assert_frame_equal(rows_of(ours), rows_of(cli), check_exact=True)
    assert "session_id" not in ours.columns and ours.attrs["sessions"] == manifest["sessions"]["scored"] > 0


def test_errors_raise_names_the_row_and_bad_settings_name_the_key(example):
    events = pq.read_table(example["log"]).to_pandas().head(30)
    run = seqrec.load_run(example["work"] / "run")
    bad = events.copy()
    bad.loc[4, "event_type"] = "teleport"
    with pytest.raises(InputError, match=r"row 5: event_type: unknown_event_type \('teleport'\)"):
        run.score(bad, errors="raise")
    assert len(run.score(bad)) == run.score(bad).attrs["sessions"] * 10  # quarantined, the rest scored
    with pytest.raises(ConfigError, match="unknown key score.topp"):
        seqrec.load_run(example["work"] / "run", topp=3)
    with pytest.raises(ConfigError, match="unknown key prepare.windoww"):
        seqrec.prepare(example["log"], example["work"] / "data2", windoww=3)
    with pytest.raises(TypeError, match="DataFrame or a pyarrow Table"):
        run.score(events.to_dict("list"))


def test_no_kept_event_scores_nothing(example):
    events = pq.read_table(example["log"]).to_pandas().head(5)
    events["event_type"] = "teleport"
    scores = seqrec.load_run(example["work"] / "run").score(events)
    assert len(scores) == 0 and scores.attrs["rows_quarantined"] == 5 and scores.attrs["sessions"] == 0
    assert np.array_equal(scores.columns, seqrec.load_run(example["work"] / "run").score(
        pq.read_table(example["log"]).to_pandas().head(5)).columns)
