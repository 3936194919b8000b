"""The small prepared log most training tests share: 150 generated users over 40 items (seed 3), prepared with
the defaults. A helper, not a fixture, so each test module keeps its own copy in its own temporary folder."""

from __future__ import annotations

from pathlib import Path

from seqrec.datasets.adapters import source_spec
from seqrec.datasets.prepare import PrepareConfig, prepare
from seqrec.datasets.synthetic import SyntheticConfig, write_events


def prepared_log(folder: Path) -> Path:
    """FOLDER/events.parquet generated and FOLDER/prepared prepared from it; returns the prepared folder."""
    write_events(SyntheticConfig(users=150, items=40, seed=3), folder / "events.parquet")
    prepare([folder / "events.parquet"], lambda p: source_spec("events", p), PrepareConfig(), folder / "prepared")
    return folder / "prepared"
