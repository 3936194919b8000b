"""Pass 1 and duplicate detection as `seqrec prepare` and `seqrec score` share them (datasets/scatter.py,
datasets/duplicates.py, datasets/quarantine.py), and the one list of input formats (datasets/readers.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from seqrec.datasets.adapters import SOURCES, source_spec
from seqrec.datasets.duplicates import duplicate_rows, earliest_duplicate, find_duplicates
from seqrec.datasets.inputs import FileStats
from seqrec.datasets.quarantine import Quarantine
from seqrec.datasets.readers import FORMATS, SourceSpec
from seqrec.datasets.scatter import Scatter, bucket_of, bucket_paths, read_bucket
from seqrec.datasets.schema import DEFAULT_REWARDS
from seqrec.datasets.validate import EventTypes

LOG = """user_id,item_id,event_type,timestamp
1,10,view,100
2,11,view,100
1,12,cart,110
3,10,skip,120
2,11,view,100
x,10,view,130
4,13,purchase,140
1,10,view,100
"""


class _Bar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _scatter(tmp_path: Path, n_buckets: int, keep=None) -> tuple[Scatter, list[FileStats], Quarantine]:
    path = tmp_path / "log.csv"
    path.write_text(LOG)
    spec = source_spec("events", path, event_map=(("skip", "drop"),))
    files = [FileStats.of(path, spec)]
    work = tmp_path / "work"
    work.mkdir()
    scatter = Scatter(work, n_buckets, EventTypes.build(spec.event_map, DEFAULT_REWARDS), {"user_id": "int"}, keep)
    quarantine = Quarantine(tmp_path / "q.parquet", files)
    scatter.run([path], [spec], files, quarantine.add, _Bar())
    quarantine.close()
    return scatter, files, quarantine


@pytest.mark.parametrize("n_buckets", [1, 3])
def test_scatter_puts_each_user_whole_in_one_bucket_and_counts_every_row(tmp_path, n_buckets):
    scatter, files, quarantine = _scatter(tmp_path, n_buckets)
    # 8 rows: 1 text user id (quarantined), 1 dropped event type (excluded), 6 kept
    assert (files[0].rows_read, files[0].rows_kept, files[0].rows_quarantined, files[0].rows_excluded) == (8, 6, 1, 1)
    assert scatter.excluded == {"skip": 1}
    assert quarantine.reasons == {"unparsable_value": 1}
    assert pq.read_table(tmp_path / "q.parquet").column("row").to_pylist() == [7]  # header is line 1
    seen: dict[int, int] = {}
    rows = []
    for b in sorted(scatter.buckets):
        t = read_bucket(bucket_paths(scatter.work, b))
        for u in set(t.column("user_id").to_pylist()):
            assert seen.setdefault(u, b) == b  # a user's rows never span buckets
        rows += t.column("_row").to_pylist()
        assert t.column("_row").to_pylist() == sorted(t.column("_row").to_pylist())  # input order inside a bucket
    assert sorted(rows) == [2, 3, 4, 6, 8, 9]
    expected = bucket_of(pa.array([1, 2, 4], pa.int64()), n_buckets)
    assert scatter.buckets == set(expected.tolist())


def test_scatter_keeps_only_the_columns_asked_for(tmp_path):
    scatter, _, _ = _scatter(tmp_path, 1, keep=("user_id", "item_id", "_row"))
    assert scatter.schema().names == ["user_id", "item_id", "_row"]


def test_duplicates_keep_the_first_row_and_read_as_prepare_words_them(tmp_path):
    scatter, _, _ = _scatter(tmp_path, 1)
    t = read_bucket(bucket_paths(scatter.work, 0))
    order, dup = find_duplicates(t)
    dups = t.take(pa.array(order[dup]))
    assert dups.column("_row").to_pylist() == [9, 6]  # (user, time) order: user 1's repeat, then user 2's
    (fi, bad), = duplicate_rows(dups, ("view", "like", "cart", "purchase"))
    assert fi == 0 and bad.rows == [9, 6] and set(bad.reasons) == {"duplicate_event"}
    assert bad.values[0] == "user=1 item=10 event=view time_us=100000000"
    assert earliest_duplicate(scatter.work, scatter.buckets, scatter.schema()) == (0, 6)


def test_find_duplicates_without_any():
    t = pa.table({"user_id": [1, 1], "item_id": [1, 1], "event": pa.array([0, 1], pa.int16()),
                  "timestamp": [5, 5]})
    order, dup = find_duplicates(t)
    assert order.tolist() == [0, 1] and not dup.any()


def test_formats_are_listed_once_and_found_by_suffix(tmp_path):
    assert FORMATS == ("csv", "parquet", "jsonl")
    spec = SourceSpec(columns=(("user", "u"), ("item", "i"), ("time", "t"), ("event", "e")))
    for name, fmt in {"a.parquet": "parquet", "a.pq": "parquet", "a.jsonl.gz": "jsonl", "a.json": "jsonl",
                      "a.tsv": "csv", "a.dat": "csv", "a.unknown": "csv", "a.csv.gz": "csv"}.items():
        assert spec.format_of(Path(name)) == fmt, name
    with pytest.raises(ValueError, match="one of auto, csv, parquet, jsonl"):
        SourceSpec(fmt="xml", columns=spec.columns)
    assert SOURCES == ("events", "taobao", "rc15", "sessionrec", "retailrocket", "movielens")


def test_generic_adapter_reads_column_names_of_each_format(tmp_path):
    rows = {"user_id": [1], "item_id": [2], "timestamp": [3], "extra": ["x"]}
    pq.write_table(pa.table(rows), tmp_path / "e.parquet")
    (tmp_path / "e.jsonl").write_text('not json\n{"user_id": 1, "item_id": 2, "timestamp": 3, "extra": "x"}\n')
    (tmp_path / "e.csv").write_text("user_id,item_id,timestamp,extra\n1,2,3,x\n")
    for name in ("e.parquet", "e.jsonl", "e.csv"):
        spec = source_spec("events", tmp_path / name)
        assert dict(spec.columns) == {"user": "user_id", "item": "item_id", "time": "timestamp", "extra": "extra"}
        assert spec.event_type == "view"
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="no usable column"):
        source_spec("events", tmp_path / "bad.csv")
    assert np.array_equal(bucket_of(pa.array(["a", "b"]), 1), [0, 0])
