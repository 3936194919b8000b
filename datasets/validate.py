"""Parse and check raw batches into typed event rows; every rejected row gets a field and a reason.

Each field parser returns the parsed values and a per-row reason code (0 = fine). A row is quarantined
for the first field, in schema order, that fails; so each bad row appears in quarantine exactly once. A good
row whose event type the map sends to `drop` is excluded and counted by raw event name; so rows kept +
rows quarantined + rows excluded = rows read. The fast path is one vectorised cast per column; only a batch
that fails it pays for an element-wise look at the offending values.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .readers import BadRows, RawBatch
from .schema import EVENT_SYNONYMS, EVENT_TYPES, MAX_STRING_ID_BYTES, REASON_CODE, REASONS

_INT64_MAX = np.iinfo(np.int64).max
_US_PER = {"s": 1_000_000, "ms": 1_000, "us": 1}
_NUMBER_RE = r"^\s*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\s*$|^\s*[+-]?(nan|NaN|NAN|inf|Inf|INF)\s*$"
_CANONICAL_INT_RE = r"^(0|[1-9][0-9]{0,17}|[1-8][0-9]{18}|9[01][0-9]{17}|92[0-1][0-9]{16})$"  # < 9.22e18
_POWERS_OF_TEN = 10 ** np.arange(1, 19, dtype=np.int64)
# the latest time kept, in microseconds: 2262-04-11T23:47:16.854775Z, the end of what int64 nanoseconds (numpy's
# and pandas' datetime64[ns]) hold, so prepared times load anywhere; the same for numbers, ISO text and typed columns
MAX_TIME_US = _INT64_MAX // 1000

AUTO_INT_SHARE = 0.99  # share of canonical integers in the first values that makes an "auto" id column int
MISSING = REASON_CODE["missing_value"]
UNPARSABLE = REASON_CODE["unparsable_value"]
OUT_OF_RANGE = REASON_CODE["id_out_of_range"]


DROP = "drop"  # event-map target: rows of that raw event type are excluded (counted, not quarantined)


def drop_code(k: int) -> int:
    """Event code of the k-th dropped raw name (negative, so no kept row can carry it)."""
    return -(k + 1)


@dataclass(frozen=True)
class EventTypes:
    """Event type names by code (canonical first, then extra mapped types), their rewards, and the lookup.

    Raw names mapped to `drop` get the negative codes drop_code(0), drop_code(1), ... in `dropped` order.
    """

    names: tuple[str, ...]
    rewards: tuple[float, ...]
    lookup: tuple[tuple[str, int], ...]  # raw name -> code
    dropped: tuple[str, ...] = ()       # raw names whose rows are excluded

    @staticmethod
    def build(event_map: tuple[tuple[str, str], ...], rewards: dict[str, float]) -> EventTypes:
        """Canonical types + synonyms + the user's map (a later entry for the same raw name wins); a map
        target that is a number makes a new type, `drop` excludes that raw type."""
        names = list(EVENT_TYPES)
        values = [float(rewards[n]) for n in EVENT_TYPES]
        lookup: dict[str, int] = {n: i for i, n in enumerate(EVENT_TYPES)}
        lookup.update({raw: EVENT_TYPES.index(t) for raw, t in EVENT_SYNONYMS.items()})
        dropped: list[str] = []
        for raw, target in dict(event_map).items():
            if target in EVENT_TYPES:
                lookup[raw] = EVENT_TYPES.index(target)
                continue
            if target == DROP:
                lookup[raw] = drop_code(len(dropped))
                dropped.append(raw)
                continue
            try:
                reward = float(target)
            except ValueError:
                raise ValueError(f"event map {raw}={target}: the target must be one of {', '.join(EVENT_TYPES)}, "
                                 f"{DROP!r} to exclude those rows, or a reward number for a new event type") from None
            if not math.isfinite(reward):
                raise ValueError(f"event map {raw}={target}: reward must be finite")
            lookup[raw] = len(names)
            names.append(raw)
            values.append(reward)
        return EventTypes(tuple(names), tuple(values), tuple(sorted(lookup.items())), tuple(dropped))


@dataclass
class Validator:
    """Turns RawBatches of one file into typed event tables; remembers id types decided on first sight.

    `id_types` maps user/item/session to "int" or "string"; "auto" is decided from the first batch that
    has values: int when at least 99% are canonical integers (no sign, no leading zeros; the rest are then
    quarantined), else string.
    """

    path: str
    file_index: int
    event_types: EventTypes
    time_unit: str = "auto"
    constant_event: str | None = None
    id_types: dict[str, str] = field(default_factory=dict)
    excluded: np.ndarray = field(init=False, repr=False)  # rows excluded so far, per event_types.dropped name
    _lookup_keys: pa.Array = field(init=False, repr=False)
    _lookup_codes: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        keys, codes = zip(*self.event_types.lookup)
        self._lookup_keys = pa.array(keys, pa.string())
        self._lookup_codes = np.asarray(codes, np.int16)
        self.excluded = np.zeros(len(self.event_types.dropped), np.int64)
        if self.constant_event is not None and self.constant_event not in dict(self.event_types.lookup):
            raise ValueError(f"--event-type {self.constant_event!r} is not one of "
                             f"{', '.join(self.event_types.names)} (or a mapped name)")

    def __call__(self, raw: RawBatch, bad: BadRows) -> pa.Table:
        """Typed rows that passed every check; each failing row is appended to `bad` once, and each good row
        of a dropped event type is counted in `excluded` (a bad row is quarantined, never excluded)."""
        t = raw.table
        n = t.num_rows
        reason = np.zeros(n, np.int8)
        failed_field = np.full(n, -1, np.int16)
        columns: dict[str, pa.Array | np.ndarray] = {}
        texts: dict[str, pa.Array] = {}  # decoded source values, for naming offending values
        names = sorted(t.column_names, key=_schema_order)

        def note(i: int, codes: np.ndarray) -> None:
            m = (reason == 0) & (codes != 0)
            reason[m] = codes[m]
            failed_field[m] = i

        for i, name in enumerate(names):
            arr, undecodable = _decode(t.column(name))
            texts[name] = arr
            note(i, np.where(undecodable, REASON_CODE["undecodable_bytes"], 0).astype(np.int8))
            if name in ("user_id", "item_id", "session_id"):
                kind = self._id_type(name, arr)
                columns[name], codes = parse_ids(arr, kind)
            elif name == "timestamp":
                columns[name], codes = parse_times(arr, self.time_unit)
            elif name == "event_type":
                columns["event"], codes = self._parse_events(arr)
            elif name == "propensity":
                columns[name], codes = parse_numbers(arr, required=False)
                vals = columns[name]
                bad_p = ~np.isnan(vals) & ((vals <= 0) | (vals > 1))
                bad_p |= np.isnan(vals) & (codes == 0) & ~_is_missing(arr)
                codes = np.where(bad_p & (codes == 0), REASON_CODE["propensity_out_of_range"], codes)
            elif name == "value":
                columns[name], codes = parse_numbers(arr, required=False)
                vals = columns[name]
                nonfinite = ~np.isfinite(vals) & ~_is_missing(arr)
                codes = np.where(nonfinite & (codes == 0), UNPARSABLE, codes)
            else:  # nudge_id and free feature columns: passed through, empty text -> null
                columns[name] = _empty_to_null(arr)
                codes = np.zeros(n, np.int8)
            note(i, codes.astype(np.int8))

        if "event_type" not in names:
            code = dict(self.event_types.lookup)[self.constant_event]  # type: ignore[index]
            columns["event"] = np.full(n, code, np.int16)

        ok = reason == 0
        if not ok.all():
            _record_bad(bad, raw.rows, reason, failed_field, names, texts)
        if len(self.excluded):
            drop = ok & (columns["event"] < 0)
            if drop.any():
                self.excluded += np.bincount(-1 - columns["event"][drop].astype(np.int64),
                                             minlength=len(self.excluded))
                ok &= ~drop
        keep = np.flatnonzero(ok)
        all_ok = len(keep) == n
        out = {}
        for name, col in columns.items():
            if isinstance(col, np.ndarray):
                # NaN in propensity/value only ever means "not given" (NaN text is quarantined): store null
                out[name] = pa.array(col if all_ok else col[keep], from_pandas=name in ("propensity", "value"))
            else:
                out[name] = col if all_ok else col.take(pa.array(keep))
        out["_file"] = pa.array(np.full(len(keep), self.file_index, np.int16))
        out["_row"] = pa.array(raw.rows if all_ok else raw.rows[keep])
        return pa.table(out)

    def _id_type(self, name: str, arr: pa.Array) -> str:
        kind = self.id_types.get(name, "auto")
        if kind != "auto":
            return kind
        values = arr.drop_null()
        if pa.types.is_string(values.type):
            values = values.filter(pc.not_equal(values, ""))
        if len(values) == 0:
            return "auto"  # decide on a later batch
        if pa.types.is_integer(values.type):
            kind = "int"
        elif pa.types.is_string(values.type):
            # int when (nearly) all are canonical integers: a few stray values are then quarantined as
            # unparsable instead of silently turning the whole column into text
            ints = pc.sum(pc.match_substring_regex(values, _CANONICAL_INT_RE)).as_py() or 0
            kind = "int" if ints >= AUTO_INT_SHARE * len(values) else "string"
        else:
            kind = "string"
        self.id_types[name] = kind
        return kind

    def _parse_events(self, arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        if pa.types.is_dictionary(arr.type):  # look up each distinct name once, then gather by index
            codes, reason = self._parse_events(_as_text(arr.dictionary))
            idx = arr.indices.fill_null(0).to_numpy(zero_copy_only=False)
            null = arr.is_null().to_numpy(zero_copy_only=False) if arr.null_count else np.zeros(len(arr), bool)
            if not len(codes):
                return np.zeros(len(arr), np.int16), np.full(len(arr), MISSING, np.int8)
            return codes[idx], np.where(null, MISSING, reason[idx]).astype(np.int8)
        text = _as_text(arr)
        idx = pc.index_in(text, value_set=self._lookup_keys)
        if idx.null_count:  # retry the misses case- and space-insensitively
            norm = pc.utf8_lower(pc.utf8_trim_whitespace(text))
            idx = pc.coalesce(idx, pc.index_in(norm, value_set=self._lookup_keys))
        missing = _is_missing(text)
        found = idx.is_valid().to_numpy(zero_copy_only=False)
        codes = self._lookup_codes[idx.fill_null(0).to_numpy(zero_copy_only=False)]
        reason = np.where(missing, MISSING, np.where(found, 0, REASON_CODE["unknown_event_type"]))
        return codes, reason.astype(np.int8)


_ORDER = ("user_id", "session_id", "item_id", "event_type", "timestamp", "nudge_id", "propensity", "value")


def _schema_order(name: str) -> int:
    """Fields are checked in schema order, then features, so 'the first failing field' is well defined."""
    return _ORDER.index(name) if name in _ORDER else len(_ORDER)


def _decode(arr: pa.ChunkedArray | pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Binary -> UTF-8 text, marking undecodable values (fast cast first, element-wise only on failure)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.chunk(0) if arr.num_chunks == 1 else arr.combine_chunks()
    n = len(arr)
    if pa.types.is_dictionary(arr.type) and pa.types.is_binary(arr.type.value_type):
        values, bad_values = _decode(arr.dictionary)  # each distinct value decoded once
        decoded = pa.DictionaryArray.from_arrays(arr.indices, values)
        if not bad_values.any():
            return decoded, np.zeros(n, bool)
        return decoded, bad_values[arr.indices.fill_null(0).to_numpy(zero_copy_only=False)] & ~_is_missing(arr)
    if not pa.types.is_binary(arr.type) and not pa.types.is_large_binary(arr.type):
        return arr, np.zeros(n, bool)
    try:
        return arr.cast(pa.string()), np.zeros(n, bool)
    except pa.ArrowInvalid:
        values, bad = [], np.zeros(n, bool)
        for i, b in enumerate(arr.to_pylist()):
            try:
                values.append(None if b is None else b.decode("utf-8"))
            except UnicodeDecodeError:
                values.append(b.decode("utf-8", "replace"))
                bad[i] = True
        return pa.array(values, pa.string()), bad


def _as_text(arr: pa.Array) -> pa.Array:
    if pa.types.is_string(arr.type):
        return arr
    if pa.types.is_large_string(arr.type) or pa.types.is_dictionary(arr.type):
        return arr.cast(pa.string())
    return pc.cast(arr, pa.string())


def _is_missing(arr: pa.Array) -> np.ndarray:
    if arr.null_count == 0 and not pa.types.is_string(arr.type) and not pa.types.is_dictionary(arr.type):
        return np.zeros(len(arr), bool)
    if pa.types.is_dictionary(arr.type):
        null = arr.is_null().to_numpy(zero_copy_only=False).astype(bool, copy=False)
        if not pa.types.is_string(arr.type.value_type) or not len(arr.dictionary):
            return null
        empty = pc.equal(pc.binary_length(arr.dictionary), 0).to_numpy(zero_copy_only=False)
        return null | empty[arr.indices.fill_null(0).to_numpy(zero_copy_only=False)]
    missing = arr.is_null()
    if pa.types.is_string(arr.type):
        missing = pc.or_(missing, pc.equal(pc.binary_length(arr), 0).fill_null(False))
    return missing.to_numpy(zero_copy_only=False).astype(bool, copy=False)


def _empty_to_null(arr: pa.Array) -> pa.Array:
    if pa.types.is_dictionary(arr.type) and pa.types.is_string(arr.type.value_type):
        empty = pc.equal(pc.binary_length(arr.dictionary), 0).to_numpy(zero_copy_only=False)
        if not empty.any():
            return arr
        idx = arr.indices.fill_null(0).to_numpy(zero_copy_only=False)
        mask = pa.array(empty[idx])
        indices = pc.if_else(mask, pa.scalar(None, arr.indices.type), arr.indices)
        return pa.DictionaryArray.from_arrays(indices, arr.dictionary)
    if not pa.types.is_string(arr.type):
        return arr
    empty = pc.equal(pc.binary_length(arr), 0)
    return pc.if_else(empty, pa.scalar(None, pa.string()), arr) if pc.any(empty).as_py() else arr


def parse_ids(arr: pa.Array, kind: str) -> tuple[pa.Array, np.ndarray]:
    """Ids as int64 (kind "int") or string (kind "string", or "auto" with no values yet)."""
    n = len(arr)
    missing = _is_missing(arr)
    codes = np.where(missing, MISSING, 0).astype(np.int8)
    if kind != "int":
        text = _as_text(arr)
        too_long = pc.greater(pc.binary_length(text), MAX_STRING_ID_BYTES).to_numpy(zero_copy_only=False)
        codes[(codes == 0) & np.asarray(too_long, bool)] = OUT_OF_RANGE
        return text, codes
    if pa.types.is_integer(arr.type):
        ints = arr.cast(pa.int64())
        vals = (ints.fill_null(0) if ints.null_count else ints).to_numpy()
        if (vals < 0).any():
            codes[(codes == 0) & (vals < 0)] = OUT_OF_RANGE
        return (ints if ints.null_count == 0 else pa.array(vals)), codes
    if pa.types.is_floating(arr.type):
        f = arr.fill_null(0).to_numpy(zero_copy_only=False)
        integral = np.isfinite(f) & (np.floor(f) == f)
        codes[(codes == 0) & ~integral] = UNPARSABLE
        codes[(codes == 0) & ((f < 0) | (f >= 2.0**63))] = OUT_OF_RANGE
        return pa.array(np.where(codes == 0, f, 0).astype(np.int64)), codes
    text = _as_text(arr)
    try:  # fast path: every value casts; then check it was written canonically (no sign, no leading zeros)
        vals = pc.cast(text, pa.int64()).fill_null(0).to_numpy()
        digits = 1 + np.searchsorted(_POWERS_OF_TEN, np.abs(vals), side="right")
        length = pc.binary_length(text).fill_null(0).to_numpy(zero_copy_only=False)
        canonical = (length == digits) & (vals >= 0)
        negative = vals < 0
        codes[(codes == 0) & negative] = OUT_OF_RANGE
        codes[(codes == 0) & ~canonical] = UNPARSABLE
    except (pa.ArrowInvalid, OverflowError):
        ok = pc.match_substring_regex(text, _CANONICAL_INT_RE).fill_null(False).to_numpy(zero_copy_only=False)
        numeric = pc.match_substring_regex(text, r"^-?[0-9]+$").fill_null(False).to_numpy(zero_copy_only=False)
        codes[(codes == 0) & numeric & ~ok & ~np.asarray(
            pc.starts_with(text, "0").fill_null(False).to_numpy(zero_copy_only=False), bool)] = OUT_OF_RANGE
        codes[(codes == 0) & ~ok] = UNPARSABLE
        safe = pc.if_else(pa.array(codes == 0), text, pa.scalar("0"))
        vals = pc.cast(safe, pa.int64()).fill_null(0).to_numpy()
    vals = np.where(codes == 0, vals, 0)
    assert len(vals) == n
    return pa.array(vals, pa.int64()), codes


def parse_numbers(arr: pa.Array, required: bool) -> tuple[np.ndarray, np.ndarray]:
    """Float64 values (NaN where missing) and reason codes; text goes through a fast cast first."""
    missing = _is_missing(arr)
    codes = np.where(missing & required, MISSING, 0).astype(np.int8)
    if pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type):
        f = arr.cast(pa.float64())
        return (f.fill_null(np.nan) if f.null_count else f).to_numpy(zero_copy_only=False), codes
    text = _as_text(arr)
    text_or_null = _empty_to_null(text)
    try:
        vals = pc.cast(text_or_null, pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid:
        ok = pc.match_substring_regex(text_or_null, _NUMBER_RE).fill_null(True).to_numpy(zero_copy_only=False)
        codes[(codes == 0) & ~ok] = UNPARSABLE
        safe = pc.if_else(pa.array(ok), text_or_null, pa.scalar(None, pa.string()))
        vals = pc.cast(pc.utf8_trim_whitespace(safe), pa.float64()).fill_null(np.nan).to_numpy(
            zero_copy_only=False)
    return vals, codes


def parse_times(arr: pa.Array, unit: str) -> tuple[np.ndarray, np.ndarray]:
    """Microseconds since the epoch (UTC) and reason codes; numbers use `unit`, text may be ISO-8601. Every
    format gets the same range, [1970-01-01, MAX_TIME_US]: earlier is negative_time, later time_out_of_range."""
    us, codes = _parse_times_any(arr, unit)
    late = (codes == 0) & (us > MAX_TIME_US)
    if late.any():
        codes = np.where(late, REASON_CODE["time_out_of_range"], codes).astype(np.int8)
        us = np.where(late, 0, us)
    return us, codes


def _parse_times_any(arr: pa.Array, unit: str) -> tuple[np.ndarray, np.ndarray]:
    n = len(arr)
    if pa.types.is_timestamp(arr.type):
        missing = _is_missing(arr)
        us = arr.cast(pa.timestamp("us", tz=arr.type.tz)).cast(pa.int64())
        us = (us.fill_null(0) if us.null_count else us).to_numpy()
        codes = np.where(missing, MISSING, np.where(us < 0, REASON_CODE["negative_time"], 0))
        return us, codes.astype(np.int8)
    if pa.types.is_integer(arr.type) and unit != "iso":
        missing = arr.is_null().to_numpy(zero_copy_only=False)
        vals = arr.cast(pa.int64()).fill_null(0).to_numpy()
        mult = _US_PER.get(unit, 1_000_000)
        over = np.abs(vals) > _INT64_MAX // mult
        codes = np.where(missing, MISSING, np.where(over, REASON_CODE["time_out_of_range"],
                                                    np.where(vals < 0, REASON_CODE["negative_time"], 0)))
        return np.where(codes == 0, vals * mult, 0), codes.astype(np.int8)
    if unit == "iso":
        return _parse_iso(_as_text(arr))
    if unit == "auto" and pa.types.is_string(arr.type):
        try:  # all ISO-8601 text: one cast, no number parsing first
            return _iso_fast(arr)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    nums, codes = parse_numbers(arr, required=True)
    if unit == "auto" and (codes == UNPARSABLE).any():
        # text that is not a number: try it as an ISO-8601 timestamp
        text = _as_text(arr)
        sel = np.flatnonzero(codes == UNPARSABLE)
        iso_us, iso_codes = _parse_iso(text.take(pa.array(sel)))
        out = _numbers_to_us(nums, codes, 1_000_000)
        out[0][sel], out[1][sel] = iso_us, iso_codes
        return out
    assert len(nums) == n
    return _numbers_to_us(nums, codes, _US_PER.get(unit, 1_000_000))


def _numbers_to_us(nums: np.ndarray, codes: np.ndarray, mult: int) -> tuple[np.ndarray, np.ndarray]:
    codes = codes.copy()
    nan = np.isnan(nums) & (codes == 0)
    codes[nan] = REASON_CODE["nan_time"]
    with np.errstate(invalid="ignore", over="ignore"):
        us = np.rint(nums * mult)
        codes[(codes == 0) & ~(np.abs(us) < 9.2e18)] = REASON_CODE["time_out_of_range"]
        codes[(codes == 0) & (us < 0)] = REASON_CODE["negative_time"]
        return np.where(codes == 0, us, 0).astype(np.int64), codes


def _iso_fast(text: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Whole-array ISO-8601 cast (with offset, else naive as UTC); raises if any value does not cast."""
    missing = _is_missing(text)
    text = _empty_to_null(text)
    try:
        us = pc.cast(text, pa.timestamp("us", tz="UTC"))
    except pa.ArrowInvalid:
        us = pc.cast(text, pa.timestamp("us"))
    us = us.cast(pa.int64())
    vals = (us.fill_null(0) if us.null_count else us).to_numpy()
    codes = np.where(missing, MISSING, np.where(vals < 0, REASON_CODE["negative_time"], 0)).astype(np.int8)
    return np.where(codes == 0, vals, 0), codes


