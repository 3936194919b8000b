"""Feature columns of the two towers: which values they take, how they become tensors, where they come from.

A `FeatureSpec` is a tower's encoding: for each categorical column its vocabulary (index 0 = unknown or
missing, then the values seen, most frequent first), for each numeric column the mean and standard
deviation that standardise it (a missing value becomes 0, the mean). It is plain data that round-trips
through JSON (RUN/retrieval/features.json), so batch scoring encodes raw event columns exactly as training did.

Where the values come from (the prepared `events.parquet`):
- user features: per session, the value on the session's first event. They are meant for attributes of the
  user (segment, age, risk tolerance), known when the session starts; the spec is fitted on train sessions.
- item features: per item (vocabulary index), the most frequent value of a categorical column (ties: the
  value first in sort order) and the mean of a numeric one (e.g. price) over all of the item's events. These
  are catalogue metadata, not interactions, so reading them from every split leaks no target.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

from seqrec.core.config import ConfigError


class Features(NamedTuple):
    """Encoded feature rows: categorical codes (N, C) int64 (0 = unknown) and standardised numbers (N, M)."""

    categorical: torch.Tensor  # (N, C) int64
    numeric: torch.Tensor      # (N, M) float32

    def rows(self, idx: torch.Tensor | np.ndarray) -> Features:
        """The rows `idx` (B,) -> Features of B rows."""
        idx = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        return Features(self.categorical[idx], self.numeric[idx])

    def to(self, device: torch.device | str) -> Features:
        return Features(self.categorical.to(device), self.numeric.to(device))


@dataclass(frozen=True)
class FeatureSpec:
    """One tower's feature encoding (see the module docstring); `fit` on a frame, `encode` any frame."""

    categorical: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (column, values); code = position + 1
    numeric: tuple[tuple[str, float, float], ...] = ()         # (column, mean, std)

    @property
    def cardinalities(self) -> tuple[int, ...]:
        """Embedding rows per categorical column: its values plus the unknown row 0."""
        return tuple(len(values) + 1 for _, values in self.categorical)

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(c for c, _ in self.categorical) + tuple(c for c, _, _ in self.numeric)

    @classmethod
    def fit(cls, frame: pd.DataFrame, categorical: Sequence[str], numeric: Sequence[str]) -> FeatureSpec:
        """Vocabularies (most frequent first, then by value) and mean/std of `frame`'s columns."""
        cats = []
        for col in categorical:
            counts = _as_text(frame[col]).dropna().value_counts()
            order = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
            cats.append((col, tuple(v for v, _ in order)))
        nums = []
        for col in numeric:
            x = pd.to_numeric(frame[col], errors="coerce").astype(np.float64)
            mean = float(x.mean()) if x.notna().any() else 0.0
            std = float(x.std(ddof=0)) if x.notna().sum() > 1 else 0.0
            nums.append((col, mean, std if std > 0 else 1.0))
        return cls(tuple(cats), tuple(nums))

    def encode(self, frame: Mapping[str, Any] | pd.DataFrame, n: int | None = None) -> Features:
        """Columns of `frame` (a DataFrame or a mapping of column -> sequence) -> Features of its N rows.

        A column the frame lacks is all missing (unknown code 0, numeric 0); unseen values are unknown.
        """
        if n is None:
            n = len(frame) if isinstance(frame, pd.DataFrame) else len(next(iter(frame.values()), []))
        cat = np.zeros((n, len(self.categorical)), np.int64)
        for j, (col, values) in enumerate(self.categorical):
            if col in frame:
                text = _as_text(pd.Series(np.asarray(frame[col], dtype=object)))
                codes = {v: i + 1 for i, v in enumerate(values)}
                cat[:, j] = text.map(codes).fillna(0).to_numpy(np.int64)  # unseen or missing -> 0
        num = np.zeros((n, len(self.numeric)), np.float32)
        for j, (col, mean, std) in enumerate(self.numeric):
            if col in frame:
                x = pd.to_numeric(pd.Series(np.asarray(frame[col], dtype=object)), errors="coerce").to_numpy(float)
                num[:, j] = np.nan_to_num((x - mean) / std, nan=0.0)
        return Features(torch.from_numpy(cat), torch.from_numpy(num))

    def to_dict(self) -> dict[str, Any]:
        return {"categorical": [{"column": c, "values": list(v)} for c, v in self.categorical],
                "numeric": [{"column": c, "mean": m, "std": s} for c, m, s in self.numeric]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FeatureSpec:
        return cls(tuple((e["column"], tuple(e["values"])) for e in d.get("categorical", [])),
                   tuple((e["column"], float(e["mean"]), float(e["std"])) for e in d.get("numeric", [])))


def _as_text(s: pd.Series) -> pd.Series:
    """Values as text (so 7 and "7" are one category), missing values kept missing."""
    missing = s.isna().to_numpy()
    text = s.astype(object).astype(str)
    text[missing] = None
    return text


def read_event_columns(data_dir: str | Path, columns: Sequence[str]) -> pd.DataFrame:
    """session, position, item and split of every prepared event, plus `columns`; a missing column is a
    ConfigError naming the columns the table has."""
    path = Path(data_dir) / "events.parquet"
    available = pq.read_schema(path).names
    missing = [c for c in columns if c not in available]
    if missing:
        raise ConfigError(f"feature column {missing[0]!r} is not in {path}; its columns: {', '.join(available)}")
    base = ["session", "position", "item", "split"]
    return pq.read_table(path, columns=base + [c for c in dict.fromkeys(columns) if c not in base]).to_pandas()


def session_rows(events: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """One row per session (indexed by session number): its split and `columns` on its first event."""
    first = events.sort_values(["session", "position"], kind="stable").drop_duplicates("session")
    return first.set_index("session")[["split", *columns]]


def item_rows(events: pd.DataFrame, categorical: Sequence[str], numeric: Sequence[str],
              num_items: int) -> pd.DataFrame:
    """One row per catalogue index 0..I-1: each categorical column's most frequent value for the item and each
    numeric column's mean (missing for items without events, padding and OOV)."""
    out = pd.DataFrame(index=pd.RangeIndex(num_items, name="item"))
    for col in categorical:
        pairs = pd.DataFrame({"item": events["item"].to_numpy(), "v": _as_text(events[col])}).dropna()
        counts = pairs.groupby(["item", "v"]).size().reset_index(name="n")
        best = counts.sort_values(["item", "n", "v"], ascending=[True, False, True]).drop_duplicates("item")
        out[col] = pd.Series(best["v"].to_numpy(), index=best["item"].to_numpy(), dtype=object)
    for col in numeric:
        x = pd.to_numeric(events[col], errors="coerce")
        out[col] = x.groupby(events["item"].to_numpy()).mean()
    return out


def check_numeric(events: pd.DataFrame, columns: Sequence[str]) -> None:
    """Numeric feature columns must hold numbers."""
    for col in columns:
        if not pd.api.types.is_numeric_dtype(events[col]):
            raise ConfigError(f"numeric feature column {col!r} holds {events[col].dtype}, not numbers; "
                              "list it among the categorical columns instead")
