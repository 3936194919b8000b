"""The nudge catalogue (TOML -> frozen dataclasses) and logged nudge decisions from an event table.

A catalogue lists the arms a bandit chooses among (PAPERS.md section 5: four families of nudges), each with
a message template, and may restrict which arms go with which product or category. The arm order in the
file is the arm index the bandits use. `nudge_decisions` turns an event table whose rows carry `nudge_id`
and `propensity` into the (arm, reward, propensity) arrays the bandits are fitted on offline.
"""

from __future__ import annotations

import re
import string
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from seqrec.datasets.schema import DEFAULT_REWARDS
from seqrec.datasets.synthetic import NUDGE_FAMILIES

FAMILIES: tuple[str, ...] = NUDGE_FAMILIES  # the paper's four families; one source with the generator
ARM_KEYS: tuple[str, ...] = ("id", "family", "description", "template")
TOP_KEYS: tuple[str, ...] = ("arms", "products", "categories")
_ID = re.compile(r"[A-Za-z0-9_.\-]+")


class CatalogueError(ValueError):
    """A catalogue that cannot be used: names the file and the bad key or value."""


@dataclass(frozen=True)
class NudgeArm:
    """One way of presenting a product: id, family, what it does, and its message template."""

    id: str
    family: str
    description: str
    template: str          # str.format template with named {placeholders}, e.g. "{count} people chose {product}"

    @property
    def placeholders(self) -> tuple[str, ...]:
        """The placeholder names in the template, in order of first appearance."""
        return _placeholders(self.template)

    def render(self, **values: object) -> str:
        """The message with placeholders filled from `values` (extra values are ignored)."""
        missing = [p for p in self.placeholders if p not in values]
        if missing:
            raise ValueError(f"nudge {self.id!r} needs {', '.join('{' + m + '}' for m in missing)} to render; "
                             f"got values for: {', '.join(sorted(values)) or 'nothing'}")
        return self.template.format(**values)


@dataclass(frozen=True)
class NudgeCatalogue:
    """Arms in index order plus per-product and per-category allow-lists (read-only mappings)."""

    arms: tuple[NudgeArm, ...]
    products: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))
    categories: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))
    source: str = "<memory>"

    @property
    def ids(self) -> tuple[str, ...]:
        """Arm ids in index order (the bandit's arms)."""
        return tuple(a.id for a in self.arms)

    def index(self, arm_id: str) -> int:
        """Index of an arm id (ValueError naming it if unknown)."""
        try:
            return self.ids.index(arm_id)
        except ValueError:
            raise ValueError(f"unknown nudge {arm_id!r}; catalogue {self.source} has: "
                             f"{', '.join(self.ids)}") from None

    def arm(self, arm_id: str) -> NudgeArm:
        """The arm with this id."""
        return self.arms[self.index(arm_id)]

    def family_of(self, arm_id: str) -> str:
        """The family of an arm id."""
        return self.arm(arm_id).family

    def allowed(self, product: object = None, category: object = None) -> tuple[str, ...]:
        """Arm ids allowed with a product: its own list, else its category's, else all (catalogue order)."""
        if product is not None and str(product) in self.products:
            return self.products[str(product)]
        if category is not None and str(category) in self.categories:
            return self.categories[str(category)]
        return self.ids

    def mask(self, product: object = None, category: object = None) -> np.ndarray:
        """(A,) bool: which arms are allowed with a product (the bandits' `available`)."""
        allowed = set(self.allowed(product, category))
        return np.array([a in allowed for a in self.ids], dtype=bool)


def default_catalogue_path() -> Path:
    """Path of the catalogue shipped with the package (seqrec/nudging/nudges.toml)."""
    return Path(str(resources.files("seqrec.nudging").joinpath("nudges.toml")))


def load_catalogue(path: str | Path | None = None) -> NudgeCatalogue:
    """Read and validate a catalogue TOML file (the shipped default when path is None)."""
    p = default_catalogue_path() if path is None else Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise CatalogueError(f"{p}: no such nudge catalogue file") from None
    except tomllib.TOMLDecodeError as e:
        raise CatalogueError(f"{p}: not valid TOML ({e})") from None
    return catalogue_from_dict(data, str(p))


