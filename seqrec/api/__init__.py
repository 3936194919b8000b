"""The notebook API: the few calls behind `seqrec prepare | train | evaluate | score`, on paths and in-memory tables.

    import seqrec
    manifest = seqrec.prepare("events.parquet", "data")            # -> the prepared folder's manifest.json
    result = seqrec.train("run.toml", "data", "runs/a")             # -> best checkpoint and validation metrics
    metrics = seqrec.evaluate("runs/a")                             # -> RUN/metrics.json (test split)
    scores = seqrec.load_run("runs/a", top=10).score(events_df)     # -> DataFrame, the rows `seqrec score` writes

Each call wraps the function the command runs, with the same settings under the same names (docs/api.md);
`seqrec` itself imports this module only on first use, so `import seqrec.datasets` stays free of torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from seqrec.api.run import Run

API = ("prepare", "train", "evaluate", "load_run", "score")
READER_OPTIONS = ("columns", "fmt", "sep", "header", "time_unit", "event_type", "event_map")


def prepare(inputs: str | Path | Sequence[str | Path], out: str | Path, source: str = "events",
            reader: Mapping[str, Any] | None = None, progress: bool | None = False, **options: Any) -> dict:
    """Prepare raw event files into the folder `out` (re-used when inputs and settings are unchanged); returns
    its manifest. `source` is the log format (seqrec.datasets.adapters.SOURCES); `reader` holds the reader
    options of source_spec (columns and event_map as dicts); `options` are PrepareConfig fields
    (min_session_length, session_gap_minutes, window, split, seed, max_sessions, ...)."""
    from seqrec.core.config import ConfigError, from_dict
    from seqrec.datasets.adapters import source_spec
    from seqrec.datasets.prepare import PrepareConfig
    from seqrec.datasets.prepare import prepare as prepare_files

    paths = [Path(inputs)] if isinstance(inputs, str | Path) else [Path(p) for p in inputs]
    if not paths:
        raise ConfigError("give at least one input file")
    reader = dict(reader or {})
    unknown = sorted(set(reader) - set(READER_OPTIONS))
    if unknown:
        raise ConfigError(f"unknown reader option {unknown[0]!r}; valid: {', '.join(READER_OPTIONS)}")
    for key in ("columns", "event_map"):
        if isinstance(reader.get(key), Mapping):
            reader[key] = tuple((str(k), str(v)) for k, v in reader[key].items())
    cfg = from_dict(PrepareConfig, {"source": source, **options}, "prepare")
    return prepare_files(paths, lambda p: source_spec(source, p, **reader), cfg, Path(out), progress=progress)


def train(config: str | Path | Mapping[str, Any], data: str | Path | None, out: str | Path,
          overrides: Sequence[str] = (), resume: bool = False, progress: bool | None = False) -> dict:
    """Train a run into the folder `out` from a TOML file or a dict of the same tables ([encoder], [head],
    [train], ...), on the prepared folder `data` (None: the config's data.dir); `overrides` are --set strings
    ("train.max_steps=200"). Returns {"step", "valid", "best", "best_step", ...} as `seqrec train` computes."""
    from seqrec.runs.config import load_run_config, run_config
    from seqrec.runs.train import train as train_run

    data_dir = str(data) if data is not None else None
    if isinstance(config, Mapping):
        cfg = run_config(dict(config), list(overrides), data_dir)
    else:
        cfg = load_run_config(config, list(overrides), data_dir)
    return train_run(cfg, Path(out), resume=resume, progress=progress)


def evaluate(run: str | Path, split: str = "test", protocol: str = "sessions", checkpoint: str = "best",
             pipeline: bool | None = None, index: str | None = None) -> dict:
    """Evaluate the run's checkpoint on `split` beside the popularity and recent-items baselines, as `seqrec
    evaluate` does; returns RUN/metrics.json after the merge ({split: {event: {metric: value}}, "popularity",
    "recent", "checkpoint", and with a retrieval model "pipeline", "recall", "pipeline_info"})."""
    from dataclasses import replace

    from seqrec.runs.config import saved_config
    from seqrec.runs.evaluate import evaluate_run

    run = Path(run)
    index_cfg = replace(saved_config(run).index, kind=index) if index else None
    return evaluate_run(run, split, protocol, checkpoint, pipeline, index_cfg)


def load_run(run: str | Path, **settings: Any) -> Run:
    """The run folder loaded once for scoring; `settings` are `seqrec score`'s (ScoreConfig fields: top,
    candidates, checkpoint, seed, index, nprobe, session_gap_minutes, catalogue, batch_size, workers, ...).
    Score with `Run.score(events)`."""
    from seqrec.api.run import open_run, score_config

    return open_run(run, score_config(settings))


def score(run: str | Path, events: pd.DataFrame | pa.Table, **settings: Any) -> pd.DataFrame:
    """`load_run(run, **settings).score(events)` in one call: the rows `seqrec score` writes for `events`."""
    return load_run(run, **settings).score(events)


__all__ = list(API)
