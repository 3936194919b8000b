"""`seqrec prepare` on the real public logs in the shared data folder (outside the repo; skipped when absent).

Every expected figure is computed independently here with pandas from the raw file, never taken from the
library. The corrupted-copy tests inject one bad row of each kind at known line numbers into a tmp copy of
the Taobao slice and check that exactly those rows are quarantined and everything else is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from seqrec.datasets.adapters import source_spec
from seqrec.datasets.readers import read_file
from seqrec.datasets.schema import REASONS

from seqrec.cli.main import main

TAOBAO = ("taobao_userbehavior_slice", "*.csv")
YOOCHOOSE = ("yoochoose_rsc15_clicks_100k_sessionrec", "yoochoose-clicks-100k_train_full.txt")
MOVIELENS = ("movielens_100k_recbole", "ml-100k.inter")
TAOBAO_COLUMNS = ["user", "item", "category", "behavior", "ts"]
TAOBAO_TYPES = {"pv": "view", "fav": "like", "cart": "cart", "buy": "purchase"}
SPLITS = ("train", "valid", "test")
TRANSITION_FILES = ("state", "next_state", "action", "event", "reward", "done", "session")


def _prepare(capsys, *args: str) -> tuple[dict, Path]:
    """Run `seqrec prepare ARGS` through the CLI; returns the manifest and the --out folder."""
    argv = ["prepare", *args]
    rc = main(argv)
    captured = capsys.readouterr()
    assert rc == 0, f"seqrec {' '.join(argv)} exited {rc}: {captured.err}"
    out = Path(argv[argv.index("--out") + 1])
    manifest = json.loads((out / "manifest.json").read_text())
    return manifest, out


def _check_row_accounting(m: dict, paths: list[Path]) -> None:
    assert m["rows_kept"] + m["rows_quarantined"] == m["rows_read"]
    assert [Path(f["path"]) for f in m["inputs"]] == paths
    for f, p in zip(m["inputs"], paths, strict=True):
        assert f["rows_kept"] + f["rows_quarantined"] == f["rows_read"], f
        assert f["bytes"] == p.stat().st_size
        assert f["sha256"] == hashlib.sha256(p.read_bytes()).hexdigest()
    assert sum(m["quarantine_reasons"].values()) == m["rows_quarantined"]
    assert set(m["quarantine_reasons"]) <= set(REASONS)


def _quarantine(out: Path) -> pd.DataFrame:
    return pq.read_table(out / "quarantine.parquet").to_pandas()


def _taobao_frame(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, header=None, names=TAOBAO_COLUMNS, dtype={"behavior": str})


# ---------------------------------------------------------------- the clean real files


def test_taobao_events_by_type_match_raw_counts(shared_file, tmp_path, capsys):
    path = shared_file(*TAOBAO)
    raw = _taobao_frame(path)
    expected = raw["behavior"].map(TAOBAO_TYPES)
    assert expected.notna().all(), "the raw slice has a behavior type outside pv/fav/cart/buy"
    counts = expected.value_counts().to_dict()
    expected_dups = int(raw.duplicated(subset=["user", "item", "behavior", "ts"]).sum())

    m, out = _prepare(capsys, "--source", "taobao", "--input", str(path), "--out", str(tmp_path / "out"))

    assert m["rows_read"] == len(raw) == 110_300
    assert m["events_by_type"] == {t: counts.get(t, 0) for t in ("view", "like", "cart", "purchase")}
    assert m["rows_quarantined"] == expected_dups == 0
    _check_row_accounting(m, [path])
    assert len(_quarantine(out)) == 0
    # sessions are cut per user (30-minute gap); before the length filter there are at least as many as users
    assert m["sessions"]["before_filter"] >= raw["user"].nunique()
    assert m["items_seen"] <= raw["item"].nunique()


def test_sessionrec_sessions_items_and_the_one_duplicate(shared_file, tmp_path, capsys):
    path = shared_file(*YOOCHOOSE)
    raw = pd.read_csv(path, sep="\t", dtype={"Time": str})
    assert list(raw.columns) == ["SessionId", "ItemId", "Time"]
    dup = raw.duplicated(keep="first")
    assert dup.sum() == 1, "the raw file is expected to hold exactly one exact duplicate row"
    dup_line = int(raw.index[dup][0]) + 2  # 0-based data row -> 1-based line, the header being line 1

    m, out = _prepare(capsys, "--source", "sessionrec", "--min-session-length", "1", "--input", str(path),
                      "--out", str(tmp_path / "out"))

    assert m["rows_read"] == len(raw) == 70_278
    assert m["sessions"]["before_filter"] == raw["SessionId"].nunique() == 17_794
    assert m["sessions"]["after_filter"] == m["sessions"]["before_filter"]
    assert m["items"] == raw["ItemId"].nunique() == 2_933
    assert m["rows_quarantined"] == 1 and m["quarantine_reasons"] == {"duplicate_event": 1}
    assert m["events_by_type"] == {"view": len(raw) - 1, "like": 0, "cart": 0, "purchase": 0}
    _check_row_accounting(m, [path])
    q = _quarantine(out)
    assert q[["source_file", "row", "field", "reason"]].values.tolist() == [
        [str(path), dup_line, "*", "duplicate_event"]]
    sessions = pq.read_table(out / "sessions.parquet").to_pandas()
    assert sorted(sessions["session_id"]) == sorted(raw["SessionId"].unique())


def test_movielens_inter(shared_file, tmp_path, capsys):
    path = shared_file(*MOVIELENS)
    raw = pd.read_csv(path, sep="\t")
    rating = raw["rating:float"]

    m, out = _prepare(capsys, "--source", "movielens", "--input", str(path), "--out", str(tmp_path / "out"))

    assert m["rows_read"] == len(raw) == 100_000
    assert m["rows_quarantined"] == 0 and m["quarantine_reasons"] == {}
    assert len(_quarantine(out)) == 0
    assert m["events_by_type"] == {"view": int((rating < 4).sum()), "like": int((rating >= 4).sum()),
                                   "cart": 0, "purchase": 0}
    _check_row_accounting(m, [path])


# ---------------------------------------------------------------- a corrupted copy of the Taobao slice

# A real row of the slice, altered one field at a time: (user, item, category, behavior, time).
_BASE = [b"543462", b"1715", b"1464116", b"pv", b"1511658000"]


def _row(**change: bytes) -> bytes:
    fields = dict(zip(["user", "item", "category", "behavior", "ts"], _BASE, strict=True))
    fields.update(change)
    return b",".join(fields.values())


# line in the corrupted file -> (raw line, field, reason, quarantined value or None to skip the check)
_INJECTED: dict[int, tuple[bytes, str, str, str | None]] = {
    2: (_row(user=b""), "user_id", "missing_value", ""),
    1_000: (_row(item=b"abc"), "item_id", "unparsable_value", "abc"),
    10_000: (_row(behavior=b"click2"), "event_type", "unknown_event_type", "click2"),
    15_000: (_row(behavior=b""), "event_type", "missing_value", ""),
    20_000: (_row(ts=b"yesterday"), "timestamp", "unparsable_value", "yesterday"),
    30_000: (_row(ts=b"nan"), "timestamp", "nan_time", "nan"),
    40_000: (_row(ts=b"-5"), "timestamp", "negative_time", "-5"),
    45_000: (_row(ts=b"1e20"), "timestamp", "time_out_of_range", "1e20"),
    50_000: (_row(user=b"1" * 25), "user_id", "id_out_of_range", "1" * 25),
    55_000: (_row(item=b"-5"), "item_id", "id_out_of_range", "-5"),
    60_000: (b"543462,1715,pv,1511658000", "*", "wrong_column_count", "543462,1715,pv,1511658000"),
    65_000: (_row() + b",7", "*", "wrong_column_count", "543462,1715,1464116,pv,1511658000,7"),
    70_000: (_row(user=b"54\xff\xfe62"), "user_id", "undecodable_bytes", "54\ufffd\ufffd62"),
    75_000: (_row(category=b"\xff\xfe"), "item_category", "undecodable_bytes", "\ufffd\ufffd"),
    80_000: (_row(user=b"", ts=b"nan"), "user_id", "missing_value", ""),  # first failing field wins
    # 90_000: an exact copy of an earlier original line (filled in by the fixture), see _DUPLICATE_OF
}
_DUPLICATE_AT, _DUPLICATE_OF = 90_000, 12_345  # corrupted line, original line it copies
_LAST_LINE_BAD = (b"1,2,3", "*", "wrong_column_count", "1,2,3")  # also a bad row as the file's last line


@pytest.fixture(scope="module")
def taobao_corrupted(shared_file, tmp_path_factory):
    """(clean path, corrupted copy, {line: (raw, field, reason, value)}, corrupted line -> original line)."""
    clean = shared_file(*TAOBAO)
    original = clean.read_bytes().split(b"\n")
    assert original[-1] == b"", "the slice ends with a newline"
    original = original[:-1]
    injected = dict(_INJECTED)
    injected[_DUPLICATE_AT] = (original[_DUPLICATE_OF - 1], "*", "duplicate_event", None)
    n_lines = len(original) + len(injected) + 1
    injected[n_lines] = _LAST_LINE_BAD
    lines, to_original, it = [], {}, iter(enumerate(original, start=1))
    for line in range(1, n_lines + 1):
        if line in injected:
            lines.append(injected[line][0])
        else:
            k, text = next(it)
            lines.append(text)
            to_original[line] = k
    assert next(it, None) is None
    path = tmp_path_factory.mktemp("taobao_corrupted") / "UserBehavior_corrupted.csv"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return clean, path, injected, to_original


@pytest.fixture(scope="module")
def taobao_int_ids(taobao_corrupted, tmp_path_factory):
    """The clean and the corrupted file prepared with integer ids (as Taobao's ids are)."""
    clean, bad, _, _ = taobao_corrupted
    results = {}
    for name, path in (("clean", clean), ("corrupted", bad)):
        out = tmp_path_factory.mktemp(f"prep_{name}")
        assert main(["prepare", "--source", "taobao", "--id-type", "int", "--input", str(path),
                     "--out", str(out)]) == 0
        results[name] = (json.loads((out / "manifest.json").read_text()), out)
    return results


def test_corrupted_taobao_quarantines_exactly_the_injected_rows(taobao_corrupted, taobao_int_ids):
    clean, bad, injected, _ = taobao_corrupted
    m, out = taobao_int_ids["corrupted"]
    q = _quarantine(out)
    assert (q["source_file"] == str(bad)).all()
    assert sorted(zip(q["row"], q["reason"], q["field"], strict=True)) == sorted(
        (line, reason, field) for line, (_, field, reason, _) in injected.items())
    assert q["row"].is_unique  # each bad row once
    values = dict(zip(q["row"], q["value"], strict=True))
    for line, (_, _, _, value) in injected.items():
        if value is not None:
            assert values[line] == value, line
    assert m["quarantine_reasons"] == dict(Counter(reason for _, _, reason, _ in injected.values()))
    assert m["rows_quarantined"] == len(injected) and m["rows_read"] == 110_300 + len(injected)
    assert m["rows_kept"] == 110_300
    _check_row_accounting(m, [bad])


def test_corrupted_taobao_keeps_what_the_clean_file_gives(taobao_corrupted, taobao_int_ids):
    _, _, _, to_original = taobao_corrupted
    mc, clean_out = taobao_int_ids["clean"]
    mb, bad_out = taobao_int_ids["corrupted"]
    assert mc["rows_quarantined"] == 0
    for key in ("events_by_type", "sessions", "items", "items_seen", "catalogue_size", "splits", "id_types"):
        assert mb[key] == mc[key], key

    def events(out: Path) -> pd.DataFrame:
        ev = pq.read_table(out / "events.parquet").to_pandas()
        return ev.sort_values(["session", "position"]).reset_index(drop=True)

    ev_clean, ev_bad = events(clean_out), events(bad_out)
    assert len(ev_clean) == len(ev_bad) > 0
    assert ev_bad["source_row"].map(to_original).tolist() == ev_clean["source_row"].tolist()
    pd.testing.assert_frame_equal(ev_bad.drop(columns=["source_row"]), ev_clean.drop(columns=["source_row"]))
    for name in ("sessions.parquet", "vocab.parquet"):
        assert pq.read_table(bad_out / name).equals(pq.read_table(clean_out / name)), name
    for split in SPLITS:
        for name in TRANSITION_FILES:
            a = np.load(bad_out / "transitions" / split / f"{name}.npy")
            b = np.load(clean_out / "transitions" / split / f"{name}.npy")
            assert a.dtype == b.dtype and np.array_equal(a, b), (split, name)


def test_strict_stops_at_the_first_bad_row(taobao_corrupted, tmp_path, capsys):
    _, bad, injected, _ = taobao_corrupted
    first = min(injected)
    _, field, reason, _ = injected[first]
    out = tmp_path / "out"
    rc = main(["prepare", "--source", "taobao", "--id-type", "int", "--strict", "--input", str(bad),
               "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert str(bad) in err
    assert re.search(rf"\brow {first}\b", err), err
    assert field in err and reason in err
    assert not (out / "manifest.json").exists()


def test_strict_names_a_leading_duplicate_as_the_first_bad_row(shared_file, tmp_path, capsys):
    """The first bad row may be a duplicate (found after reading): --strict must name it, not a later row."""
    original = shared_file(*TAOBAO).read_bytes().split(b"\n")[:-1]
    lines = original[:2] + [original[0]] + original[2:100] + [_row(user=b"")] + original[100:]
    path = tmp_path / "dup_first.csv"
    path.write_bytes(b"\n".join(lines) + b"\n")
    rc = main(["prepare", "--source", "taobao", "--id-type", "int", "--strict", "--input", str(path),
               "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2
    assert str(path) in err
    assert re.search(r"\brow 3\b", err) and "duplicate_event" in err, err


def test_strict_passes_on_the_clean_file(shared_file, tmp_path, capsys):
    path = shared_file(*TAOBAO)
    m, _ = _prepare(capsys, "--source", "taobao", "--strict", "--input", str(path),
                    "--out", str(tmp_path / "o"))
    assert m["rows_quarantined"] == 0 and m["rows_kept"] == 110_300


def test_line_numbers_survive_small_batches(taobao_corrupted):
    """The CSV reader in ~1 MB blocks: every line is a row or a bad row once, and rows keep their line."""
    _, bad, injected, _ = taobao_corrupted
    lines = bad.read_bytes().split(b"\n")[:-1]
    rows, bad_rows, batches = [], [], 0
    for raw in read_file(bad, source_spec("taobao", bad), batch_rows=1000):
        batches += 1
        users = raw.table.column("user_id").to_pylist()
        items = raw.table.column("item_id").to_pylist()
        for r, u, i in zip(raw.rows.tolist(), users, items, strict=True):
            assert lines[r - 1].split(b",")[:2] == [u, i], r
        rows += raw.rows.tolist()
        bad_rows += raw.bad.rows
    assert batches > 1
    assert sorted(rows + bad_rows) == list(range(1, len(lines) + 1))
    assert sorted(bad_rows) == sorted(k for k, v in injected.items() if v[2] == "wrong_column_count")


# ---------------------------------------------------------------- JSONL and Parquet variants (generic reader)

_GENERIC_MAP = "user=user,item=item,event=behavior,time=ts,item_category=category"


def _taobao_head(shared_file, n: int = 2000) -> pd.DataFrame:
    return _taobao_frame(shared_file(*TAOBAO)).head(n)


def _insert_lines(good: list[bytes], bad: dict[int, bytes]) -> tuple[list[bytes], dict[int, int]]:
    """Insert `bad` lines at their (1-based) line numbers among `good`: (lines, line -> good line)."""
    out, to_good, it = [], {}, iter(enumerate(good, start=1))
    for line in range(1, len(good) + len(bad) + 1):
        if line in bad:
            out.append(bad[line])
        else:
            k, text = next(it)
            out.append(text)
            to_good[line] = k
    return out, to_good


def _compare_kept(clean_out: Path, bad_out: Path, to_clean: dict[int, int]) -> None:
    def events(out: Path) -> pd.DataFrame:
        ev = pq.read_table(out / "events.parquet").to_pandas()
        return ev.sort_values(["session", "position"]).reset_index(drop=True)

    ev_clean, ev_bad = events(clean_out), events(bad_out)
    assert len(ev_clean) == len(ev_bad) > 0
    assert ev_bad["source_row"].map(to_clean).tolist() == ev_clean["source_row"].tolist()
    pd.testing.assert_frame_equal(ev_bad.drop(columns=["source_row"]), ev_clean.drop(columns=["source_row"]))


def test_jsonl_malformed_lines_are_quarantined(shared_file, tmp_path, capsys):
    head = _taobao_head(shared_file)
    good = [json.dumps(r).encode() for r in head.to_dict(orient="records")]
    bad = {
        3: b'{"user": 1, "item": ',                       # truncated object
        500: b"[1, 2, 3]",                                # JSON, but not an object
        1000: b"not json at all",
        1500: b'{"user": "\xff\xfe", "item": 1}',         # not UTF-8
    }
    expected = {3: "malformed_row", 500: "malformed_row", 1000: "malformed_row", 1500: "undecodable_bytes"}
    lines, to_clean = _insert_lines(good, bad)
    (tmp_path / "clean.jsonl").write_bytes(b"\n".join(good) + b"\n")
    (tmp_path / "bad.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    results = {}
    for name in ("clean", "bad"):
        path = tmp_path / f"{name}.jsonl"
        results[name] = _prepare(capsys, "--source", "events", "--map", _GENERIC_MAP, "--id-type", "int",
                                 "--input", str(path), "--out", str(tmp_path / f"out_{name}"))
        _check_row_accounting(results[name][0], [path])
    m, out = results["bad"]
    q = _quarantine(out)
    got = sorted(zip(q["row"], q["reason"], q["field"], strict=True))
    assert got == sorted((k, r, "*") for k, r in expected.items())
    assert m["quarantine_reasons"] == dict(Counter(expected.values()))
    assert m["rows_read"] == len(lines) and m["rows_kept"] == len(good)
    assert results["clean"][0]["rows_quarantined"] == 0
    assert m["events_by_type"] == results["clean"][0]["events_by_type"]
    _compare_kept(results["clean"][1], out, to_clean)


def test_parquet_propensity_out_of_range_is_quarantined(shared_file, tmp_path, capsys):
    head = _taobao_head(shared_file)
    rng = np.random.default_rng(0)
    good = head.assign(propensity=rng.uniform(0.01, 1.0, len(head)))
    good.loc[good.index[::7], "propensity"] = 1.0  # the closed end of (0, 1] is fine
    bad_values = {10: 0.0, 200: -0.1, 700: 1.5, 1200: float("nan"), 1800: float("inf")}  # 1-based rows
    rows, to_clean = [], {}
    source = iter(good.to_dict(orient="records"))
    for r in range(1, len(good) + len(bad_values) + 1):
        if r in bad_values:
            rows.append({**good.iloc[r % len(good)].to_dict(), "propensity": bad_values[r]})
        else:
            rows.append(next(source))
            to_clean[r] = len(to_clean) + 1
    corrupted = pd.DataFrame(rows).astype(good.dtypes.to_dict())
    for name, frame in (("clean", good), ("bad", corrupted)):
        # from NumPy arrays, so that NaN stays a NaN value (pandas conversion would make it a null)
        table = pa.table({c: pa.array(frame[c].to_numpy()) for c in frame.columns})
        assert table.column("propensity").null_count == 0
        pq.write_table(table, tmp_path / f"{name}.parquet")
    results = {}
    for name in ("clean", "bad"):
        path = tmp_path / f"{name}.parquet"
        results[name] = _prepare(capsys, "--source", "events", "--id-type", "int", "--input", str(path),
                                 "--map", f"{_GENERIC_MAP},propensity=propensity",
                                 "--out", str(tmp_path / f"out_{name}"))
        _check_row_accounting(results[name][0], [path])
    m, out = results["bad"]
    q = _quarantine(out)
    assert sorted(zip(q["row"], q["reason"], q["field"], strict=True)) == sorted(
        (r, "propensity_out_of_range", "propensity") for r in bad_values)
    assert m["quarantine_reasons"] == {"propensity_out_of_range": len(bad_values)}
    assert results["clean"][0]["rows_quarantined"] == 0
    assert m["events_by_type"] == results["clean"][0]["events_by_type"]
    _compare_kept(results["clean"][1], out, to_clean)
