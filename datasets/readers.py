"""Streaming readers: CSV/TSV, Parquet and JSONL files into Arrow batches named by the event schema.

Formats are listed once, in `_FORMATS` at the end (name, file suffixes, reader, column names): adding one
there adds it to --format, to the detection by suffix and to the generic adapter's default map.

A reader yields `RawBatch`es: the mapped columns as read (bytes for CSV, typed for Parquet/JSON), the
1-based row number of every row, and the rows the reader itself could not split (wrong column count,
malformed JSON, undecodable bytes) as `BadRows`. Parsing and checking values is `validate`'s job.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.json as pjson
import pyarrow.parquet as pq

from .schema import COLUMN_OF_FIELD, FIELDS, REQUIRED_FIELDS

PARSED_FIELDS = ("user", "item", "session", "time", "propensity", "value")  # read plain, parsed value by value
TIME_UNITS = ("auto", "s", "ms", "us", "iso")


class InputError(ValueError):
    """A problem with an input file that stops the run: the message names the file (and row, field)."""


@dataclass(frozen=True)
class SourceSpec:
    """How to read one log format into the event schema (a generic reader plus a column map)."""

    fmt: str = "auto"               # csv | parquet | jsonl | auto (by file suffix)
    sep: str = ","                  # CSV field separator
    header: bool = True             # CSV has a header line; without one, map columns by 0-based position
    columns: tuple[tuple[str, str], ...] = ()  # (field or feature name, source column); see schema.FIELDS
    time_unit: str = "auto"         # auto (numbers are seconds, text is ISO-8601) | s | ms | us | iso
    event_type: str | None = None   # constant event type for files without an event column
    event_map: tuple[tuple[str, str], ...] = ()  # raw event name -> canonical type or a reward number
    id_type: str = "auto"           # the format's id type when known (named adapters: int); see validate

    def __post_init__(self) -> None:
        if self.fmt not in ("auto", *FORMATS):
            raise ValueError(f"format must be one of auto, {', '.join(FORMATS)}; got {self.fmt!r}")
        if self.time_unit not in TIME_UNITS:
            raise ValueError(f"time unit must be one of {', '.join(TIME_UNITS)}; got {self.time_unit!r}")
        if self.id_type not in ("auto", "int", "string"):
            raise ValueError(f"id type must be auto, int or string; got {self.id_type!r}")
        if len(self.sep) != 1:
            raise ValueError(f"separator must be one character; got {self.sep!r}")
        names = [name for name, _ in self.columns]
        if len(set(names)) != len(names):
            raise ValueError(f"a field is mapped twice in {names}")
        missing = [f for f in REQUIRED_FIELDS if f not in names]
        if missing:
            raise ValueError(f"the column map lacks required field(s) {missing}: give --map {missing[0]}=COLUMN")
        if "event" not in names and self.event_type is None:
            raise ValueError("the column map has no 'event' column: map one or give a constant --event-type")

    def target_name(self, name: str) -> str:
        """Column name in the event table: the schema name for a field, the name itself for a feature."""
        return COLUMN_OF_FIELD.get(name, name)

    def format_of(self, path: Path) -> str:
        """The file format, from the spec or the file suffix (compressed suffixes like .csv.gz work)."""
        if self.fmt != "auto":
            return self.fmt
        for suffix in reversed([s.lower() for s in path.suffixes]):
            if suffix in _FORMAT_OF_SUFFIX:
                return _FORMAT_OF_SUFFIX[suffix]
        return FORMATS[0]  # unknown suffixes are read as CSV


@dataclass
class BadRows:
    """Rows rejected by a reader or validator, columnar so that millions of them stay cheap."""

    rows: list[int] = field(default_factory=list)
    fields: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    values: list[str] = field(default_factory=list)

    def add(self, row: int, field_name: str, reason: str, value: str) -> None:
        self.rows.append(row)
        self.fields.append(field_name)
        self.reasons.append(reason)
        self.values.append(value[:200])

    def __len__(self) -> int:
        return len(self.rows)


@dataclass
class RawBatch:
    """Mapped columns as read, the 1-based row number of each row, and rows the reader rejected."""

    table: pa.Table
    rows: np.ndarray  # (N,) int64
    bad: BadRows
    bytes_read: int = 0  # bytes of the file consumed so far (for progress bars)


def parse_map(text: str) -> tuple[tuple[str, str], ...]:
    """Parse `user=uid,item=sku,time=ts` into ((field, column), ...); keys outside FIELDS are features."""
    pairs = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            raise ValueError(f"--map entry {part!r} is not KEY=COLUMN (keys: {', '.join(FIELDS)} or a feature name)")
        key, col = (s.strip() for s in part.split("=", 1))
        if not key or not col:
            raise ValueError(f"--map entry {part!r} has an empty key or column")
        pairs.append((key, col))
    return tuple(pairs)


UTF8_BOM = b"\xef\xbb\xbf"  # skipped at the start of a text file (pyarrow's CSV reader skips it too)
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")  # also the start of UTF-32's marks
CLIP_CHARS = 200  # the most characters of a header or value an error message echoes


def clip(text: str, n: int = CLIP_CHARS) -> str:
    """`text` cut to `n` characters + "..." so that an error about a huge line fits a screen."""
    return text if len(text) <= n else text[:n] + "..."


def check_text_encoding(path: Path) -> None:
    """Raise InputError (one line naming the file) for a text file that looks UTF-16 (or UTF-32) encoded: a
    UTF-16 byte-order mark, or NUL bytes in every other position of the first characters (ASCII as UTF-16)."""
    with open(path, "rb") as f:
        head = f.read(256)
    head = head[: len(head) // 2 * 2]
    if head.startswith((*_UTF16_BOMS, b"\x00\x00\xfe\xff")) or (
            len(head) >= 4 and (set(head[0::2]) == {0} or set(head[1::2]) == {0})):
        raise InputError(f"{path}: looks UTF-16 encoded; convert to UTF-8 (e.g. iconv -f UTF-16 -t UTF-8)")


class _CountingFile(io.RawIOBase):
    """A read-only file that counts the bytes pyarrow pulls through it (for the progress bar) and ends a last
    line that has no newline with one (pyarrow's streaming reader would otherwise read a one-line file as empty)."""

    def __init__(self, path: Path) -> None:
        self._f = open(path, "rb")  # noqa: SIM115 - closed by close()
        self.count = 0
        self._last = b"\n"  # the last byte handed out; a newline "before" the file, so an empty file stays empty
        self._ended = False

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        n = self._f.readinto(b)
        if n:
            self.count += n
            self._last = bytes(memoryview(b)[n - 1:n])
            return n
        if not self._ended and self._last not in (b"\n", b"\r") and len(b):
            self._ended = True
            b[0:1] = b"\n"
            return 1
        return n

    def close(self) -> None:
        self._f.close()
        super().close()


def read_file(path: Path, spec: SourceSpec, batch_rows: int = 1 << 20) -> Iterator[RawBatch]:
    """Stream one file as RawBatches; raise InputError (one clear line) for a missing or unusable file."""
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not an event file")
    fmt = spec.format_of(path)
    if fmt != "parquet":
        check_text_encoding(path)
    return _FORMAT_OF_NAME[fmt].read(path, spec, batch_rows)


def column_names(path: Path, fmt: str, sep: str = ",") -> list[str]:
    """Column names of a file of format `fmt` (CSV with separator `sep`), for a default column map: the
    Parquet schema, the CSV header, the keys of the first JSON object."""
    if not path.exists():
        raise InputError(f"{path}: no such file")
    return _FORMAT_OF_NAME[fmt].columns(path, sep)


def _missing_columns_error(path: Path, spec: SourceSpec, available: list[str]) -> InputError | None:
    wanted = [col for _, col in spec.columns]
    missing = [c for c in wanted if c not in available]
    if not missing:
        return None
    shown = clip(", ".join(available[:30]) + (" ..." if len(available) > 30 else ""))
    hint = "" if spec.header else " (no header: columns are addressed by 0-based position)"
    return InputError(f"{path}: no column {clip(repr(missing[0]))} for the map{hint}; the file has: {shown}")


def _csv_probe(path: Path, spec: SourceSpec, block_size: int) -> list[str]:
    """Column names as pyarrow reads them from the first block of `block_size` bytes ([] for an empty file)."""
    probe_file = _CountingFile(path)
    try:
        probe = pcsv.open_csv(
            io.BufferedReader(probe_file, buffer_size=1 << 16),
            read_options=pcsv.ReadOptions(use_threads=False, autogenerate_column_names=not spec.header,
                                          block_size=block_size),
            parse_options=pcsv.ParseOptions(delimiter=spec.sep, invalid_row_handler=lambda r: "skip"),
            convert_options=pcsv.ConvertOptions(column_types={}, include_columns=[]),
        )
        names = probe.schema.names
        probe.close()
        return names
    except pa.ArrowInvalid as e:
        if "Empty CSV file" in str(e) and not _has_text(path):
            return []
        raise
    finally:
        probe_file.close()


def _has_text(path: Path) -> bool:
    """Whether the file holds anything but line ends (an empty file has no columns to find)."""
    with open(path, "rb") as f:
        while chunk := f.read(1 << 16):
            if chunk.strip(b"\r\n"):
                return True
    return False


def _read_csv(path: Path, spec: SourceSpec, batch_rows: int) -> Iterator[RawBatch]:
    """CSV/TSV via pyarrow's streaming reader, single-threaded so that bad rows keep their line numbers."""
    header_lines = 1 if spec.header else 0
    block_size = max(1 << 20, batch_rows * 24)
    try:
        try:  # a small first block is enough for the names, unless the first lines are very long
            names = _csv_probe(path, spec, 1 << 16)
        except pa.ArrowInvalid:
            names = _csv_probe(path, spec, block_size)
    except (pa.ArrowInvalid, pa.ArrowKeyError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not a readable CSV file ({clip(str(e).splitlines()[0])})") from None
    if not spec.header:
        # autogenerated names are f0, f1, ...; the map addresses them by position "0", "1", ...
        names = [str(i) for i in range(len(names))]
    if not names:
        return
    err = _missing_columns_error(path, spec, names)
    if err:
        raise err
    source_cols = list(dict.fromkeys(col for _, col in spec.columns))  # a column may feed two fields
    arrow_cols = source_cols if spec.header else [f"f{c}" for c in source_cols]
    # bytes, validated as UTF-8 later; low-cardinality text (event, nudge, features) as dictionaries
    plain = {col for f, col in spec.columns if f in PARSED_FIELDS}
    types = [pa.binary() if c in plain else pa.dictionary(pa.int32(), pa.binary()) for c in source_cols]
    bad_lines: list[tuple[int, str]] = []

    def on_invalid(row) -> str:  # called for rows with too many or too few fields
        bad_lines.append((int(row.number), row.text))
        return "skip"

    counting = _CountingFile(path)
    reader = pcsv.open_csv(
        io.BufferedReader(counting, buffer_size=1 << 20),
        read_options=pcsv.ReadOptions(use_threads=False, block_size=max(1 << 20, batch_rows * 24),
                                      autogenerate_column_names=not spec.header),
        parse_options=pcsv.ParseOptions(delimiter=spec.sep, invalid_row_handler=on_invalid,
                                        ignore_empty_lines=False),
        convert_options=pcsv.ConvertOptions(column_types=dict(zip(arrow_cols, types)),
                                            include_columns=arrow_cols, strings_can_be_null=False,
                                            quoted_strings_can_be_null=False),
    )
    next_line = header_lines + 1  # line number of the next row not yet handed out
    pending: list[int] = []        # invalid line numbers not yet placed
    try:
        for batch in reader:
            n = batch.num_rows
            bad = BadRows()
            new_invalid = sorted(bad_lines)
            bad_lines.clear()
            for line, text in new_invalid:
                bad.add(line, "*", "wrong_column_count", text)
            pending = sorted(pending + [line for line, _ in new_invalid])
            rows, next_line, pending = _line_numbers(next_line, n, pending)
            table = _mapped(spec, batch, dict(zip(source_cols, arrow_cols)))
            yield RawBatch(table, rows, bad, counting.count)
        if bad_lines:  # invalid rows after the last batch
            bad = BadRows()
            for line, text in sorted(bad_lines):
                bad.add(line, "*", "wrong_column_count", text)
            empty = pa.table({spec.target_name(k): pa.array([], pa.binary()) for k, _ in spec.columns})
            yield RawBatch(empty, np.empty(0, np.int64), bad, counting.count)
    except pa.ArrowInvalid as e:
        raise InputError(f"{path}: CSV parse error near line {next_line}: {clip(str(e).splitlines()[0])}") from None
    finally:
        reader.close()
        counting.close()


def _mapped(spec: SourceSpec, batch: pa.RecordBatch, arrow_name: dict[str, str]) -> pa.Table:
    """The batch's mapped columns under their event-table names (one source column may feed two fields)."""
    return pa.table({spec.target_name(k): batch.column(arrow_name[col]) for k, col in spec.columns})


def _line_numbers(start: int, n: int, invalid: list[int]) -> tuple[np.ndarray, int, list[int]]:
    """Line numbers of the next n valid rows from `start`, skipping invalid lines; returns the leftover."""
    if not invalid:
        return np.arange(start, start + n, dtype=np.int64), start + n, []
    span = np.arange(start, start + n + len(invalid), dtype=np.int64)
    keep = span[~np.isin(span, np.asarray(invalid, np.int64))][:n]
    end = int(keep[-1]) + 1 if n else start
    # invalid lines before `end` are consumed; the rest belong to later batches
    leftover = [i for i in invalid if i >= end]
    while leftover and leftover[0] == end:  # invalid lines directly after this batch are consumed too
        end += 1
        leftover.pop(0)
    return keep, end, leftover


def _read_parquet(path: Path, spec: SourceSpec, batch_rows: int) -> Iterator[RawBatch]:
    """Parquet in record batches of the mapped columns; row numbers are 1-based row indices."""
    try:
        pf = pq.ParquetFile(str(path))
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
    err = _missing_columns_error(path, spec, pf.schema_arrow.names)
    if err:
        raise err
    source_cols = list(dict.fromkeys(col for _, col in spec.columns))
    # low-cardinality text (event type, nudge, features) decodes far faster as dictionaries; ids and times
    # stay plain because they are parsed value by value
    plain = {col for f, col in spec.columns if f in PARSED_FIELDS}
    schema = pf.schema_arrow
    as_dict = [c for c in source_cols if c not in plain and pa.types.is_string(schema.field(c).type)]
    if as_dict:
        pf = pq.ParquetFile(str(path), read_dictionary=as_dict)
    start = 1
    size = path.stat().st_size
    total = max(pf.metadata.num_rows, 1)
    for batch in pf.iter_batches(batch_size=batch_rows, columns=source_cols):
        n = batch.num_rows
        table = _mapped(spec, batch, {c: c for c in source_cols})
        yield RawBatch(table, np.arange(start, start + n, dtype=np.int64), BadRows(),
                       int(size * min(1.0, (start + n - 1) / total)))
        start += n


def _read_jsonl(path: Path, spec: SourceSpec, batch_rows: int) -> Iterator[RawBatch]:
    """JSON Lines in blocks of whole lines: pyarrow parses a clean block, bad blocks go line by line."""
    source_cols = [col for _, col in spec.columns]
    targets = [spec.target_name(k) for k, _ in spec.columns]
    block_bytes = max(1 << 20, batch_rows * 64)
    line_no = 1
    consumed = 0
    with open(path, "rb") as f:
        tail = b""
        while True:
            chunk = f.read(block_bytes)
            data = tail + chunk
            if not chunk:
                if not data:
                    break
                block, tail = data, b""
            else:
                cut = data.rfind(b"\n")
                if cut < 0:
                    tail = data
                    continue
                block, tail = data[: cut + 1], data[cut + 1:]
            consumed += len(block)
            if line_no == 1 and consumed == len(block):
                block = block.removeprefix(UTF8_BOM)
            lines = block.split(b"\n")
            if lines and lines[-1] == b"":
                lines.pop()
            table, rows, bad = _parse_json_lines(block, lines, line_no, source_cols, targets)
            line_no += len(lines)
            yield RawBatch(table, rows, bad, consumed)
            if not chunk:
                break


def _parse_json_lines(block: bytes, lines: list[bytes], first_line: int, source_cols: list[str],
                      targets: list[str]) -> tuple[pa.Table, np.ndarray, BadRows]:
    bad = BadRows()
    if all(line.strip() for line in lines):
        try:
            t = pjson.read_json(io.BytesIO(block), read_options=pjson.ReadOptions(use_threads=False))
            if t.num_rows == len(lines):
                # every column as text, as the line-by-line path gives it: types never depend on the path
                cols = [t.column(c).cast(pa.string()) if c in t.column_names else pa.nulls(t.num_rows, pa.string())
                        for c in source_cols]
                return (pa.table(cols, names=targets),
                        np.arange(first_line, first_line + len(lines), dtype=np.int64), bad)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, UnicodeDecodeError):
            pass
    # slow path: one line at a time, so each bad line is named
    records: dict[str, list] = {c: [] for c in targets}
    rows = []
    for i, raw in enumerate(lines):
        line = first_line + i
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            bad.add(line, "*", "undecodable_bytes", raw.decode("utf-8", "replace"))
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            bad.add(line, "*", "malformed_row", text)
            continue
        if not isinstance(obj, dict):
            bad.add(line, "*", "malformed_row", text)
            continue
        rows.append(line)
        for src, dst in zip(source_cols, targets):
            v = obj.get(src)
            records[dst].append(None if v is None else (v if isinstance(v, str) else json.dumps(v)))
    table = pa.table({k: pa.array(v, pa.string()) for k, v in records.items()})
    return table, np.asarray(rows, dtype=np.int64), bad


def _csv_columns(path: Path, sep: str) -> list[str]:
    """The header's names; an error when none of them is a schema column (the file has no header, or another)."""
    check_text_encoding(path)
    with open(path, "rb") as f:
        line = f.readline().removeprefix(UTF8_BOM).decode("utf-8", "replace").rstrip("\r\n")
    names = [n.strip().strip('"') for n in line.split(sep)]
    if not any(n in COLUMN_OF_FIELD.values() for n in names):
        raise InputError(f"{path}: no usable column: the header has none of user_id, item_id, timestamp "
                         f"(it has: {clip(', '.join(names[:20]))}); give --map user=...,item=...,time=...")
    return names


def _parquet_columns(path: Path, sep: str) -> list[str]:
    """The Parquet schema's names."""
    try:
        return pq.ParquetFile(str(path)).schema_arrow.names
    except Exception as e:  # noqa: BLE001 - any failure here is an unreadable file
        raise InputError(f"{path}: not a readable Parquet file ({e})") from None


def _jsonl_columns(path: Path, sep: str) -> list[str]:
    """Keys of the first JSON object among the first lines (bad lines are quarantined later)."""
    check_text_encoding(path)
    with open(path, "rb") as f:
        for _, raw in zip(range(1000), f):
            try:
                obj = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                continue
            if isinstance(obj, dict):
                return list(obj)
    raise InputError(f"{path}: no JSON object in the first 1000 lines; cannot find column names")


@dataclass(frozen=True)
class Format:
    """One input format: its --format name, the file suffixes that mean it, its reader and its column names."""

    name: str
    suffixes: tuple[str, ...]
    read: Callable[[Path, SourceSpec, int], Iterator[RawBatch]]
    columns: Callable[[Path, str], list[str]]  # (path, CSV separator) -> column names


# Every input format, the one place to add one; the first also reads files of unknown suffix.
_FORMATS: tuple[Format, ...] = (
    Format("csv", (".csv", ".tsv", ".txt", ".dat", ".inter", ".data"), _read_csv, _csv_columns),
    Format("parquet", (".parquet", ".pq"), _read_parquet, _parquet_columns),
    Format("jsonl", (".jsonl", ".ndjson", ".json"), _read_jsonl, _jsonl_columns),
)
FORMATS: tuple[str, ...] = tuple(f.name for f in _FORMATS)  # the --format choices, with "auto"
_FORMAT_OF_NAME = {f.name: f for f in _FORMATS}
_FORMAT_OF_SUFFIX = {suffix: f.name for f in _FORMATS for suffix in f.suffixes}