def catalogue_from_dict(data: Mapping[str, Any], source: str = "<memory>") -> NudgeCatalogue:
    """Validate parsed TOML into a catalogue; every error names `source` and the offending key or value."""

    def fail(msg: str) -> CatalogueError:
        return CatalogueError(f"{source}: {msg}")

    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise fail(f"unknown top-level key {unknown[0]!r}; valid keys: {', '.join(TOP_KEYS)}")
    raw_arms = data.get("arms")
    if not isinstance(raw_arms, list) or not raw_arms:
        raise fail("needs at least one [[arms]] entry")
    arms: list[NudgeArm] = []
    first_seen: dict[str, int] = {}
    for i, entry in enumerate(raw_arms):
        where = f"arms[{i}]"
        if not isinstance(entry, dict):
            raise fail(f"{where} must be a table with keys {', '.join(ARM_KEYS)}")
        bad = sorted(set(entry) - set(ARM_KEYS))
        if bad:
            raise fail(f"unknown key {where}.{bad[0]}; valid keys: {', '.join(ARM_KEYS)}")
        for key in ARM_KEYS:
            if key not in entry:
                raise fail(f"{where} is missing {key!r}")
            if not isinstance(entry[key], str) or not entry[key].strip():
                raise fail(f"{where}.{key} must be non-empty text; got {entry[key]!r}")
        arm = NudgeArm(**{k: entry[k] for k in ARM_KEYS})
        where = f"{where} ({arm.id!r})"
        if not _ID.fullmatch(arm.id):
            raise fail(f"{where}: id may hold only letters, digits, '_', '-' and '.'")
        if arm.id in first_seen:
            raise fail(f"duplicate arm id {arm.id!r} in arms[{first_seen[arm.id]}] and arms[{i}]")
        first_seen[arm.id] = i
        if arm.family not in FAMILIES:
            raise fail(f"{where}.family: unknown family {arm.family!r}; valid: {', '.join(FAMILIES)}")
        try:
            _placeholders(arm.template)
        except ValueError as e:
            raise fail(f"{where}.template {arm.template!r}: {e}") from None
        arms.append(arm)
    ids = set(first_seen)
    tables = {name: _restrictions(data.get(name, {}), name, ids, fail) for name in ("products", "categories")}
    return NudgeCatalogue(tuple(arms), tables["products"], tables["categories"], source)


def _restrictions(raw: object, name: str, ids: set[str], fail) -> Mapping[str, tuple[str, ...]]:
    """Validate a [products] or [categories] table: key -> non-empty list of known arm ids, no repeats."""
    if not isinstance(raw, dict):
        raise fail(f"[{name}] must be a table of key = [arm ids]")
    out: dict[str, tuple[str, ...]] = {}
    for key, allowed in raw.items():
        where = f"{name}.{key}"
        if not isinstance(allowed, list) or not allowed or not all(isinstance(a, str) for a in allowed):
            raise fail(f"{where} must be a non-empty list of arm ids; got {allowed!r}")
        for a in allowed:
            if a not in ids:
                raise fail(f"{where} names unknown arm {a!r}; arms: {', '.join(sorted(ids))}")
        if len(set(allowed)) < len(allowed):
            raise fail(f"{where} lists an arm twice: {allowed!r}")
        out[str(key)] = tuple(allowed)
    return MappingProxyType(out)


def _placeholders(template: str) -> tuple[str, ...]:
    """Named fields of a str.format template; ValueError for bad braces or positional/indexed fields."""
    names: list[str] = []
    for _, name, spec, _ in string.Formatter().parse(template):  # raises ValueError on unbalanced braces
        if name is None:
            continue
        if not name.isidentifier():
            raise ValueError(f"placeholder {{{name}}} must be a plain name such as {{product}}")
        if spec and "{" in spec:
            raise ValueError(f"placeholder {{{name}}} has a nested field in its format spec")
        if name not in names:
            names.append(name)
    return tuple(names)


# ------------------------------------------------------------------------------- logged nudge decisions


@dataclass(frozen=True)
class NudgeDecisions:
    """The logged nudge decisions of an event table, as arrays of length N (one per nudged row)."""

    row: np.ndarray          # (N,) int64: row of the nudged event in the input table
    arm: np.ndarray          # (N,) int64: arm index in the catalogue order
    reward: np.ndarray       # (N,) float64: best event reward that followed on the same item (see nudge_decisions)
    propensity: np.ndarray   # (N,) float64: logged propensity (NaN where the log has none)
    unknown: Mapping[str, int]  # nudge ids absent from the arms -> rows left out for it (none dropped silently)


