"""Property tests: random small logs (with bad values, ties and duplicates) through `prepare`.

Expected results come from plain-Python reference code written here, never from the library: which rows
are quarantined and why, how sessions become transitions, how sessions are split.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from seqrec.datasets import sessions as S
from seqrec.datasets.adapters import source_spec
from seqrec.datasets.prepare import PrepareConfig, prepare
from seqrec.datasets.readers import InputError
from seqrec.datasets.schema import DEFAULT_REWARDS, EVENT_TYPES

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BASE_TIME = 1_700_000_000
FIELD_ORDER = ("user_id", "session_id", "item_id", "event_type", "timestamp")  # schema order
SPLITS = ("train", "valid", "test")
EVENT_CODE = {"view": 0, "pv": 0, "click": 0, "like": 1, "fav": 1, "cart": 2, "purchase": 3, "buy": 3}
TYPE_NAMES = EVENT_TYPES
REWARD = DEFAULT_REWARDS  # what prepare gives each type unless configured otherwise
INT64_MAX = 2**63 - 1

# ---------------------------------------------------------------- random logs


def _maybe_bad(good: st.SearchStrategy, bad: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly a good value, one time in eight a bad one."""
    return st.tuples(st.integers(0, 7), good, bad).map(lambda t: t[2] if t[0] == 0 else t[1])


BAD_IDS = st.sampled_from(["", "abc", "-1", "007", "9" * 25, "x" * 300])
ROW = st.fixed_dictionaries({
    "user_id": _maybe_bad(st.sampled_from(["1", "2", "3", "42", "9000000000"]), BAD_IDS),
    "session_id": _maybe_bad(st.sampled_from(["1", "2", "3"]), st.sampled_from(["abc", "-1"])),
    "item_id": _maybe_bad(st.integers(1, 12).map(str), BAD_IDS),
    "event_type": _maybe_bad(st.sampled_from(["view", "like", "cart", "purchase", "pv", "fav", "buy", "click",
                                              "PV", " Click "]), st.sampled_from(["", "bogus"])),
    # 5-minute steps: ties, and gaps over 30 minutes between far-apart steps
    "timestamp": _maybe_bad(st.integers(0, 40).map(lambda k: str(BASE_TIME + 300 * k)),
                            st.sampled_from(["", "nan", "-3", "abc", "1e20"])),
    "shape": st.sampled_from(["ok"] * 18 + ["short", "long"]),  # CSV: too few / too many fields
})


@st.composite
def log_files(draw, max_files: int = 3, max_rows: int = 30) -> dict:
    """One to `max_files` files of one log: rows, format, column order; session ids in all files or none."""
    with_sessions = draw(st.booleans())
    fields = [f for f in FIELD_ORDER if with_sessions or f != "session_id"]
    files = []
    for _ in range(draw(st.integers(1, max_files))):
        rows = draw(st.lists(ROW, min_size=1, max_size=max_rows))
        files.append({"rows": rows, "format": draw(st.sampled_from(["csv", "csv", "parquet", "jsonl"])),
                      "columns": draw(st.permutations(fields))})
    return {"fields": fields, "files": files}


def _write(log: dict, folder: Path) -> list[Path]:
    paths = []
    for i, f in enumerate(log["files"]):
        cols = f["columns"]
        path = folder / f"log{i}.{f['format']}"
        if f["format"] == "csv":
            lines = [",".join(cols)]
            for r in f["rows"]:
                values = [r[c] for c in cols]
                if r["shape"] == "short":
                    values = values[:2]
                elif r["shape"] == "long":
                    values = values + ["extra"]
                lines.append(",".join(values))
            path.write_text("\n".join(lines) + "\n")
        elif f["format"] == "jsonl":
            lines = [json.dumps({c: r[c] for c in cols}) if r["shape"] == "ok" else '{"user_id": '
                     for r in f["rows"]]
            path.write_text("\n".join(lines) + "\n")
        else:
            table = pa.table({c: pa.array([r[c] for r in f["rows"]], pa.string()) for c in cols})
            pq.write_table(table, path)
        paths.append(path)
    return paths


