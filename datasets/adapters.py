"""Named adapters: the generic reader with the column map of a known public log format.

| source       | files                                              | events                                  |
|--------------|----------------------------------------------------|-----------------------------------------|
| events       | any CSV/TSV/Parquet/JSONL; --map or schema names   | canonical names and synonyms, --event-map |
| taobao       | UserBehavior.csv: user,item,category,behavior,ts   | pv/fav/cart/buy -> view/like/cart/purchase |
| rc15         | yoochoose-clicks.dat + yoochoose-buys.dat          | clicks -> view, buys -> purchase (+ price) |
| sessionrec   | session-rec TSV with header SessionId ItemId Time  | clicks -> view                          |
| retailrocket | events.csv: timestamp,visitorid,event,itemid,...   | view/addtocart/transaction -> view/cart/purchase |
| movielens    | ml-100k u.data, RecBole .inter, ratings.csv        | rating >= 4 -> like, else view          |

Session-only logs (rc15, sessionrec) have no user: the session id stands in for the user.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from .readers import InputError, SourceSpec
from .schema import COLUMN_OF_FIELD

SOURCES = ("events", "taobao", "rc15", "sessionrec", "retailrocket", "movielens")

_HALF_STARS = [f"{x / 2:g}" for x in range(1, 11)] + [f"{x / 2:.1f}" for x in range(1, 11)]
MOVIELENS_EVENTS = tuple((r, "like" if float(r) >= 4 else "view") for r in dict.fromkeys(_HALF_STARS))


def source_spec(source: str, path: Path, *, columns: tuple[tuple[str, str], ...] = (), fmt: str = "auto",
                sep: str | None = None, header: bool | None = None, time_unit: str | None = None,
                event_type: str | None = None, event_map: tuple[tuple[str, str], ...] = ()) -> SourceSpec:
    """The SourceSpec for `path` read as `source`; explicit options override the adapter's defaults."""
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    base = _adapter(source, Path(path), columns, fmt, sep, header)
    return SourceSpec(
        fmt=fmt if fmt != "auto" else base.fmt,
        sep=sep if sep is not None else base.sep,
        header=header if header is not None else base.header,
        columns=columns or base.columns,
        time_unit=time_unit or base.time_unit,
        event_type=event_type or base.event_type,
        event_map=base.event_map + tuple(event_map),
        id_type=base.id_type,
    )


def _adapter(source: str, path: Path, columns, fmt: str, sep: str | None, header: bool | None) -> SourceSpec:
    if source == "taobao":
        return SourceSpec(id_type="int", fmt="csv", sep=",", header=False, time_unit="s",
                          columns=(("user", "0"), ("item", "1"), ("item_category", "2"), ("event", "3"),
                                   ("time", "4")))
    if source == "rc15":
        if "buy" in path.name.lower():
            return SourceSpec(id_type="int", fmt="csv", sep=",", header=False, time_unit="iso", event_type="purchase",
                              columns=(("user", "0"), ("session", "0"), ("time", "1"), ("item", "2"),
                                       ("value", "3"), ("quantity", "4")))
        return SourceSpec(id_type="int", fmt="csv", sep=",", header=False, time_unit="iso", event_type="view",
                          columns=(("user", "0"), ("session", "0"), ("time", "1"), ("item", "2"),
                                   ("item_category", "3")))
    if source == "sessionrec":
        return SourceSpec(id_type="int", fmt="csv", sep="\t", header=True, time_unit="s", event_type="view",
                          columns=(("user", "SessionId"), ("session", "SessionId"), ("item", "ItemId"),
                                   ("time", "Time")))
    if source == "retailrocket":
        return SourceSpec(id_type="int", fmt="csv", sep=",", header=True, time_unit="ms",
                          columns=(("user", "visitorid"), ("item", "itemid"), ("event", "event"),
                                   ("time", "timestamp")))
    if source == "movielens":
        return _movielens(path)
    # generic: an explicit map, or the schema's own column names found in the file (others become features)
    if columns:
        return SourceSpec(fmt=fmt, sep=sep or _sep_for(path), header=True if header is None else header,
                          columns=columns, event_type=None)
    names = _column_names(path, fmt, sep or _sep_for(path))
    by_column = {col: f for f, col in COLUMN_OF_FIELD.items()}
    mapped = tuple((by_column.get(n, n), n) for n in names)
    return SourceSpec(fmt=fmt, sep=sep or _sep_for(path), header=True, columns=mapped,
                      event_type=None if "event_type" in names else "view")


def _sep_for(path: Path) -> str:
    return "\t" if path.suffix.lower() in (".tsv", ".tab") else ","


def _first_line(path: Path) -> str:
    if not path.exists():
        raise InputError(f"{path}: no such file")
    with open(path, "rb") as f:
        return f.readline().decode("utf-8", "replace").rstrip("\r\n")


def _column_names(path: Path, fmt: str, sep: str) -> list[str]:
    """Column names of a file for the default map: Parquet schema, CSV header, or first JSON object's keys."""
    import json

    spec_fmt = SourceSpec(fmt=fmt, columns=(("user", "u"), ("item", "i"), ("time", "t"), ("event", "e"))).format_of(
        path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if spec_fmt == "parquet":
        try:
            return pq.ParquetFile(str(path)).schema_arrow.names
        except Exception as e:  # noqa: BLE001 - any failure here is an unreadable file
            raise InputError(f"{path}: not a readable Parquet file ({e})") from None
    if spec_fmt == "jsonl":  # keys of the first JSON object among the first lines (bad lines are quarantined)
        with open(path, "rb") as f:
            for _, raw in zip(range(1000), f):
                try:
                    obj = json.loads(raw)
                except (ValueError, UnicodeDecodeError):
                    continue
                if isinstance(obj, dict):
                    return list(obj)
        raise InputError(f"{path}: no JSON object in the first 1000 lines; cannot find column names")
    line = _first_line(path)
    names = [n.strip().strip('"') for n in line.split(sep)]
    if not any(n in COLUMN_OF_FIELD.values() for n in names):
        raise InputError(f"{path}: no usable column: the header has none of user_id, item_id, timestamp "
                         f"(it has: {', '.join(names[:20])}); give --map user=...,item=...,time=...")
    return names


def _movielens(path: Path) -> SourceSpec:
    first = _first_line(path)
    if "user_id:token" in first:  # RecBole atomic file
        return SourceSpec(id_type="int", fmt="csv", sep="\t", header=True, time_unit="s", event_map=MOVIELENS_EVENTS,
                          columns=(("user", "user_id:token"), ("item", "item_id:token"),
                                   ("event", "rating:float"), ("time", "timestamp:float")))
    if first.lower().startswith("userid,"):  # ratings.csv of ml-latest / ml-25m
        return SourceSpec(id_type="int", fmt="csv", sep=",", header=True, time_unit="s", event_map=MOVIELENS_EVENTS,
                          columns=(("user", "userId"), ("item", "movieId"), ("event", "rating"),
                                   ("time", "timestamp")))
    # ml-100k u.data: user item rating timestamp, tab separated, no header
    return SourceSpec(id_type="int", fmt="csv", sep="\t", header=False, time_unit="s", event_map=MOVIELENS_EVENTS,
                      columns=(("user", "0"), ("item", "1"), ("event", "2"), ("time", "3")))
