"""Checkpoints: state dicts (loadable with weights_only=True) plus a JSON sidecar, written atomically."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from seqrec.core.config import ConfigError
from seqrec.core.io import atomic_write, atomic_write_json


def save_checkpoint(path: Path, payload: dict, info: dict) -> None:
    """Atomic checkpoint: state dicts (loadable with weights_only=True) and a JSON sidecar."""
    # torch.save names the zip archive inside after the file it writes (NAME.pt.tmp -> "NAME.pt/..."): the
    # temporary file keeps the NAME.pt prefix so that a checkpoint's bytes, which scoring's config hash covers,
    # are those of the same payload saved straight to NAME.pt
    atomic_write(path, lambda tmp: torch.save(payload, tmp), tmp=path.with_name(path.name + ".tmp"))
    atomic_write_json(path.with_suffix(".json"), info, indent=2)


def last_checkpoint(ckpt_dir: Path, device: torch.device | str) -> dict | None:
    """checkpoints/last.pt (state dicts, step, best), or None before the first checkpoint."""
    if not (ckpt_dir / "last.pt").exists():
        return None
    return load_checkpoint(ckpt_dir / "last.pt", device)


def load_checkpoint(path: Path, device: torch.device | str) -> dict:
    """The payload of checkpoint `path` (state dicts only: weights_only=True, never anything else), onto `device`;
    a ConfigError naming the file when it is truncated, not a checkpoint, or holds pickled objects."""
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" in str(e).lower():  # a pickled object torch refuses in weights-only mode
            raise ConfigError(f"{path}: holds pickled objects, not only weights: refusing to load it") from e
        raise ConfigError(f"{path}: truncated or not a checkpoint") from e
    except (EOFError, KeyError, ValueError) as e:  # an empty file, text, a stray pickle
        raise ConfigError(f"{path}: truncated or not a checkpoint") from e
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except OSError as e:  # torch's zip reader on a cut-off archive: "[Errno 22] Invalid argument", naming no file
        raise ConfigError(f"{path}: truncated or not a checkpoint") from e
    except RuntimeError as e:  # torch's zip reader: "PytorchStreamReader failed reading zip archive"
        if "zip" not in str(e).lower() and "PytorchStreamReader" not in str(e):
            raise
        raise ConfigError(f"{path}: truncated or not a checkpoint") from e
    if not isinstance(payload, dict):
        raise ConfigError(f"{path}: not a checkpoint (holds a {type(payload).__name__}, not a dict of state dicts)")
    return payload
