"""`prepare` features the papers' preprocessing needs: dropping an event type (counted, never silent),
sampling exactly N sessions (seeded, bucket-independent), and one session per user (an infinite gap).

Expected values come from the hand-made logs or from plain-Python references written here.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from seqrec.datasets.adapters import source_spec
from seqrec.datasets.manifest import MANIFEST_KEYS
from seqrec.datasets.prepare import PrepareConfig, prepare
from seqrec.datasets.readers import BadRows, InputError, RawBatch
from seqrec.datasets.schema import DEFAULT_REWARDS
from seqrec.datasets.splits import sample_sessions
from seqrec.datasets.validate import EventTypes, Validator

from seqrec.cli.main import main

HEADER = "user_id,item_id,event_type,timestamp\n"
BASE = 1_700_000_000
DROP_TRANSACTIONS = (("transaction", "drop"),)


def _csv(path: Path, rows: list[str], header: str = HEADER) -> Path:
    path.write_text(header + "".join(r + "\n" for r in rows))
    return path


def _run(inputs, out, source="events", **cfg) -> dict:
    opts = cfg.pop("opts", {})
    return prepare([Path(p) for p in inputs], lambda p: source_spec(source, p, **opts), PrepareConfig(**cfg), out)


# ---------------------------------------------------------------- dropping an event type


def test_validator_excludes_good_dropped_rows_and_quarantines_bad_ones():
    types = EventTypes.build((("transaction", "drop"), ("basket", "cart")), DEFAULT_REWARDS)
    assert types.dropped == ("transaction",) and "transaction" not in types.names
    validate = Validator("f.csv", 0, types, id_types={"user_id": "int", "item_id": "int"})
    table = pa.table({"user_id": ["1", "2", "", "4", "5"], "item_id": ["10", "11", "12", "13", "14"],
                      "event_type": ["view", "transaction", "transaction", " Transaction ", "basket"],
                      "timestamp": ["1", "2", "3", "4", "5"]})
    bad = BadRows()
    kept = validate(RawBatch(table, np.arange(2, 7, dtype=np.int64), BadRows()), bad)
    assert kept.column("user_id").to_pylist() == [1, 5]  # rows 3 and 5 excluded, row 4 quarantined
    assert kept.column("event").to_pylist() == [0, 2]
    assert list(zip(bad.rows, bad.fields, bad.reasons)) == [(4, "user_id", "missing_value")]
    assert validate.excluded.tolist() == [2]
    assert kept.num_rows + len(bad) + int(validate.excluded.sum()) == table.num_rows


def test_event_map_errors_name_drop():
    with pytest.raises(ValueError, match="'drop' to exclude"):
        EventTypes.build((("x", "dorp"),), DEFAULT_REWARDS)


def _drop_logs(tmp_path: Path) -> list[Path]:
    a = _csv(tmp_path / "a.csv", [
        "1,10,view,1700000000",          # line 2: kept
        "1,11,transaction,1700000060",   # line 3: excluded
        "1,12,view,1700000120",          # line 4: kept
        "1,13,view,1700000180",          # line 5: kept
        "2,10,transaction,abc",          # line 6: bad time -> quarantined, not excluded
        "2,x,transaction,1700000000",    # line 7: bad item -> quarantined, not excluded
        "2,11,transaction,1700000300",   # line 8: excluded
    ])
    b = _csv(tmp_path / "b.csv", [
        "3,10,view,1700000000",          # line 2: kept
        "3,10,view,1700000000",          # line 3: duplicate -> quarantined
        "3,12,Transaction,1700000060",   # line 4: excluded (names match case-insensitively)
        "3,12,transaction,1700000060",   # line 5: a repeated dropped row is excluded too, not a duplicate
        "3,13,view,1700000120",          # line 6: kept
        "3,14,cart,1700000180",          # line 7: kept
    ])
    return [a, b]


def test_dropped_rows_are_counted_per_file_and_by_event(tmp_path):
    m = _run(_drop_logs(tmp_path), tmp_path / "out", min_session_length=1, id_type="int",
             opts={"event_map": DROP_TRANSACTIONS})
    assert [(f["rows_read"], f["rows_kept"], f["rows_quarantined"], f["rows_excluded"]) for f in m["inputs"]] == \
        [(7, 3, 2, 2), (6, 3, 1, 2)]
    assert (m["rows_read"], m["rows_kept"], m["rows_quarantined"], m["rows_excluded"]) == (13, 6, 3, 4)
    assert m["excluded_by_event"] == {"transaction": 4}
    assert m["quarantine_reasons"] == {"duplicate_event": 1, "unparsable_value": 2}
    assert m["events_by_type"] == {"view": 5, "like": 0, "cart": 1, "purchase": 0}
    assert [t["name"] for t in m["event_types"]] == ["view", "like", "cart", "purchase"]
    q = pq.read_table(tmp_path / "out" / "quarantine.parquet").to_pylist()
    assert sorted((Path(r["source_file"]).name, r["row"], r["field"]) for r in q) == \
        [("a.csv", 6, "timestamp"), ("a.csv", 7, "item_id"), ("b.csv", 3, "*")]
    ev = pq.read_table(tmp_path / "out" / "events.parquet").to_pydict()
    assert sorted(zip(ev["source_file"], ev["source_row"])) == [(0, 2), (0, 4), (0, 5), (1, 2), (1, 6), (1, 7)]


def test_strict_mode_does_not_treat_dropped_rows_as_errors(tmp_path):
    clean = _csv(tmp_path / "clean.csv", ["1,10,view,1700000000", "1,11,transaction,1700000060",
                                          "1,12,view,1700000120", "1,13,view,1700000180"])
    m = _run([clean], tmp_path / "out", strict=True, opts={"event_map": DROP_TRANSACTIONS})
    assert m["rows_excluded"] == 1 and m["rows_quarantined"] == 0 and m["rows_kept"] == 3
    bad = _csv(tmp_path / "bad.csv", ["1,10,transaction,1700000000", "1,11,transaction,soon"])
    with pytest.raises(InputError, match=r"bad.csv: row 3: field 'timestamp': unparsable_value"):
        _run([bad], tmp_path / "out2", strict=True, opts={"event_map": DROP_TRANSACTIONS})


ROW = st.fixed_dictionaries({
    "user": st.sampled_from(["1", "2", "3"]),
    "item": st.sampled_from(["1", "2", "3"]),
    "event": st.sampled_from(["view", "addtocart", "transaction", "Transaction", "bogus"]),
    "time": st.sampled_from([str(BASE), str(BASE + 60), str(BASE + 120), "abc", ""]),
})
CANONICAL = {"view": "view", "addtocart": "cart"}


def _reference(files: list[list[dict]]) -> list[dict[str, int]]:
    """Per file: rows read / quarantined (bad or duplicate) / excluded (good transaction) / kept."""
    seen: set[tuple] = set()
    out = []
    for rows in files:
        c = Counter(read=len(rows))
        for r in rows:
            event = r["event"].strip().lower()
            if not r["time"].isdigit() or event == "bogus":
                c["quarantined"] += 1
            elif event == "transaction":
                c["excluded"] += 1
            elif (key := (r["user"], r["item"], CANONICAL[event], r["time"])) in seen:
                c["quarantined"] += 1
            else:
                seen.add(key)
                c["kept"] += 1
        out.append(c)
    return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files=st.lists(st.lists(ROW, min_size=1, max_size=15), min_size=1, max_size=2))
def test_kept_plus_quarantined_plus_excluded_is_read(files):
    expected = _reference(files)
    with tempfile.TemporaryDirectory() as d:
        paths = [_csv(Path(d) / f"log{i}.csv", [f"{r['user']},{r['item']},{r['event']},{r['time']}" for r in rows])
                 for i, rows in enumerate(files)]
        if not sum(w["kept"] for w in expected):  # nothing usable is an error naming every file's counts
            with pytest.raises(InputError, match="nothing usable") as err:
                _run(paths, Path(d) / "out", min_session_length=1, id_type="int",
                     opts={"event_map": DROP_TRANSACTIONS})
            for p, w in zip(paths, expected, strict=True):
                assert (f"{p}: {w['read']} rows read, 0 kept, {w['quarantined']} quarantined, "
                        f"{w['excluded']} excluded" if w["read"] else f"{p}: no rows") in str(err.value)
            return
        m = _run(paths, Path(d) / "out", min_session_length=1, id_type="int", opts={"event_map": DROP_TRANSACTIONS})
    for got, want in zip(m["inputs"], expected, strict=True):
        assert (got["rows_read"], got["rows_kept"], got["rows_quarantined"], got["rows_excluded"]) == \
            (want["read"], want["kept"], want["quarantined"], want["excluded"])
        assert got["rows_kept"] + got["rows_quarantined"] + got["rows_excluded"] == got["rows_read"]
    assert m["rows_excluded"] == sum(w["excluded"] for w in expected)
    assert m["excluded_by_event"] == {"transaction": m["rows_excluded"]}
    assert sum(m["events_by_type"].values()) == m["rows_kept"]


# ---------------------------------------------------------------- sampling sessions


def _sessions_log(tmp_path: Path, n_users: int = 30) -> Path:
    """User u: one session of 1 + u % 6 events a minute apart (sessions start u minutes apart); the first
    item of each session is unique to it, the others are shared."""
    rows = []
    for u in range(n_users):
        for k in range(1 + u % 6):
            item = 1000 + u if k == 0 else (u + k) % 9
            event = "purchase" if k == 3 else "view"
            rows.append(f"{u},{item},{event},{BASE + 60 * u + 60 * k}")
    return _csv(tmp_path / "sessions.csv", rows)


def _sampled_users(out: Path) -> list[int]:
    return pq.read_table(out / "sessions.parquet").sort_by("session").column("user_id").to_pylist()


def test_max_sessions_keeps_exactly_n_and_builds_everything_from_the_sample(tmp_path):
    log = _sessions_log(tmp_path)
    m = _run([log], tmp_path / "out", max_sessions=8, seed=3)
    out = tmp_path / "out"
    # 30 sessions of lengths 1..6: 20 have 3+ events (90 events), 10 are short (15 events)
    s = m["sessions"]
    assert (s["before_filter"], s["after_filter"], s["dropped_short"], s["events_in_dropped"]) == (30, 20, 10, 15)
    assert (s["sampled_out"], s["max_sessions"]) == (12, 8)
    sessions = pq.read_table(out / "sessions.parquet").sort_by("session").to_pydict()
    assert sessions["session"] == list(range(8)) and len(set(sessions["user_id"])) == 8
    assert sessions["start"] == sorted(sessions["start"])
    assert all(u % 6 >= 2 for u in sessions["user_id"])  # only sessions that passed the length filter
    sample_events = sum(1 + u % 6 for u in sessions["user_id"])
    assert s["events_sampled_out"] == 90 - sample_events
    assert sum(v["sessions"] for v in m["splits"].values()) == 8
    assert sum(v["events"] for v in m["splits"].values()) == sample_events == sum(m["events_by_type"].values())
    assert m["rows_kept"] == s["events_in_dropped"] + s["events_sampled_out"] + sample_events

    ev = pq.read_table(out / "events.parquet").to_pandas()
    assert set(ev["user_id"]) == set(sessions["user_id"]) and len(ev) == sample_events
    assert m["events_by_type"] == {"view": int((ev.event_type == "view").sum()), "like": 0, "cart": 0,
                                   "purchase": int((ev.event_type == "purchase").sum())}
    vocab = pq.read_table(out / "vocab.parquet").to_pydict()
    assert dict(zip(vocab["item_id"], vocab["count"])) == dict(Counter(ev["item_id"].tolist()))
    left_out = {1000 + u for u in range(30) if u % 6 >= 2 and u not in sessions["user_id"]}  # their own items
    assert len(left_out) == 12 and not left_out & set(vocab["item_id"])
    assert m["items"] == m["items_seen"] == len(vocab["item_id"]) == ev["item_id"].nunique()
    actions = np.concatenate([np.load(out / "transitions" / k / "action.npy") for k in ("train", "valid", "test")])
    assert len(actions) == sample_events and actions.min() >= 2  # every sampled item is in the vocabulary


def test_sample_is_seeded(tmp_path):
    log = _sessions_log(tmp_path)
    first = _sampled_users(_out(tmp_path, log, "a", max_sessions=8, seed=1))
    again = _sampled_users(_out(tmp_path, log, "b", max_sessions=8, seed=1))
    other = _sampled_users(_out(tmp_path, log, "c", max_sessions=8, seed=2))
    assert first == again and set(first) != set(other)


def _out(tmp_path: Path, log: Path, name: str, **cfg) -> Path:
    _run([log], tmp_path / name, **cfg)
    return tmp_path / name


def test_max_sessions_at_least_the_sessions_keeps_all_and_counts_session_events(tmp_path):
    log = _sessions_log(tmp_path)
    m = _run([log], tmp_path / "out", max_sessions=100)
    assert m["sessions"]["sampled_out"] == m["sessions"]["events_sampled_out"] == 0
    assert sum(v["sessions"] for v in m["splits"].values()) == 20
    # with max_sessions the event counts describe the sessions written, not the short ones left out
    assert sum(m["events_by_type"].values()) == 90 == m["rows_kept"] - m["sessions"]["events_in_dropped"]
    plain = _run([log], tmp_path / "plain")
    assert plain["sessions"]["max_sessions"] is None and sum(plain["events_by_type"].values()) == 105
    assert plain["items"] == m["items"] and plain["splits"] == m["splits"]


def test_changing_max_sessions_rebuilds_and_the_same_reuses(tmp_path):
    log = _sessions_log(tmp_path)
    assert not _run([log], tmp_path / "out", max_sessions=5)["reused"]
    assert _run([log], tmp_path / "out", max_sessions=5)["reused"]
    again = _run([log], tmp_path / "out", max_sessions=6)
    assert not again["reused"] and sum(v["sessions"] for v in again["splits"].values()) == 6


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 40), k=st.integers(1, 40), seed=st.integers(0, 2**32 - 1))
def test_sample_sessions_draws_exactly_k_distinct_ranks(n, k, seed):
    chosen = sample_sessions(n, k, seed)
    if n <= k:
        assert chosen is None
        return
    assert len(chosen) == k and len(set(chosen.tolist())) == k
    assert chosen.min() >= 0 and chosen.max() < n and (np.diff(chosen) > 0).all()
    assert np.array_equal(chosen, sample_sessions(n, k, seed))


def test_sample_sessions_is_uniform():
    hits = np.zeros(10)
    for seed in range(3000):
        hits[sample_sessions(10, 3, seed)] += 1
    assert np.abs(hits / 3000 - 0.3).max() < 0.04  # about 5 standard deviations
    assert sample_sessions(10, None, 0) is None


def test_manifest_keeps_every_key_and_adds_the_new_ones(tmp_path):
    m = _run([_sessions_log(tmp_path)], tmp_path / "out", max_sessions=4, opts={"event_map": DROP_TRANSACTIONS})
    assert set(MANIFEST_KEYS) <= set(m)
    for key in ("rows_excluded", "excluded_by_event", "catalogue_size", "items_seen", "event_types", "id_types",
                "timings", "reused", "format_version", "cache_key"):
        assert key in m
    assert set(m["sessions"]) == {"before_filter", "after_filter", "dropped_short", "events_in_dropped",
                                  "min_length", "sampled_out", "events_sampled_out", "max_sessions"}
    assert set(m["inputs"][0]) == {"path", "sha256", "bytes", "format", "rows_read", "rows_kept",
                                   "rows_quarantined", "rows_excluded"}
    assert m["config"]["max_sessions"] == 4 and m["excluded_by_event"] == {"transaction": 0}


def test_max_sessions_must_be_positive():
    with pytest.raises(ValueError, match="max_sessions"):
        PrepareConfig(max_sessions=0)
    with pytest.raises(ValueError, match="max_sessions"):
        PrepareConfig(max_sessions=True)


# ---------------------------------------------------------------- one session per user


def test_infinite_gap_gives_one_session_per_user(tmp_path):
    day = 86_400
    rows = [f"{u},{10 + k},view,{BASE + k * day + u}" for u in range(3) for k in range(4)]
    log = _csv(tmp_path / "days.csv", rows)
    assert _run([log], tmp_path / "gap", min_session_length=1)["sessions"]["before_filter"] == 12
    for gap in (float("inf"), 1e300, 1e12):
        m = _run([log], tmp_path / f"gap{gap}", min_session_length=1, session_gap_minutes=gap)
        assert m["sessions"]["before_filter"] == 3, gap
    text = (tmp_path / "gapinf" / "manifest.json").read_text()
    strict = json.loads(text, parse_constant=lambda c: pytest.fail(f"manifest.json holds {c}"))
    assert strict["config"]["session_gap_minutes"] == "inf"
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="session_gap_minutes"):
            PrepareConfig(session_gap_minutes=bad)


# ---------------------------------------------------------------- the command line


def test_cli_flags_drop_sample_and_infinite_gap(tmp_path, capsys):
    rows = [f"{u},{10 + k},{'transaction' if k == 1 else 'view'},{BASE + 7200 * k + u}" for u in range(5)
            for k in range(5)]
    log = _csv(tmp_path / "log.csv", rows)
    rc = main(["prepare", "--input", str(log), "--out", str(tmp_path / "out"), "--event-map", "transaction=drop",
               "--session-gap-minutes", "inf", "--max-sessions", "2", "--seed", "4"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "excluded 5" in text and "transaction 5" in text and "sampled 2 of 5 sessions" in text
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["sessions"]["after_filter"] == 5 and sum(v["sessions"] for v in m["splits"].values()) == 2
    assert main(["prepare", "--input", str(log), "--out", str(tmp_path / "o2"), "--max-sessions", "0"]) == 2
    assert "max_sessions" in capsys.readouterr().err


def test_config_table_sets_source_event_map_gap_and_sample(tmp_path, capsys):
    events = tmp_path / "events.csv"
    events.write_text("timestamp,visitorid,event,itemid,transactionid\n" + "".join(
        f"{1433221332000 + 3_600_000 * k},{v},{['view', 'addtocart', 'transaction'][k % 3]},{k},"
        f"{'7' if k % 3 == 2 else ''}\n" for v in range(6) for k in range(6)))
    cfg = tmp_path / "prep.toml"
    cfg.write_text('[prepare]\nsource = "retailrocket"\nevent_map = { addtocart = "purchase", transaction = "drop" }'
                   "\nsession_gap_minutes = inf\nmax_sessions = 4\n")
    assert main(["prepare", "--config", str(cfg), "--input", str(events), "--out", str(tmp_path / "o")]) == 0
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert m["config"]["source"] == "retailrocket" and m["excluded_by_event"] == {"transaction": 12}
    assert m["events_by_type"] == {"view": 8, "like": 0, "cart": 0, "purchase": 8}  # 4 visitors x (2 + 2)
    assert m["sessions"]["after_filter"] == 6 and m["sessions"]["sampled_out"] == 2
    cfg.write_text('[prepare]\nsource = "nope"\n')
    assert main(["prepare", "--config", str(cfg), "--input", str(events), "--out", str(tmp_path / "o2")]) == 2
    assert "prepare.source 'nope'" in capsys.readouterr().err
