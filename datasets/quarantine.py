"""The quarantine: bad rows, one Parquet row each (QUARANTINE_SCHEMA), counted per reason and per input."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .inputs import FileStats
from .readers import BadRows
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
