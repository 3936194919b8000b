"""Checkpoints: state dicts (loadable with weights_only=True) plus a JSON sidecar, written atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch


def save_checkpoint(path: Path, payload: dict, info: dict) -> None:
    """Atomic checkpoint: state dicts (loadable with weights_only=True) and a JSON sidecar."""
    tmp = path.with_suffix(".pt.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    side = path.with_suffix(".json.tmp")
    side.write_text(json.dumps(info, indent=2))
    os.replace(side, path.with_suffix(".json"))


def last_checkpoint(ckpt_dir: Path, device: torch.device | str) -> dict | None:
    """checkpoints/last.pt (state dicts, step, best), or None before the first checkpoint."""
    if not (ckpt_dir / "last.pt").exists():
        return None
    return torch.load(ckpt_dir / "last.pt", map_location=device, weights_only=True)
