"""Item side features of a prepared dataset for the encoders (`[encoder] categories = true`): each catalogue
index's category as a code, so that items of one category share a learned vector and a rarely seen item is scored
through its category (the explore targets of sparse logs: on the Taobao slice 40% of the next items never seen in
the user's window share a category with it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from .schema import FIRST_ITEM


class FeatureError(ValueError):
    """The prepared data lacks the side feature a run asks for."""


def item_category_codes(data_dir: str | Path, num_items: int) -> np.ndarray:
    """(I,) int64 code of each catalogue index's category: 1..K in sorted category order, 0 for padding, OOV and
    items without one. An item seen with several categories takes its most frequent (ties: the smallest)."""
    path = Path(data_dir) / "events.parquet"
    names = pq.read_schema(path).names
    if "item_category" not in names:
        raise FeatureError(f"{path}: no item_category column; categories = true needs a log with item categories")
    t = pq.read_table(path, columns=["item", "item_category"]).to_pandas()
    t = t[t["item_category"].notna() & (t["item"] >= FIRST_ITEM) & (t["item"] < num_items)]
    if t.empty:
        raise FeatureError(f"{path}: item_category is empty; categories = true needs a log with item categories")
    cats = t["item_category"].astype(str)
    top = (t.assign(c=cats).groupby(["item", "c"]).size().rename("n").reset_index()
           .sort_values(["item", "n", "c"], ascending=[True, False, True]).drop_duplicates("item"))
    levels = np.sort(top["c"].unique())
    codes = np.zeros(num_items, np.int64)
    codes[top["item"].to_numpy()] = np.searchsorted(levels, top["c"].to_numpy()) + 1
    return codes
