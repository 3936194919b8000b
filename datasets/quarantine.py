"""The quarantine: bad rows, one Parquet row each (QUARANTINE_SCHEMA), counted per reason and per input."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .inputs import FileStats
from .readers import BadRows, InputError
from .schema import QUARANTINE_SCHEMA


def quarantine_table(path: str, bad: BadRows) -> pa.Table:
    """The quarantine rows of `bad`, rows of the input at `path`."""
    return pa.table({"source_file": pa.array([path] * len(bad), pa.string()), "row": pa.array(bad.rows, pa.int64()),
                     "field": pa.array(bad.fields, pa.string()), "reason": pa.array(bad.reasons, pa.string()),
                     "value": pa.array(bad.values, pa.string())}, schema=QUARANTINE_SCHEMA)


class Quarantine:
    """Appends bad rows of the inputs `files` to the Parquet file `path` (created at the first bad row), adding
    them to each input's rows_quarantined and to `reasons` (reason -> rows)."""

    def __init__(self, path: Path, files: list[FileStats]) -> None:
        self.path, self.files = path, files
        self.reasons: dict[str, int] = {}
        self._writer: pq.ParquetWriter | None = None

    def add(self, file_index: int, bad: BadRows) -> None:
        """Quarantine `bad`, rows of input `file_index`."""
        if not len(bad):
            return
        f = self.files[file_index]
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, QUARANTINE_SCHEMA)
        self._writer.write_table(quarantine_table(f.path, bad))
        f.rows_quarantined += len(bad)
        for r in bad.reasons:
            self.reasons[r] = self.reasons.get(r, 0) + 1

    @property
    def written(self) -> bool:
        """Whether any row was quarantined (the file exists)."""
        return self._writer is not None

    def close(self) -> None:
        """Finish the file (nothing to do when no row was quarantined)."""
        if self._writer is not None:
            self._writer.close()


def nothing_usable(files: list[FileStats], reasons: dict[str, int], path: Path) -> InputError | None:
    """The error when no input row was kept (a header-only or empty file, every row quarantined or excluded):
    one line naming each file with its counts and the main quarantine reasons; None when some row was kept."""
    if any(f.rows_kept for f in files):
        return None
    parts = []
    for f in files:
        if not f.rows_read:
            parts.append(f"{f.path}: no rows (empty, or a header only)")
        else:
            parts.append(f"{f.path}: {f.rows_read} rows read, 0 kept, {f.rows_quarantined} quarantined, "
                         f"{f.rows_excluded} excluded")
    top = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
    why = f"; main quarantine reasons: {', '.join(f'{r} {n}' for r, n in top)} (see {path})" if top else ""
    return InputError(f"nothing usable in the input: {'; '.join(parts)}{why}")