MAP_KEY = {"user_id": "user", "session_id": "session", "item_id": "item", "event_type": "event",
           "timestamp": "time"}


def _run(log: dict, paths: list[Path], out: Path, **cfg) -> dict:
    columns = tuple((MAP_KEY[f], f) for f in log["fields"])
    return prepare(paths, lambda p: source_spec("events", p, columns=columns), PrepareConfig(**cfg), out)


# ---------------------------------------------------------------- plain-Python reference validation


def _id_problem(v: str, id_type: str) -> str | None:
    if v == "":
        return "missing_value"
    if id_type == "string":
        return "id_out_of_range" if len(v.encode()) > 256 else None
    if re.fullmatch(r"0|[1-9][0-9]*", v):
        return None if int(v) <= INT64_MAX else "id_out_of_range"
    if re.fullmatch(r"-?[0-9]+", v) and not v.startswith("0"):
        return "id_out_of_range"
    return "unparsable_value"


def _event_problem(v: str) -> str | None:
    if v == "":
        return "missing_value"
    return None if v.strip().lower() in EVENT_CODE else "unknown_event_type"


def _time_problem(v: str) -> str | None:
    if v == "":
        return "missing_value"
    try:
        x = float(v)
    except ValueError:
        return "unparsable_value"
    if x != x:
        return "nan_time"
    if abs(x * 1e6) >= 9.2e18:
        return "time_out_of_range"
    if x < 0:
        return "negative_time"
    # one range for every time format: up to 2262-04-11T23:47:16.854775Z, the end of int64 nanoseconds
    return "time_out_of_range" if round(x * 1e6) > (2**63 - 1) // 1000 else None


def _row_problem(r: dict, fields: list[str], id_type: str, fmt: str = "csv") -> tuple[str, str] | None:
    """(field, reason) of the first failing field in schema order, or None for a good row."""
    if r["shape"] != "ok" and fmt != "parquet":
        return ("*", "wrong_column_count") if fmt == "csv" else ("*", "malformed_row")
    for f in FIELD_ORDER:
        if f not in fields:
            continue
        v = r[f]
        problem = (_event_problem(v) if f == "event_type" else _time_problem(v) if f == "timestamp"
                   else _id_problem(v, id_type))
        if problem:
            return f, problem
    return None


def _reference(log: dict, id_type: str) -> tuple[dict, dict]:
    """Expected quarantine {(file, row): (field, reason)} and kept rows {(file, row): event tuple}."""
    quarantined, kept, seen = {}, {}, set()
    for fi, f in enumerate(log["files"]):
        first_row = 2 if f["format"] == "csv" else 1  # CSV: the header is line 1; JSONL, Parquet: from 1
        for k, r in enumerate(f["rows"]):
            row = first_row + k
            problem = _row_problem(r, log["fields"], id_type, f["format"])
            if problem:
                quarantined[(fi, row)] = problem
                continue
            user = int(r["user_id"]) if id_type == "int" else r["user_id"]
            item = int(r["item_id"]) if id_type == "int" else r["item_id"]
            event = TYPE_NAMES[EVENT_CODE[r["event_type"].strip().lower()]]
            ts_us = int(r["timestamp"]) * 1_000_000
            key = (user, item, event, ts_us)
            if key in seen:
                quarantined[(fi, row)] = ("*", "duplicate_event")
                continue
            seen.add(key)
            kept[(fi, row)] = key
    return quarantined, kept


# ---------------------------------------------------------------- row accounting and quarantine


