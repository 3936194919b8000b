"""Named adapters: the generic reader with the column map of a known public log format.

| source       | files                                              | events                                  |
|--------------|----------------------------------------------------|-----------------------------------------|
| events       | any CSV/TSV/Parquet/JSONL; --map or schema names   | canonical names and synonyms, --event-map |
| taobao       | UserBehavior.csv: user,item,category,behavior,ts   | pv/fav/cart/buy -> view/like/cart/purchase |
| rc15         | yoochoose-clicks.dat + yoochoose-buys.dat          | clicks -> view, buys -> purchase (+ price) |
| sessionrec   | session-rec TSV with header SessionId ItemId Time  | clicks -> view                          |
| retailrocket | events.csv: timestamp,visitorid,event,itemid,...   | view/addtocart/transaction -> view/cart/purchase |
| movielens    | ml-100k u.data, RecBole .inter, ratings.csv        | rating >= 4 -> like, else view          |

Session-only logs (rc15, sessionrec, or a generic --map with a session but no user column) have no user: the
session id stands in for the user.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .readers import UTF8_BOM, InputError, SourceSpec, column_names
from .schema import COLUMN_OF_FIELD

_HALF_STARS = [f"{x / 2:g}" for x in range(1, 11)] + [f"{x / 2:.1f}" for x in range(1, 11)]
MOVIELENS_EVENTS = tuple((r, "like" if float(r) >= 4 else "view") for r in dict.fromkeys(_HALF_STARS))


def source_spec(source: str, path: Path, *, columns: tuple[tuple[str, str], ...] = (), fmt: str = "auto",
                sep: str | None = None, header: bool | None = None, time_unit: str | None = None,
                event_type: str | None = None, event_map: tuple[tuple[str, str], ...] = ()) -> SourceSpec:
    """The SourceSpec for `path` read as `source`; explicit options override the adapter's defaults."""
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    base = _adapter(source, Path(path), columns, fmt, sep, header, event_type)
    if source == "events" and columns:
        columns = with_user_from_session(columns)
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


def with_user_from_session(columns: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """A generic map with a session but no user column: the session column stands in for the user (as in the
    session-only adapters); any other map unchanged."""
    mapped = dict(columns)
    if "user" in mapped or "session" not in mapped:
        return columns
    return (("user", mapped["session"]), *columns)


def _adapter(source: str, path: Path, columns, fmt: str, sep: str | None, header: bool | None,
             event_type: str | None) -> SourceSpec:
    if source in _NAMED:
        return _NAMED[source](path)
    # generic: an explicit map, or the schema's own column names found in the file (others become features);
    # a constant --event-type is part of the spec from the start, so a map without an event column is complete
    if columns:
        return SourceSpec(fmt=fmt, sep=sep or _sep_for(path), header=True if header is None else header,
                          columns=with_user_from_session(columns), event_type=event_type)
    names = _column_names(path, fmt, sep or _sep_for(path))
    by_column = {col: f for f, col in COLUMN_OF_FIELD.items()}
    mapped = with_user_from_session(tuple((by_column.get(n, n), n) for n in names))
    return SourceSpec(fmt=fmt, sep=sep or _sep_for(path), header=True, columns=mapped,
                      event_type=None if "event_type" in names else "view")


def _taobao(path: Path) -> SourceSpec:
    return SourceSpec(id_type="int", fmt="csv", sep=",", header=False, time_unit="s",
                      columns=(("user", "0"), ("item", "1"), ("item_category", "2"), ("event", "3"), ("time", "4")))


def _rc15(path: Path) -> SourceSpec:
    if "buy" in path.name.lower():
        return SourceSpec(id_type="int", fmt="csv", sep=",", header=False, time_unit="iso", event_type="purchase",
                          columns=(("user", "0"), ("session", "0"), ("time", "1"), ("item", "2"),
                                   ("value", "3"), ("quantity", "4")))
    return SourceSpec(id_type="int", fmt="csv", sep=",", header=False, time_unit="iso", event_type="view",
                      columns=(("user", "0"), ("session", "0"), ("time", "1"), ("item", "2"),
                               ("item_category", "3")))


def _sessionrec(path: Path) -> SourceSpec:
    return SourceSpec(id_type="int", fmt="csv", sep="\t", header=True, time_unit="s", event_type="view",
                      columns=(("user", "SessionId"), ("session", "SessionId"), ("item", "ItemId"),
                               ("time", "Time")))


def _retailrocket(path: Path) -> SourceSpec:
    return SourceSpec(id_type="int", fmt="csv", sep=",", header=True, time_unit="ms",
                      columns=(("user", "visitorid"), ("item", "itemid"), ("event", "event"),
                               ("time", "timestamp")))


def _sep_for(path: Path) -> str:
    return "\t" if path.suffix.lower() in (".tsv", ".tab") else ","


def _first_line(path: Path) -> str:
    if not path.exists():
        raise InputError(f"{path}: no such file")
    with open(path, "rb") as f:
        return f.readline().removeprefix(UTF8_BOM).decode("utf-8", "replace").rstrip("\r\n")


def _column_names(path: Path, fmt: str, sep: str) -> list[str]:
    """Column names of a file for the default map, as its format (given, or by suffix) lists them."""
    spec_fmt = SourceSpec(fmt=fmt, columns=(("user", "u"), ("item", "i"), ("time", "t"), ("event", "e"))).format_of(
        path)
    return column_names(path, spec_fmt, sep)


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


# Every named source but the generic "events", the one place to add one (and a row of the table above):
# its SourceSpec for a file.
_NAMED: dict[str, Callable[[Path], SourceSpec]] = {
    "taobao": _taobao, "rc15": _rc15, "sessionrec": _sessionrec, "retailrocket": _retailrocket,
    "movielens": _movielens,
}
SOURCES: tuple[str, ...] = ("events", *_NAMED)  # the --source choices
