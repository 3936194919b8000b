"""A prepared-dataset folder as its readers see it: manifest.json, the transition arrays of each split and the
names of the event types (what training, evaluation and scoring read)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from .readers import InputError

FORMAT_VERSION = 3  # 2: rows_excluded / excluded_by_event, session sampling keys; 3: state_event.npy
SPLITS = ("train", "valid", "test")
MANIFEST_KEYS = ("rows_read", "rows_kept", "rows_quarantined", "quarantine_reasons", "events_by_type",
                 "sessions", "items", "splits", "config", "inputs")
TRANSITION_FILES = ("state", "action", "event", "reward", "next_state", "done", "session")
STATE_EVENT = "state_event"  # (N, W) int8 event code + 1 per window position (0: padding); format 3 on
OUTPUT_FILES = ("events.parquet", "sessions.parquet", "vocab.parquet", "quarantine.parquet")


def load_manifest(folder: Path) -> dict | None:
    """The folder's manifest.json, or None when it is missing or unreadable."""
    try:
        return json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def read_manifest(folder: str | Path) -> dict:
    """The manifest of a prepared-dataset folder; a clear error when the folder is not one."""
    m = load_manifest(Path(folder))
    if m is None:
        raise InputError(f"{folder}: not a prepared dataset (no manifest.json); run `seqrec prepare` first")
    return m


def outputs_exist(folder: Path, manifest: dict | None = None) -> bool:
    """Whether every data file of a prepared folder is there (the manifest alone is not enough to re-use it);
    given its `manifest`, also whole: every Parquet file's footer reads and every transition array holds the
    manifest's count of its split (a folder cut short by a kill or a partial copy is never re-used)."""
    needed = [folder / name for name in OUTPUT_FILES]
    needed += [folder / "transitions" / s / f"{n}.npy" for s in SPLITS for n in (*TRANSITION_FILES, STATE_EVENT)]
    if not all(p.exists() for p in needed):
        return False
    if manifest is None:
        return True
    try:
        for name in OUTPUT_FILES:
            pq.read_metadata(folder / name)
        for s in SPLITS:
            rows = int(manifest["splits"][s]["events"])
            for n in (*TRANSITION_FILES, STATE_EVENT):
                if len(np.load(folder / "transitions" / s / f"{n}.npy", mmap_mode="r")) != rows:
                    return False
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


def load_transitions(folder: str | Path, split: str, events: bool = False) -> dict[str, np.ndarray]:
    """One split's transition arrays, memory-mapped (state, action, event, reward, next_state, done, session),
    and state_event when the folder has it (prepared by format 3 on); `events`: it is needed (an error without)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    d = Path(folder) / "transitions" / split
    try:
        arrays = {name: np.load(d / f"{name}.npy", mmap_mode="r") for name in TRANSITION_FILES}
    except FileNotFoundError as e:
        raise InputError(f"{folder}: missing transitions for split {split!r} ({e.filename})") from None
    if (d / f"{STATE_EVENT}.npy").exists():
        arrays[STATE_EVENT] = np.load(d / f"{STATE_EVENT}.npy", mmap_mode="r")
    elif events:
        raise InputError(no_state_events(folder, split))
    return arrays


def has_state_events(folder: str | Path) -> bool:
    """Whether every split of a prepared folder has its event windows (transitions/SPLIT/state_event.npy)."""
    return all((Path(folder) / "transitions" / s / f"{STATE_EVENT}.npy").exists() for s in SPLITS)


def no_state_events(folder: str | Path, split: str = "train") -> str:
    """The one line for a folder prepared before event windows were written."""
    return (f"{folder}: no transitions/{split}/{STATE_EVENT}.npy (prepared before event windows); re-run "
            "`seqrec prepare` into it to use [encoder] events")


def event_names(manifest: dict) -> tuple[str, ...]:
    """The event type names of a prepared dataset, in code order."""
    return tuple(e["name"] for e in sorted(manifest["event_types"], key=lambda e: e["code"]))


def stored_data_path(data: str | Path, folder: Path) -> str:
    """`data` as a config.json in `folder` records it: absolute as given, else relative to `folder`."""
    if Path(data).is_absolute():
        return str(data)
    return Path(os.path.relpath(Path(data).resolve(), Path(folder).resolve())).as_posix()


def data_path(run: Path, stored: str) -> str:
    """The prepared data's folder of config.json's `stored` path, usable from this working directory: absolute as
    stored; relative to the run folder (today's runs) when a prepared dataset is there; else relative to the working
    directory, as older runs stored it."""
    if Path(stored).is_absolute():
        return stored
    beside_run = Path(run) / stored
    if (beside_run / "manifest.json").exists():
        return str(beside_run.resolve())
    return stored