@SETTINGS
@given(log=log_files(), id_type=st.sampled_from(["int", "string"]))
def test_every_row_is_kept_or_quarantined_once(log, id_type):
    expected_q, expected_kept = _reference(log, id_type)
    with tempfile.TemporaryDirectory() as d:
        paths = _write(log, Path(d))
        if not expected_kept:  # nothing usable is an error, and the quarantine is still written
            with pytest.raises(InputError, match="nothing usable"):
                _run(log, paths, Path(d) / "out", min_session_length=1, id_type=id_type)
            q = pq.read_table(Path(d) / "out" / "quarantine.parquet").to_pylist()
            file_index = {str(p): i for i, p in enumerate(paths)}
            assert {(file_index[r["source_file"]], r["row"]): (r["field"], r["reason"]) for r in q} == expected_q
            assert len(q) == sum(len(f["rows"]) for f in log["files"])
            return
        m = _run(log, paths, Path(d) / "out", min_session_length=1, id_type=id_type)
        q = pq.read_table(Path(d) / "out" / "quarantine.parquet").to_pylist()
        ev = pq.read_table(Path(d) / "out" / "events.parquet")
        if ev.num_rows:
            ev = ev.set_column(ev.schema.get_field_index("timestamp"), "timestamp",
                               ev.column("timestamp").cast(pa.int64()))
        ev = ev.to_pylist()

    # accounting, overall and per input file
    n_rows = [len(f["rows"]) for f in log["files"]]
    assert m["rows_read"] == sum(n_rows)
    assert m["rows_kept"] + m["rows_quarantined"] == m["rows_read"]
    for fi, (f, n) in enumerate(zip(m["inputs"], n_rows, strict=True)):
        assert f["rows_read"] == n
        assert f["rows_kept"] + f["rows_quarantined"] == f["rows_read"]
        assert f["rows_quarantined"] == sum(1 for (i, _) in expected_q if i == fi)

    # the quarantine is exactly the reference's bad rows, each once, with the right field and reason
    file_index = {str(p): i for i, p in enumerate(paths)}
    got_q = [((file_index[r["source_file"]], r["row"]), (r["field"], r["reason"])) for r in q]
    assert len(got_q) == len(set(k for k, _ in got_q))
    assert dict(got_q) == expected_q
    assert m["quarantine_reasons"] == dict(Counter(reason for _, reason in expected_q.values()))

    # with min_session_length 1, every kept row is an event, with its parsed values
    got_kept = {(e["source_file"], e["source_row"]):
                (e["user_id"], e["item_id"], e["event_type"], e["timestamp"]) for e in ev}
    assert len(got_kept) == len(ev)
    assert got_kept == expected_kept
    assert m["rows_kept"] == len(expected_kept)
    assert m["events_by_type"] == {t: sum(1 for k in expected_kept.values() if k[2] == t) for t in TYPE_NAMES}


# ---------------------------------------------------------------- transitions rebuild sessions


def _load_transitions(out: Path, split: str) -> dict[str, np.ndarray]:
    names = ("state", "next_state", "action", "event", "reward", "done", "session")
    return {n: np.load(out / "transitions" / split / f"{n}.npy") for n in names}


def _session_items(out: Path) -> tuple[dict[int, list], dict]:
    """Per session, its (item, event type, split) in position order, from events.parquet."""
    ev = pq.read_table(out / "events.parquet").to_pylist()
    by_session: dict[int, list] = {}
    for e in sorted(ev, key=lambda e: (e["session"], e["position"])):
        by_session.setdefault(e["session"], []).append(e)
    for s, rows in by_session.items():
        assert [e["position"] for e in rows] == list(range(len(rows))), s
    return by_session, ev


def _clean_log(lengths: list[int]) -> dict:
    """One CSV file, user u has one session of lengths[u] view events a minute apart."""
    fields = ["user_id", "item_id", "event_type", "timestamp"]
    rows = [{"user_id": str(u + 1), "item_id": str(10 + k), "event_type": "view",
             "timestamp": str(BASE_TIME + 60 * k), "shape": "ok"}
            for u, n in enumerate(lengths) for k in range(n)]
    return {"fields": fields, "files": [{"rows": rows, "format": "csv", "columns": fields}]}