def _parse_iso(text: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    try:
        return _iso_fast(text)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    missing = _is_missing(text)
    codes = np.where(missing, MISSING, 0).astype(np.int8)
    text = _empty_to_null(text)
    us = np.zeros(len(text), np.int64)
    for i, s in enumerate(text.to_pylist()):  # element-wise fallback names each bad value
        if s is None:
            continue
        try:
            t = dt.datetime.fromisoformat(s.strip().replace("Z", "+00:00") if s.strip().endswith("Z") else s.strip())
        except ValueError:
            codes[i] = UNPARSABLE
            continue
        if t.tzinfo is None:
            t = t.replace(tzinfo=dt.UTC)
        delta = t - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
        us[i] = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
        if us[i] < 0:
            codes[i] = REASON_CODE["negative_time"]
    return np.where(codes == 0, us, 0), codes


def _record_bad(bad: BadRows, rows: np.ndarray, reason: np.ndarray, failed_field: np.ndarray,
                names: list[str], texts: dict[str, pa.Array]) -> None:
    idx = np.flatnonzero(reason != 0)
    for f in np.unique(failed_field[idx]):
        sel = idx[failed_field[idx] == f]
        name = names[f]
        values = _as_text(texts[name].take(pa.array(sel))).to_pylist()
        for i, v in zip(sel.tolist(), values):
            bad.add(int(rows[i]), name, REASONS[reason[i] - 1], "" if v is None else str(v))
