"""The input files of a run: a first check, their identity (path, SHA-256, size, format) and row counts.

`seqrec prepare` and `seqrec score` both list their inputs this way in their manifests and key re-use on it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .readers import InputError, SourceSpec


@dataclass
class FileStats:
    """One input file's identity and row counts (read = kept + quarantined + excluded), as the manifests list it."""

    path: str
    sha256: str
    bytes: int
    format: str
    rows_read: int = 0
    rows_kept: int = 0
    rows_quarantined: int = 0
    rows_excluded: int = 0  # good rows of an event type mapped to drop

    @classmethod
    def of(cls, path: Path, spec: SourceSpec) -> FileStats:
        """A file's identity (path, SHA-256, size, format as `spec` reads it), its counts still zero."""
        return cls(str(path), file_sha256(path), path.stat().st_size, spec.format_of(path))


def check_inputs(paths: list[Path]) -> None:
    """Raise InputError (one line naming the file) for an input that is missing or a folder."""
    for p in paths:
        if not p.exists():
            raise InputError(f"{p}: no such file")
        if p.is_dir():
            raise InputError(f"{p}: is a directory, not an event file")


def merged_event_map(specs: list[SourceSpec]) -> tuple[tuple[str, str], ...]:
    """The event maps of all inputs' readers as one (a later reader's entry wins)."""
    merged: dict[str, str] = {}
    for s in specs:
        merged.update(dict(s.event_map))
    return tuple(merged.items())


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes (the inputs' identity in the manifest and the re-use check)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(8 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def estimate_rows(path: Path, fmt: str) -> int:
    """Rows in a file: exact for Parquet, from the mean length of the first lines for text."""
    if fmt == "parquet":
        try:
            return pq.ParquetFile(str(path)).metadata.num_rows
        except (pa.ArrowInvalid, OSError):
            return 0
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    lines = max(head.count(b"\n"), 1)
    return int(path.stat().st_size / (len(head) / lines)) + 1 if head else 0


def bucket_count(paths: list[Path], files: list[FileStats], bucket_rows: int) -> int:
    """User-hash buckets for pass 1: the estimated rows of all inputs over `bucket_rows`, at least one."""
    est = sum(estimate_rows(p, f.format) for p, f in zip(paths, files))
    return max(1, -(-est // bucket_rows))