@SETTINGS
@given(log=log_files(), window=st.integers(1, 5), min_len=st.integers(1, 3),
       split=st.sampled_from(["random", "temporal", "loo"]), seed=st.integers(0, 2**16))
# leave-one-out with sessions shorter than 3: a session of 1 or 2 events has no train step
@example(log=_clean_log([1, 2, 3]), window=2, min_len=1, split="loo", seed=0)
def test_transitions_rebuild_each_session(log, window, min_len, split, seed):
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "out"
        if not _reference(log, "int")[1]:  # no row kept: an error, no transitions to check
            with pytest.raises(InputError, match="nothing usable"):
                _run(log, _write(log, Path(d)), out, min_session_length=min_len, id_type="int")
            return
        m = _run(log, _write(log, Path(d)), out, min_session_length=min_len, window=window, split=split,
                 seed=seed, id_type="int")
        by_session, _ = _session_items(out)
        trans = {s: _load_transitions(out, s) for s in SPLITS}

    assert all(len(rows) >= min_len for rows in by_session.values())
    covered = Counter()
    for split_name in SPLITS:
        t = trans[split_name]
        n = len(t["action"])
        assert m["splits"][split_name]["events"] == n
        assert t["state"].shape == t["next_state"].shape == (n, window)
        groups: dict[int, list[int]] = {}
        for i, s in enumerate(t["session"].tolist()):
            groups.setdefault(s, []).append(i)
        for s, idx in groups.items():
            assert idx == list(range(idx[0], idx[0] + len(idx))), "a session's steps are contiguous"
            events = by_session[s]
            steps = [e for e in events if e["split"] == split_name]
            assert [e["item"] for e in steps] == t["action"][idx].tolist()
            items = [e["item"] for e in events]
            for row, e in zip(idx, steps, strict=True):
                p = e["position"]
                before = items[max(0, p - window):p]
                state = [0] * (window - len(before)) + before
                assert t["state"][row].tolist() == state
                assert t["next_state"][row].tolist() == (state + [e["item"]])[1:]
                assert TYPE_NAMES[t["event"][row]] == e["event_type"]
                assert t["reward"][row] == np.float32(REWARD[e["event_type"]])
            assert t["done"][idx].tolist() == [False] * (len(idx) - 1) + [True]
            covered[s] += len(idx)
    # every event of every kept session is exactly one transition
    assert covered == Counter({s: len(rows) for s, rows in by_session.items()})
    # the manifest counts, per split, the sessions that have steps in it
    for split_name in SPLITS:
        with_steps = set(trans[split_name]["session"].tolist())
        assert m["splits"][split_name]["sessions"] == len(with_steps), split_name


# ---------------------------------------------------------------- splits


def _split_of_sessions(out: Path) -> list[tuple]:
    s = pq.read_table(out / "sessions.parquet").sort_by("session").to_pylist()
    return [(r["session"], r["user_id"], r.get("session_id"), r["start"], r["length"], r["split"]) for r in s]


def _sorted_events(out: Path) -> list[dict]:
    events = pq.read_table(out / "events.parquet").to_pylist()
    return sorted(events, key=lambda e: (e["session"], e["position"]))


def _transitions_by_session(out: Path) -> dict:
    result = {}
    for split in SPLITS:
        t = _load_transitions(out, split)
        order = np.argsort(t["session"], kind="stable")
        result[split] = {k: v[order] for k, v in t.items()}
    return result


@SETTINGS
@given(log=log_files(), seed=st.integers(0, 2**16), bucket_rows=st.integers(1, 7),
       split=st.sampled_from(["random", "temporal", "loo"]), max_sessions=st.none() | st.integers(1, 6))
