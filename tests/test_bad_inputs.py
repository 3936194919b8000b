"""Bad input on the reading side: maps that lack a column, empty results, encodings, huge lines, time range."""

import json

import pyarrow.parquet as pq
import pytest

from seqrec.cli.main import main

ROWS = ["u1,1700000000,i1", "u1,1700000060,i2", "u1,1700000120,i3"]



def test_event_type_with_a_map_that_has_no_event_column(tmp_path, capsys):
    log = tmp_path / "export.csv"
    log.write_text("".join(r + "\n" for r in ROWS))
    rc = main(["prepare", "--input", str(log), "--no-header", "--map", "user=0,item=2,time=1", "--event-type", "view",
               "--out", str(tmp_path / "a")])
    assert rc == 0, capsys.readouterr().err
    m = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert m["rows_kept"] == 3 and m["events_by_type"]["view"] == 3
    # the same from a run file's [prepare] table
    cfg = tmp_path / "run.toml"
    cfg.write_text('[prepare]\nmap = "user=0,item=2,time=1"\nheader = false\nevent_type = "like"\n')
    assert main(["prepare", "--config", str(cfg), "--input", str(log), "--out", str(tmp_path / "b")]) == 0
    m = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert m["events_by_type"]["like"] == 3 and m["events_by_type"]["view"] == 0


def test_session_only_map_uses_the_session_as_the_user(tmp_path, capsys):
    log = tmp_path / "sess.csv"
    log.write_text("sid,sku,ts\n" + "".join(f"s{k // 3},i{k % 3},{1_700_000_000 + 60 * k}\n" for k in range(6)))
    rc = main(["prepare", "--input", str(log), "--map", "session=sid,item=sku,time=ts", "--event-type", "view",
               "--out", str(tmp_path / "out")])
    assert rc == 0, capsys.readouterr().err
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["rows_kept"] == 6 and m["sessions"]["after_filter"] == 2
    (reader,) = m["config"]["readers"]
    assert reader["user_from_session"] is True and reader["columns"]["user"] == "sid"
    users = pq.read_table(tmp_path / "out" / "sessions.parquet").column("user_id").to_pylist()
    assert sorted(users) == ["s0", "s1"]


