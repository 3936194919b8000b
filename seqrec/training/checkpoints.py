"""Checkpoints: state dicts (loadable with weights_only=True) plus a JSON sidecar, written atomically."""

from __future__ import annotations

from pathlib import Path

import torch

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
    return torch.load(ckpt_dir / "last.pt", map_location=device, weights_only=True)
