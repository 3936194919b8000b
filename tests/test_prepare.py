"""End-to-end `prepare` on small hand-made logs: sessions, vocabulary, splits, manifest, re-use, errors."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from seqrec.datasets.adapters import source_spec
from seqrec.datasets.manifest import MANIFEST_KEYS
from seqrec.datasets.prepare import PrepareConfig, prepare
from seqrec.datasets.splits import assign_splits

from seqrec.cli.main import main

HEADER = "user_id,item_id,event_type,timestamp\n"


def _csv(path: Path, rows: list[str], header: str = HEADER) -> Path:
    path.write_text(header + "".join(r + "\n" for r in rows))
    return path


def _run(inputs, out, source="events", **cfg):
    opts = cfg.pop("opts", {})
    return prepare([Path(p) for p in inputs], lambda p: source_spec(source, p, **opts), PrepareConfig(**cfg), out)


def _log(tmp_path: Path) -> Path:
    rows = []
    # user 1: two sessions (3 events, a 2 h gap, then 4 events); user 2: one session of 2 (dropped at min 3)
    for k, t in enumerate([0, 60, 120]):
        rows.append(f"1,{100 + k},view,{1_700_000_000 + t}")
    for k, t in enumerate([7200, 7260, 7320, 7380]):
        rows.append(f"1,{200 + k},{'purchase' if k == 3 else 'view'},{1_700_000_000 + t}")
    rows += ["2,100,view,1700000000", "2,101,cart,1700000030"]
    return _csv(tmp_path / "log.csv", rows)


def test_sessions_vocab_transitions_and_manifest(tmp_path):
    m = _run([_log(tmp_path)], tmp_path / "out", seed=1)
    assert set(MANIFEST_KEYS) <= set(m)
    assert m["rows_read"] == 9 and m["rows_kept"] == 9 and m["rows_quarantined"] == 0
    assert m["events_by_type"] == {"view": 7, "like": 0, "cart": 1, "purchase": 1}
    assert m["sessions"] == {"before_filter": 3, "after_filter": 2, "dropped_short": 1, "events_in_dropped": 2,
                             "min_length": 3, "sampled_out": 0, "events_sampled_out": 0, "max_sessions": None}
    assert m["rows_excluded"] == 0 and m["excluded_by_event"] == {}
    assert m["items"] == 7 and m["catalogue_size"] == 9
    assert sum(s["sessions"] for s in m["splits"].values()) == 2
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["rows_read"] == 9

    vocab = pq.read_table(tmp_path / "out" / "vocab.parquet").to_pydict()
    assert vocab["index"][0] == 2 and min(vocab["index"]) == 2  # 0 = padding, 1 = OOV
    to_index = dict(zip(vocab["item_id"], vocab["index"]))
    ev = pq.read_table(tmp_path / "out" / "events.parquet").to_pandas()
    assert (ev["item"] == ev["item_id"].map(to_index)).all()
    long = ev[ev.session == ev.groupby("session").size().idxmax()].sort_values("position")
    assert long["item_id"].tolist() == [200, 201, 202, 203]


def test_min_item_count_maps_rare_items_to_oov(tmp_path):
    rows = [f"1,{i},view,{1_700_000_000 + 10 * k}" for k, i in enumerate([5, 5, 6, 5, 7])]
    m = _run([_csv(tmp_path / "l.csv", rows)], tmp_path / "out", min_item_count=2, split_fractions=(1.0, 0.0, 0.0))
    assert m["items"] == 1
    actions = np.load(tmp_path / "out" / "transitions" / "train" / "action.npy")
    assert actions.tolist() == [2, 2, 1, 2, 1]


def test_reuse_when_unchanged_and_rebuild_when_config_changes(tmp_path):
    log = _log(tmp_path)
    first = _run([log], tmp_path / "out")
    assert not first["reused"]
    assert _run([log], tmp_path / "out")["reused"]
    assert not _run([log], tmp_path / "out", min_session_length=2)["reused"]
    log.write_text(log.read_text() + "3,100,view,1700000000\n")
    again = _run([log], tmp_path / "out", min_session_length=2)
    assert not again["reused"] and again["rows_read"] == 10


def test_temporal_split_orders_sessions_by_start():
    codes = assign_splits(10, "temporal", (0.8, 0.1, 0.1), seed=0)
    assert codes.tolist() == [0] * 8 + [1, 2]
    rnd = assign_splits(1000, "random", (0.8, 0.1, 0.1), seed=3)
    assert np.bincount(rnd).tolist() == [800, 100, 100]
    assert (rnd == assign_splits(1000, "random", (0.8, 0.1, 0.1), seed=3)).all()
    assert (rnd != assign_splits(1000, "random", (0.8, 0.1, 0.1), seed=4)).any()


def test_generic_reader_headerless_tsv_with_positional_map_and_string_ids(tmp_path):
    path = tmp_path / "log.tsv"
    path.write_text("".join(f"u-{k % 2}\tsku-{k}\t2024-01-01T00:0{k}:00Z\tclick\n" for k in range(8)))
    m = _run([path], tmp_path / "out", min_session_length=1,
             opts={"columns": (("user", "0"), ("item", "1"), ("time", "2"), ("event", "3")), "header": False})
    assert m["rows_kept"] == 8 and m["events_by_type"]["view"] == 8
    assert m["id_types"] == {"user_id": "string", "item_id": "string"}
    sessions = pq.read_table(tmp_path / "out" / "sessions.parquet").to_pydict()
    assert sorted(sessions["user_id"]) == ["u-0", "u-1"]


def test_jsonl_and_parquet_inputs_give_the_same_events(tmp_path):
    base = _log(tmp_path)
    import pandas as pd

    df = pd.read_csv(base)
    df.to_json(tmp_path / "log.jsonl", orient="records", lines=True)
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), tmp_path / "log.parquet")
    results = []
    for name in ("log.csv", "log.jsonl", "log.parquet"):
        out = tmp_path / f"out-{name}"
        m = _run([tmp_path / name], out)
        results.append((m["events_by_type"], m["sessions"], m["splits"],
                        pq.read_table(out / "events.parquet").select(["item_id", "timestamp"]).to_pylist()))
    assert results[0] == results[1] == results[2]


@pytest.mark.parametrize("max_sessions", [None, 7])
def test_bucketed_run_equals_single_bucket(tmp_path, max_sessions):
    rng = np.random.default_rng(0)
    rows = [f"{u},{rng.integers(50)},view,{1_700_000_000 + 60 * k + 10_000 * u}"
            for u in range(40) for k in range(int(rng.integers(1, 8)))]
    log = _csv(tmp_path / "l.csv", rows)
    one = _run([log], tmp_path / "one", max_sessions=max_sessions)
    many = _run([log], tmp_path / "many", bucket_rows=20, max_sessions=max_sessions)
    assert many["sessions"] == one["sessions"] and many["items"] == one["items"]
    if max_sessions:
        assert sum(s["sessions"] for s in one["splits"].values()) == max_sessions

    def content(out):
        ev = pq.read_table(out / "events.parquet").to_pandas().sort_values(["session", "position"])
        return ev[["session", "position", "split", "user_id", "item_id", "item"]].reset_index(drop=True)

    assert one["splits"] == many["splits"]
    assert content(tmp_path / "one").equals(content(tmp_path / "many"))


def test_cli_prepare_prints_summary_and_writes_manifest(tmp_path, capsys):
    rc = main(["prepare", "--input", str(_log(tmp_path)), "--out", str(tmp_path / "out"),
               "--min-session-length", "2"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "rows read 9" in out and "sessions 3 -> 3" in out
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["config"]["min_session_length"] == 2


@pytest.mark.parametrize("args, message", [
    (["--input", "nope.csv"], "nope.csv: no such file"),
    (["--input", "log.csv", "--map", "user=uid,item=item_id,time=timestamp,event=event_type"], "no column 'uid'"),
    (["--input", "log.csv", "--map", "item=item_id,time=timestamp"], "lacks required field"),
    (["--input", "log.csv", "--event-map", "zap=nonsense"], "reward number"),
    (["--input", "log.csv", "--min-session-length", "0"], "min_session_length"),
])
def test_cli_errors_are_one_clear_line(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    _log(tmp_path)
    rc = main(["prepare", "--out", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_config_file_and_unknown_key(tmp_path, capsys):
    log = _log(tmp_path)
    cfg = tmp_path / "prep.toml"
    cfg.write_text('[prepare]\nmin_session_length = 1\nwindow = 4\nmap = "user=user_id,item=item_id,'
                   'time=timestamp,event=event_type"\n')
    assert main(["prepare", "--config", str(cfg), "--input", str(log), "--out", str(tmp_path / "o")]) == 0
    assert np.load(tmp_path / "o" / "transitions" / "train" / "state.npy").shape[1] == 4
    cfg.write_text("[prepare]\nmin_sesion_length = 1\n")
    assert main(["prepare", "--config", str(cfg), "--input", str(log), "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert "prepare.min_sesion_length" in err and "min_session_length" in err


def test_leave_one_out_split_cuts_each_session(tmp_path):
    m = _run([_log(tmp_path)], tmp_path / "out", split="loo")
    # two kept sessions of 3 and 4 events: test = last events, valid = the ones before, train = the rest
    assert m["splits"] == {"train": {"sessions": 2, "events": 3}, "valid": {"sessions": 2, "events": 2},
                           "test": {"sessions": 2, "events": 2}}
    t = tmp_path / "out" / "transitions"
    vocab = pq.read_table(tmp_path / "out" / "vocab.parquet").to_pydict()
    index = dict(zip(vocab["item_id"], vocab["index"]))
    test_actions = sorted(np.load(t / "test" / "action.npy").tolist())
    assert test_actions == sorted([index[102], index[203]])
    state = np.load(t / "test" / "state.npy")
    row = np.load(t / "test" / "action.npy").tolist().index(index[203])
    assert state[row, -3:].tolist() == [index[200], index[201], index[202]] and state[row, :-3].sum() == 0
    assert np.load(t / "train" / "done.npy").sum() == 2  # each session's train part ends once


def test_empty_optional_text_becomes_null_and_features_pass_through(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id,event_type,timestamp,nudge_id,propensity,segment\n"
                    "1,5,view,1700000000,urgency,0.25,young\n"
                    "1,6,view,1700000060,,,young\n"
                    "1,7,purchase,1700000120,,,\n")
    m = _run([path], tmp_path / "out")
    assert m["rows_kept"] == 3
    ev = pq.read_table(tmp_path / "out" / "events.parquet").to_pydict()
    assert ev["nudge_id"] == ["urgency", None, None]
    assert ev["propensity"] == [0.25, None, None]
    assert ev["segment"] == ["young", "young", None]


def test_rc15_clicks_and_buys_adapter(tmp_path):
    clicks = tmp_path / "yoochoose-clicks.dat"
    clicks.write_text("1,2014-04-07T10:51:09.277Z,214536502,0\n1,2014-04-07T10:54:09.868Z,214536500,0\n"
                      "1,2014-04-07T10:54:46.998Z,214536506,S\n2,2014-04-07T13:56:37.614Z,214662742,0\n")
    buys = tmp_path / "yoochoose-buys.dat"
    buys.write_text("1,2014-04-07T10:56:00.000Z,214536502,1046,1\n")
    m = _run([clicks, buys], tmp_path / "out", source="rc15", min_session_length=1)
    assert m["events_by_type"] == {"view": 4, "like": 0, "cart": 0, "purchase": 1}
    assert m["sessions"]["before_filter"] == 2 and m["items"] == 4
    ev = pq.read_table(tmp_path / "out" / "events.parquet").to_pandas().sort_values(["session", "position"])
    first = ev[ev.session_id == 1]
    assert first["event_type"].tolist() == ["view", "view", "view", "purchase"]
    assert first["value"].tolist()[-1] == 1046.0 and first["user_id"].eq(1).all()


def test_retailrocket_adapter(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("timestamp,visitorid,event,itemid,transactionid\n"
                    "1433221332117,257597,view,355908,\n1433221333000,257597,addtocart,355908,\n"
                    "1433221334000,257597,transaction,355908,4000\n1433221335000,257597,view,248676,\n")
    m = _run([path], tmp_path / "out", source="retailrocket", min_session_length=1)
    assert m["events_by_type"] == {"view": 2, "like": 0, "cart": 1, "purchase": 1}
    ev = pq.read_table(tmp_path / "out" / "events.parquet").to_pydict()
    assert min(t.timestamp() for t in ev["timestamp"]) == 1433221332.117


def test_auto_ids_stay_int_with_a_stray_value_and_adapters_default_to_int(tmp_path):
    rows = [f"{u},{i},view,{1_700_000_000 + 60 * i}" for u in range(20) for i in range(10)]
    rows[5] = "3,abc,view,1700000300"
    m = _run([_csv(tmp_path / "l.csv", rows)], tmp_path / "out")
    assert m["id_types"]["item_id"] == "int"
    assert m["quarantine_reasons"] == {"unparsable_value": 1}
    # fewer than 99% integers: the column is text and nothing is quarantined
    mixed = [f"{u},{'sku-' if i % 2 else ''}{i},view,{1_700_000_000 + 60 * i}" for u in range(5) for i in range(10)]
    m = _run([_csv(tmp_path / "m.csv", mixed)], tmp_path / "out2")
    assert m["id_types"]["item_id"] == "string" and m["rows_quarantined"] == 0
    # a named adapter knows its ids are integers
    taobao = tmp_path / "tb.csv"
    taobao.write_text("1,2,3,pv,1511658000\n1,x,3,pv,1511658060\n")
    m = _run([taobao], tmp_path / "out3", source="taobao", min_session_length=1)
    assert m["id_types"]["item_id"] == "int" and m["quarantine_reasons"] == {"unparsable_value": 1}


def test_jsonl_default_map_skips_a_malformed_first_line(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"user_id": 1, "item_id": 5, "event_type": "view", "timestamp": 1700000000\n'
                    '{"user_id": 1, "item_id": 6, "event_type": "view", "timestamp": 1700000060}\n')
    m = _run([path], tmp_path / "out", min_session_length=1)
    assert m["rows_read"] == 2 and m["quarantine_reasons"] == {"malformed_row": 1}