def nudge_decisions(events: pa.Table, arms: Sequence[str],
                    rewards: Mapping[str, float] = DEFAULT_REWARDS) -> NudgeDecisions:
    """One decision per row with a nudge, rewarded by what the user did next with that item.

    Rows are ordered by (session, item, timestamp, input order). A nudge on a row opens an episode that runs
    until the next view or next nudged row of the same item in the same session; the decision's reward is the
    largest event reward in its episode (`rewards` maps event type -> reward, as in training): a nudged view
    followed by a cart then a purchase earns the purchase reward, a view left alone earns the view reward.
    Sessions are the `session` column (prepared data), else `session_id`, else `user_id`; items `item_id`.
    """
    names = events.column_names
    session_col = next((c for c in ("session", "session_id", "user_id") if c in names), None)
    need = ["item_id", "event_type", "timestamp", "nudge_id"]
    missing = [c for c in need if c not in names] + ([] if session_col else ["session or session_id or user_id"])
    if missing:
        raise ValueError(f"event table lacks column(s) {', '.join(missing)}; has: {', '.join(names)}")
    etype = _plain(events.column("event_type"))
    unknown_types = sorted(set(pc.unique(etype).drop_null().to_pylist()) - set(rewards))
    if unknown_types or etype.null_count:
        raise ValueError(f"no reward for event type(s) {unknown_types or [None]}; rewards: {dict(rewards)}")
    type_code = pc.index_in(etype, pa.array(list(rewards))).to_numpy()
    reward = np.array(list(rewards.values()), dtype=np.float64)[type_code]
    session = _codes(events.column(session_col))
    item = _codes(events.column("item_id"))
    ts = _plain(events.column("timestamp"))
    time = ts.cast(pa.int64()).to_numpy() if pa.types.is_timestamp(ts.type) else ts.to_numpy()
    nudge = _plain(events.column("nudge_id"))
    nudged = ~np.asarray(pc.is_null(nudge), dtype=bool)
    order = np.lexsort((np.arange(len(time)), time, item, session))
    s, it, r, nd = session[order], item[order], reward[order], nudged[order]
    is_view = (type_code[order] == list(rewards).index("view")) if "view" in rewards else np.zeros(len(s), bool)
    new_group = np.ones(len(s), dtype=bool)
    new_group[1:] = (s[1:] != s[:-1]) | (it[1:] != it[:-1])
    opens = new_group | is_view | nd           # rows that open an episode
    starts = np.flatnonzero(opens)
    episode_best = np.maximum.reduceat(r, starts) if len(starts) else np.zeros(0)
    episode = np.cumsum(opens) - 1
    rows = order[nd]
    best = episode_best[episode[nd]]
    ids = np.asarray(nudge.take(pa.array(rows)).to_pylist(), dtype=object)
    index = {a: i for i, a in enumerate(arms)}
    arm = np.array([index.get(a, -1) for a in ids], dtype=np.int64)
    known = arm >= 0
    unknown_ids, counts = np.unique(ids[~known].astype(str), return_counts=True)
    if "propensity" in names:
        prop = _plain(events.column("propensity")).take(pa.array(rows)).cast(pa.float64())
        prop = prop.fill_null(np.nan).to_numpy(zero_copy_only=False)
    else:
        prop = np.full(len(rows), np.nan)
    keep = np.lexsort((rows[known], time[rows[known]]))  # decisions in time order (input order on ties)
    return NudgeDecisions(row=rows[known][keep].astype(np.int64), arm=arm[known][keep],
                          reward=best[known][keep], propensity=prop[known][keep],
                          unknown=MappingProxyType(dict(zip(unknown_ids.tolist(), counts.tolist()))))


def _plain(column: pa.ChunkedArray) -> pa.Array:
    """One contiguous array, dictionary-encoded columns decoded to their value type."""
    arr = column.combine_chunks()
    return arr.cast(arr.type.value_type) if pa.types.is_dictionary(arr.type) else arr


def _codes(column: pa.ChunkedArray) -> np.ndarray:
    """Integer codes of a column's values (equal values, equal codes), as int64."""
    codes = _plain(column).dictionary_encode().indices
    return np.asarray(codes.to_numpy(zero_copy_only=False), dtype=np.int64)
