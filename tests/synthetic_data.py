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


def ddp_run(max_steps: int) -> str:
    """A run file with dropout 0 and SQN (no negatives): ranks of a distributed run compute the one-process update
    up to summation order (seqrec/training/distributed.py)."""
    return f"""
[encoder]
kind = "sasrec"
dim = 16
dropout = 0.0

[head]
variant = "sqn"

[train]
batch_size = 32
lr = 0.01
max_steps = {max_steps}
eval_every = 20
log_every = 10
"""