def test_same_seed_same_split_whatever_the_buckets(log, seed, bucket_rows, split, max_sessions):
    assume(_reference(log, "int")[1])  # a log with no row kept is an error (test_every_row_is_kept_or_quarantined_once)
    cfg = {"seed": seed, "split": split, "min_session_length": 1, "id_type": "int", "max_sessions": max_sessions}
    with tempfile.TemporaryDirectory() as d:
        paths = _write(log, Path(d))
        outs = [Path(d) / name for name in ("a", "b", "buckets")]
        ms = [_run(log, paths, outs[0], **cfg), _run(log, paths, outs[1], **cfg),
              _run(log, paths, outs[2], **cfg, bucket_rows=bucket_rows)]
        sessions = [_split_of_sessions(o) for o in outs]
        vocabs = [pq.read_table(o / "vocab.parquet") for o in outs]
        events = [_sorted_events(o) for o in outs]
        quarantines = [sorted(tuple(r.values()) for r in pq.read_table(o / "quarantine.parquet").to_pylist())
                       for o in outs]
        transitions = [_transitions_by_session(o) for o in outs]

    assert not any(m["reused"] for m in ms)
    for k in (1, 2):
        assert sessions[k] == sessions[0]
        assert vocabs[k].equals(vocabs[0])
        assert events[k] == events[0]
        assert quarantines[k] == quarantines[0]
        assert ms[k]["splits"] == ms[0]["splits"]
        assert (ms[k]["sessions"], ms[k]["events_by_type"], ms[k]["items_seen"]) == \
            (ms[0]["sessions"], ms[0]["events_by_type"], ms[0]["items_seen"])
        for split_name in SPLITS:
            for name, arr in transitions[k][split_name].items():
                assert np.array_equal(arr, transitions[0][split_name][name]), (split_name, name)


@st.composite
def many_sessions(draw) -> dict:
    """A clean log of 30 to 60 users with 1 to 3 events each: at least 30 sessions."""
    rows = []
    fields = ["user_id", "item_id", "event_type", "timestamp"]
    for u in range(draw(st.integers(30, 60))):
        for k in range(draw(st.integers(1, 3))):
            item, jitter = draw(st.integers(1, 20)), draw(st.integers(0, 5))
            rows.append({"user_id": str(u + 1), "item_id": str(item), "event_type": "view",
                         "timestamp": str(BASE_TIME + 60 * k + jitter), "shape": "ok"})
    return {"fields": fields, "files": [{"rows": rows, "format": "csv", "columns": fields}]}


@settings(max_examples=30, deadline=None)
@given(log=many_sessions(), seeds=st.lists(st.integers(0, 2**31), min_size=2, max_size=2, unique=True))
def test_a_different_seed_gives_a_different_split(log, seeds):
    # 30 sessions split 24:3:3 can be cut in over 10^7 ways: two seeds agree by chance with p < 1e-7
    with tempfile.TemporaryDirectory() as d:
        paths = _write(log, Path(d))
        splits = []
        for s in seeds:
            out = Path(d) / f"seed{s}"
            m = _run(log, paths, out, seed=s, min_session_length=1)
            assert m["sessions"]["after_filter"] >= 30
            splits.append([r[-1] for r in _split_of_sessions(out)])
    assert splits[0] != splits[1]
    assert Counter(splits[0]) == Counter(splits[1])


@SETTINGS
@given(log=log_files(), seed=st.integers(0, 2**16), min_len=st.integers(1, 3),
       split=st.sampled_from(["random", "temporal"]))