def test_a_map_with_a_user_column_is_not_marked_session_only(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("uid,sid,sku,ts\n" + "".join(f"u,s{k // 3},i{k % 3},{1_700_000_000 + 60 * k}\n" for k in range(6)))
    assert main(["prepare", "--input", str(log), "--map", "user=uid,session=sid,item=sku,time=ts",
                 "--event-type", "view", "--out", str(tmp_path / "out")]) == 0
    (reader,) = json.loads((tmp_path / "out" / "manifest.json").read_text())["config"]["readers"]
    assert "user_from_session" not in reader


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_a_header_only_file_is_an_error(tmp_path, capsys):
    log = tmp_path / "header_only.csv"
    log.write_text("user_id,item_id,timestamp\n")
    assert main(["prepare", "--input", str(log), "--out", str(tmp_path / "out")]) == 2
    err = _error_line(capsys)
    assert f"{log}: no rows" in err and "nothing usable" in err
    assert (tmp_path / "out" / "quarantine.parquet").exists()
    assert not (tmp_path / "out" / "manifest.json").exists()  # so a rerun is no silent re-use


def test_every_row_quarantined_is_an_error_naming_counts_and_reasons(tmp_path, capsys):
    log = tmp_path / "bad.csv"
    log.write_text("user_id,item_id,timestamp\nu1,i1,abc\nu2,,1700000000\nu3,i3,xyz\n")
    for _ in range(2):  # the second run must not re-use anything
        assert main(["prepare", "--input", str(log), "--out", str(tmp_path / "out")]) == 2
        err = _error_line(capsys)
        assert f"{log}: 3 rows read, 0 kept, 3 quarantined, 0 excluded" in err
        assert "unparsable_value 2, missing_value 1" in err
        q = pq.read_table(tmp_path / "out" / "quarantine.parquet").to_pydict()
        assert sorted(zip(q["row"], q["reason"])) == [(2, "unparsable_value"), (3, "missing_value"),
                                                      (4, "unparsable_value")]


def test_a_one_line_file_without_a_trailing_newline_is_read(tmp_path, capsys):
    log = tmp_path / "UserBehavior.csv"
    log.write_bytes(b"1,2,3,pv,1511544070")
    assert main(["prepare", "--source", "taobao", "--input", str(log), "--out", str(tmp_path / "out"),
                 "--min-session-length", "1"]) == 0, capsys.readouterr().err
    (f,) = json.loads((tmp_path / "out" / "manifest.json").read_text())["inputs"]
    assert (f["rows_read"], f["rows_kept"], f["rows_quarantined"]) == (1, 1, 0)
    # a bad one-line file: the row is read and quarantined, so the run stops naming it
    log.write_bytes(b"1,2,3,pv,later")
    assert main(["prepare", "--source", "taobao", "--input", str(log), "--out", str(tmp_path / "o2")]) == 2
    assert f"{log}: 1 rows read, 0 kept, 1 quarantined" in _error_line(capsys)


LOG = "user_id,item_id,timestamp\nu1,i1,1700000000\nu1,i2,1700000060\nu1,i3,1700000120\n"


@pytest.mark.parametrize("name, data", [
    ("bom16.csv", LOG.encode("utf-16")),             # with a byte-order mark
    ("le16.csv", LOG.encode("utf-16-le")),           # without one
    ("be16.jsonl", '{"user_id": "u1"}\n'.encode("utf-16-be")),
])
def test_utf16_input_is_named_in_one_line(tmp_path, capsys, name, data):
    log = tmp_path / name
    log.write_bytes(data)
    assert main(["prepare", "--input", str(log), "--out", str(tmp_path / "out")]) == 2
    assert f"{log}: looks UTF-16 encoded; convert to UTF-8" in _error_line(capsys)
    # also with an explicit map (the reader, not only the default map's header look-up, checks)
    assert main(["prepare", "--input", str(log), "--map", "user=user_id,item=item_id,time=timestamp",
                 "--event-type", "view", "--out", str(tmp_path / "o2")]) == 2
    assert "looks UTF-16 encoded" in _error_line(capsys)


@pytest.mark.parametrize("name, text", [
    ("bom.csv", LOG),
    ("bom.jsonl", "".join(f'{{"user_id": "u1", "item_id": "i{k}", "timestamp": {1700000000 + 60 * k}}}\n'
                          for k in range(3))),
])
def test_a_utf8_byte_order_mark_is_skipped(tmp_path, capsys, name, text):
    log = tmp_path / name
    log.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert main(["prepare", "--input", str(log), "--out", str(tmp_path / "out")]) == 0, capsys.readouterr().err
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert (m["rows_read"], m["rows_kept"]) == (3, 3)
    assert sorted(pq.read_table(tmp_path / "out" / "sessions.parquet").column("user_id").to_pylist()) == ["u1"]


@pytest.mark.parametrize("args", [[], ["--map", "user=a,item=b,time=c,event=d"],
                                  ["--no-header", "--map", "user=0,item=1,time=2", "--event-type", "view"]])
def test_a_huge_line_is_not_echoed_whole(tmp_path, capsys, args):
    log = tmp_path / "huge.csv"
    log.write_text("x" * 1_000_000 + "\n")
    assert main(["prepare", "--input", str(log), "--out", str(tmp_path / "out"), *args]) == 2
    err = _error_line(capsys)
    assert str(log) in err and len(err) < 600


def test_one_time_range_for_numbers_and_iso_text(tmp_path, capsys):
    # user a: year 9999 as ISO text, user b: the same instants as numbers, user c: a Taobao-like year 5138, d: fine
    rows = [f"a,i{k},9999-12-31T00:0{k}:00" for k in range(3)] + [f"b,i{k},{253402214400 + 60 * k}" for k in range(3)]
    rows += [f"c,i{k},{99999999999 + k}" for k in range(3)] + [f"d,i{k},{1700000000 + 60 * k}" for k in range(3)]
    log = tmp_path / "log.csv"
    log.write_text("user_id,item_id,timestamp\n" + "".join(r + "\n" for r in rows))
    assert main(["prepare", "--input", str(log), "--out", str(tmp_path / "out")]) == 0, capsys.readouterr().err
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert (m["rows_kept"], m["quarantine_reasons"]) == (3, {"time_out_of_range": 9})
    taobao = tmp_path / "UserBehavior.csv"
    taobao.write_text("1,2,3,pv,1511544070\n1,3,3,pv,99999999999\n")
    assert main(["prepare", "--source", "taobao", "--input", str(taobao), "--out", str(tmp_path / "t"),
                 "--min-session-length", "1"]) == 0, capsys.readouterr().err
    q = pq.read_table(tmp_path / "t" / "quarantine.parquet").to_pydict()
    assert (q["row"], q["reason"], q["value"]) == ([2], ["time_out_of_range"], ["99999999999"])
