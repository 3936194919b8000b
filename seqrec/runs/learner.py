"""The learner a run config describes: our heads, or a d3rlpy algorithm on our encoder behind the same seam."""

from __future__ import annotations

from pathlib import Path

import torch

from seqrec.core.config import ConfigError
from seqrec.rl.qlearning.learner import Learner
from seqrec.runs.config import RunConfig
from seqrec.training.checkpoints import load_checkpoint


def build_learner(cfg: RunConfig, device: torch.device, allowed: torch.Tensor | None = None) -> torch.nn.Module:
    """Our learner of the [head] variant, or the d3rlpy algorithm on our encoder behind the same interface
    (update(batch, step, seed), scores, state dicts); d3rlpy is imported only for d3rlpy runs.

    `allowed`: an optional (I,) bool mask of the actions the catalogue lets the recommender take; the Q targets'
    max runs over these only. None (the default): every real item, never padding or OOV."""
    if cfg.algorithm == "seqrec":
        return Learner(cfg.encoder, cfg.head, cfg.train.lr, allowed=allowed).to(device)
    from seqrec.rl.d3rlpy_bridge.bridge import D3rlpyLearner

    return D3rlpyLearner(cfg.algorithm, cfg.encoder, cfg.d3rlpy, batch_size=cfg.train.batch_size, lr=cfg.train.lr,
                         gamma=cfg.head.gamma, device=device, allowed=allowed)


def trained_learner(cfg: RunConfig, run: Path, device: torch.device,
                    checkpoint: str = "best") -> tuple[torch.nn.Module, Path]:
    """The run's learner restored from checkpoints/CHECKPOINT.pt (else last.pt), in eval mode, and that path;
    a ConfigError when the run has neither."""
    path = run / "checkpoints" / f"{checkpoint}.pt"
    if not path.exists():
        path = run / "checkpoints" / "last.pt"
    if not path.exists():
        raise ConfigError(f"{run}: no checkpoint; train the run first")
    learner = build_learner(cfg, device)
    learner.load_state_dict(load_checkpoint(path, device)["model"])
    learner.eval()
    return learner, path
