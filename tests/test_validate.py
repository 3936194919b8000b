"""Field parsers and the validator: each bad value gets the right reason, good values the right number."""

import numpy as np
import pyarrow as pa
import pytest
from seqrec.datasets.readers import BadRows, RawBatch
from seqrec.datasets.schema import DEFAULT_REWARDS, REASON_CODE
from seqrec.datasets.validate import EventTypes, Validator, parse_ids, parse_numbers, parse_times

OK = 0


@pytest.mark.parametrize("text, kind, value, reason", [
    ("123", "int", 123, OK),
    ("0", "int", 0, OK),
    ("", "int", 0, REASON_CODE["missing_value"]),
    (None, "int", 0, REASON_CODE["missing_value"]),
    ("abc", "int", 0, REASON_CODE["unparsable_value"]),
    ("007", "int", 0, REASON_CODE["unparsable_value"]),  # would collide with "7"
    ("-5", "int", 0, REASON_CODE["id_out_of_range"]),
    ("9" * 25, "int", 0, REASON_CODE["id_out_of_range"]),
    ("user-1", "string", "user-1", OK),
    ("x" * 300, "string", None, REASON_CODE["id_out_of_range"]),
])
def test_parse_ids(text, kind, value, reason):
    # pad with good values so both the fast path and the element-wise path are exercised
    arr = pa.array(["1", text, "2"] if kind == "int" else ["a", text, "b"], pa.string())
    vals, codes = parse_ids(arr, kind)
    assert codes[1] == reason
    assert codes[0] == codes[2] == OK
    if reason == OK:
        assert vals[1].as_py() == value


@pytest.mark.parametrize("text, unit, us, reason", [
    ("1511658000", "s", 1_511_658_000_000_000, OK),
    ("1396437000.123", "s", 1_396_437_000_123_000, OK),
    ("1433221332117", "ms", 1_433_221_332_117_000, OK),
    ("2014-04-07T10:51:09.277Z", "iso", 1_396_867_869_277_000, OK),
    ("2014-04-07T10:51:09.277Z", "auto", 1_396_867_869_277_000, OK),
    ("2019-11-24 00:00:34.762830+00:00", "auto", 1_574_553_634_762_830, OK),
    ("2014-04-07 10:51:09", "iso", 1_396_867_869_000_000, OK),  # naive means UTC
    ("nan", "s", 0, REASON_CODE["nan_time"]),
    ("-1", "s", 0, REASON_CODE["negative_time"]),
    ("1e300", "s", 0, REASON_CODE["time_out_of_range"]),
    # one range for every format: up to 2262-04-11T23:47:16.854775Z (int64 nanoseconds), checked to the microsecond
    ("9223372036", "s", 9_223_372_036_000_000, OK),
    ("9223372037", "s", 0, REASON_CODE["time_out_of_range"]),
    ("9223372036854", "ms", 9_223_372_036_854_000, OK),
    ("9223372036855", "ms", 0, REASON_CODE["time_out_of_range"]),
    ("99999999999", "s", 0, REASON_CODE["time_out_of_range"]),  # year 5138
    ("253402214400", "auto", 0, REASON_CODE["time_out_of_range"]),  # 9999-12-31 as a number
    ("9999-12-31T00:00:00", "auto", 0, REASON_CODE["time_out_of_range"]),  # ... and as ISO text
    ("9999-12-31T00:00:00", "iso", 0, REASON_CODE["time_out_of_range"]),
    ("2262-04-11T23:47:16.854775Z", "iso", 9_223_372_036_854_775, OK),
    ("2262-04-11T23:47:16.854776Z", "auto", 0, REASON_CODE["time_out_of_range"]),
    ("yesterday", "s", 0, REASON_CODE["unparsable_value"]),
    ("yesterday", "auto", 0, REASON_CODE["unparsable_value"]),
    ("2014-13-45T00:00:00", "iso", 0, REASON_CODE["unparsable_value"]),
    ("", "s", 0, REASON_CODE["missing_value"]),
])
def test_parse_times(text, unit, us, reason):
    good = "1511658000" if unit != "iso" else "2017-11-26T01:00:00Z"
    arr = pa.array([good, text, good], pa.string())
    vals, codes = parse_times(arr, unit)
    assert codes[1] == reason, (text, codes)
    assert codes[0] == codes[2] == OK
    if reason == OK:
        assert vals[1] == us


