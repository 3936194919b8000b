"""What `seqrec score` produces from a run: ScoreConfig, the run file's [score] table (torch-free, so the run
config composes it and `seqrec/serve` reads it from below)."""

from __future__ import annotations

from dataclasses import dataclass

from seqrec.core.config import check_choice, check_int

INDEX_KINDS = ("exact", "faiss")
CHECKPOINTS = ("best", "last")


@dataclass(frozen=True)
class ScoreConfig:
    """What `seqrec score` produces from a run (everything here but batch_size, workers, bucket_rows and device
    enters the config hash written on every row)."""

    top: int = 10                   # recommendations (rows) per session
    candidates: int = 200           # K retrieved before re-ranking (the whole catalogue is ranked without retrieval)
    batch_size: int = 4096          # sessions per score_batch call
    workers: int | None = None      # batches scored at once, one torch thread each; None: torch's thread count
    index: str | None = None        # exact | faiss; None: the run's [index]
    nprobe: int | None = None       # faiss IVF: clusters searched per query; None: the run's [index] nprobe
    checkpoint: str = "best"        # best | last (falls back to last when a run has no best)
    seed: int = 0                   # seed of the nudge draws
    session_gap_minutes: float | None = None  # None: the gap the run's data was prepared with
    bucket_rows: int = 2_000_000    # rows per on-disk session bucket: bounds memory
    catalogue: str | None = None    # nudge catalogue TOML; None: the one shipped with seqrec
    category_column: str = "item_category"  # event column holding an item's category for [categories] rules
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name in ("top", "candidates", "batch_size", "bucket_rows"):
            check_int(name, getattr(self, name), 1)
        if self.candidates < self.top:
            raise ValueError(f"candidates ({self.candidates}) must be >= top ({self.top})")
        for name in ("workers", "nprobe"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), 1)
        if self.index is not None:
            check_choice("index", self.index, INDEX_KINDS)
        check_choice("checkpoint", self.checkpoint, CHECKPOINTS)
        if self.session_gap_minutes is not None and not self.session_gap_minutes > 0:
            raise ValueError(f"session_gap_minutes must be > 0 (inf: one session per user), "
                             f"got {self.session_gap_minutes}")
        check_int("seed", self.seed, 0)
        if not isinstance(self.category_column, str) or not self.category_column:
            raise ValueError(f"category_column must be a column name, got {self.category_column!r}")
