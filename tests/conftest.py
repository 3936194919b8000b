"""Shared fixtures: the folder of real public data (outside the repo) and helpers to find files in it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DEFAULT_SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-data folder: $SEQREC_SHARED_DATA, else <repo>/../shared/data; skips when absent."""
    env = os.environ.get("SEQREC_SHARED_DATA")
    path = Path(env) if env else DEFAULT_SHARED_DATA
    if not path.is_dir():
        how = "from SEQREC_SHARED_DATA" if env else "the default; set SEQREC_SHARED_DATA to point elsewhere"
        pytest.skip(f"real data folder {path} is absent ({how}); real-data tests need it")
    return path


@pytest.fixture(scope="session")
def shared_file(shared_data):
    """shared_file(folder, pattern) -> the one file matching `pattern` in shared_data/folder, or skip."""

    def find(folder: str, pattern: str) -> Path:
        matches = sorted((shared_data / folder).glob(pattern))
        if not matches:
            pytest.skip(f"{shared_data / folder}/{pattern} is absent from the real data folder")
        assert len(matches) == 1, f"expected one file for {folder}/{pattern}, found {matches}"
        return matches[0]

    return find