def test_no_session_in_two_splits_and_sizes_follow_8_1_1(log, seed, min_len, split):
    assume(_reference(log, "int")[1])  # a log with no row kept is an error (test_every_row_is_kept_or_quarantined_once)
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "out"
        m = _run(log, _write(log, Path(d)), out, seed=seed, split=split, min_session_length=min_len,
                 id_type="int")
        sessions = _split_of_sessions(out)
        events = _sorted_events(out)
        trans = {s: set(np.load(out / "transitions" / s / "session.npy").tolist()) for s in SPLITS}

    n = len(sessions)
    assert n == m["sessions"]["after_filter"]
    assert [r[0] for r in sessions] == list(range(n))  # sessions numbered 0..n-1
    split_of = {r[0]: r[-1] for r in sessions}
    sizes = Counter(split_of.values())
    n_valid, n_test = round(0.1 * n), round(0.1 * n)
    assert (sizes["train"], sizes["valid"], sizes["test"]) == (n - n_valid - n_test, n_valid, n_test)
    assert {s: m["splits"][s]["sessions"] for s in SPLITS} == {s: sizes[s] for s in SPLITS}
    for e in events:
        assert e["split"] == split_of[e["session"]]
    assert not (trans["train"] & trans["valid"]) and not (trans["train"] & trans["test"])
    assert not (trans["valid"] & trans["test"])
    for s in SPLITS:
        assert trans[s] == {k for k, v in split_of.items() if v == s}
    if split == "temporal":  # the earliest sessions train, the latest test
        order = [{"train": 0, "valid": 1, "test": 2}[r[-1]] for r in sessions]
        assert order == sorted(order)


# ---------------------------------------------------------------- pure functions against references


@st.composite
def sessions_of_items(draw) -> tuple[list[int], list[int]]:
    lengths = draw(st.lists(st.integers(1, 8), max_size=10))
    items = [draw(st.integers(0, 50)) for _ in range(sum(lengths))]
    position = [p for n in lengths for p in range(n)]
    return items, position


@settings(max_examples=50, deadline=None)
@given(data=sessions_of_items(), width=st.integers(1, 12))
def test_windows_match_a_plain_python_reference(data, width):
    items, position = data
    got = S.windows(np.asarray(items, np.int32), np.asarray(position, np.int32), width)
    expected = []
    for t, p in enumerate(position):
        before = [items[t - j] for j in range(min(p, width), 0, -1)]
        expected.append([0] * (width - len(before)) + before)
    assert got.shape == (len(items), width) and got.dtype == np.int32
    assert got.tolist() == expected
    nxt = S.next_windows(got, np.asarray(items, np.int32))
    assert nxt.tolist() == [(w + [i])[1:] for w, i in zip(expected, items, strict=True)]


@settings(max_examples=50, deadline=None)
@given(rows=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 3), st.integers(0, 2)),
                     max_size=60))
def test_duplicate_mask_matches_a_set_based_reference(rows):
    user, ts, item, event = (np.asarray([r[k] for r in rows], np.int64) for k in range(4))
    order = S.event_order(user, ts)
    assert order.tolist() == sorted(range(len(rows)), key=lambda i: (rows[i][0], rows[i][1]))  # stable
    u, t, i, e = user[order], ts[order], item[order], event[order]
    got = S.duplicate_mask(u, t, i, e)
    seen, expected = set(), []
    for k in order.tolist():
        key = rows[k]
        expected.append(key in seen)
        seen.add(key)
    assert got.tolist() == expected


@settings(max_examples=50, deadline=None)
@given(rows=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 100), st.integers(0, 2)), max_size=60),
       gap=st.integers(1, 50), with_sessions=st.booleans())
def test_session_starts_match_a_reference(rows, gap, with_sessions):
    rows = sorted(rows, key=lambda r: (r[0], r[1]))
    user, ts, sid = (np.asarray([r[k] for r in rows], np.int64) for k in range(3))
    got = S.session_starts(user, ts, sid if with_sessions else None, gap)
    expected = []
    for k, r in enumerate(rows):
        if k == 0 or r[0] != rows[k - 1][0]:
            expected.append(True)
        elif with_sessions:
            expected.append(r[2] != rows[k - 1][2])
        else:
            expected.append(r[1] - rows[k - 1][1] > gap)
    assert got.tolist() == expected
