"""Atomic file writes: write a temporary sibling, then rename it over the target (torch-free, used by every layer).

A reader, or a run killed mid-write, sees either the old file or the whole new one, never half of one; the
temporary file is hidden (`.NAME.tmp`) so that folders read as datasets (OUT/scores/) never list it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def temporary_path(path: Path) -> Path:
    """The hidden sibling `path` is written under before the rename: .NAME.tmp in the same folder."""
    return path.with_name(f".{path.name}.tmp")


def atomic_write(path: str | Path, write: Callable[[Path], T], tmp: Path | None = None) -> T:
    """Call `write(tmp)` to write a temporary sibling of `path`, then rename it over `path`; returns what
    `write` returns. If `write` raises, `path` is left as it was and the temporary file is removed. `tmp`
    overrides the hidden sibling's name, for writers whose output depends on the name they write to."""
    path = Path(path)
    tmp = temporary_path(path) if tmp is None else tmp
    try:
        result = write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return result


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, data: object, indent: int = 1) -> None:
    """Write `data` as JSON to `path` atomically: a kill never leaves half a note."""
    atomic_write_text(path, json.dumps(data, indent=indent))