def test_parse_times_typed_columns():
    ts = pa.array([0, 1_000_000], pa.timestamp("us", tz="UTC"))
    assert parse_times(ts, "auto")[0].tolist() == [0, 1_000_000]
    ints = pa.array([1, 2], pa.int64())
    assert parse_times(ints, "ms")[0].tolist() == [1000, 2000]
    # the same range for typed columns (Parquet timestamps and integers)
    late = pa.array([9_223_372_036_854_775, 9_223_372_036_854_776], pa.timestamp("us", tz="UTC"))
    assert parse_times(late, "auto")[1].tolist() == [OK, REASON_CODE["time_out_of_range"]]
    assert parse_times(pa.array([9_223_372_036, 9_223_372_037], pa.int64()), "s")[1].tolist() == \
        [OK, REASON_CODE["time_out_of_range"]]


def test_parse_numbers():
    vals, codes = parse_numbers(pa.array(["0.5", "", "x", "1e-3"]), required=False)
    assert codes.tolist() == [OK, OK, REASON_CODE["unparsable_value"], OK]
    assert vals[0] == 0.5 and np.isnan(vals[1]) and vals[3] == 1e-3


def _validator(**kw) -> Validator:
    return Validator("f.csv", 0, EventTypes.build(kw.pop("event_map", ()), DEFAULT_REWARDS), **kw)


def test_validator_first_failing_field_and_accounting():
    table = pa.table({
        "user_id": pa.array([b"1", b"", b"3", b"4", b"5", b"6"], pa.binary()),
        "item_id": pa.array([b"10", b"11", b"x", b"13", b"\xff", b"15"], pa.binary()),
        "event_type": pa.array([b"view", b"view", b"view", b"zap", b"view", b"BUY "], pa.binary()),
        "timestamp": pa.array([b"1", b"2", b"3", b"4", b"5", b"6"], pa.binary()),
        "propensity": pa.array([b"0.5", b"", b"", b"", b"", b"1.5"], pa.binary()),
    })
    bad = BadRows()
    validate = _validator(id_types={"user_id": "int", "item_id": "int"})
    kept = validate(RawBatch(table, np.arange(2, 8, dtype=np.int64), BadRows()), bad)
    assert kept.column("user_id").to_pylist() == [1]
    assert kept.column("event").to_pylist() == [0]
    got = sorted(zip(bad.rows, bad.fields, bad.reasons))
    assert got == [(3, "user_id", "missing_value"), (4, "item_id", "unparsable_value"),
                   (5, "event_type", "unknown_event_type"), (6, "item_id", "undecodable_bytes"),
                   (7, "propensity", "propensity_out_of_range")]
    assert kept.num_rows + len(bad) == table.num_rows


def test_event_map_extra_type_and_constant_event():
    types = EventTypes.build((("share", "0.3"), ("basket", "cart")), DEFAULT_REWARDS)
    assert types.names[-1] == "share" and types.rewards[-1] == 0.3
    lookup = dict(types.lookup)
    assert lookup["basket"] == lookup["cart"] == 2 and lookup["pv"] == 0
    with pytest.raises(ValueError, match="reward number"):
        EventTypes.build((("x", "nonsense"),), DEFAULT_REWARDS)
    v = Validator("f.csv", 0, types, constant_event="purchase")
    raw = RawBatch(pa.table({"user_id": ["1"], "item_id": ["2"], "timestamp": ["3"]}), np.array([2]), BadRows())
    assert v(raw, BadRows()).column("event").to_pylist() == [3]
    with pytest.raises(ValueError, match="not one of"):
        Validator("f.csv", 0, types, constant_event="nope")


def test_auto_id_type_decided_on_first_values():
    v = _validator()
    raw = RawBatch(pa.table({"user_id": ["u1", "u2"], "item_id": ["1", "2"], "event_type": ["view"] * 2,
                             "timestamp": ["1", "2"]}), np.array([2, 3]), BadRows())
    kept = v(raw, BadRows())
    assert v.id_types == {"user_id": "string", "item_id": "int"}
    assert kept.column("user_id").type == pa.string() and kept.column("item_id").type == pa.int64()
