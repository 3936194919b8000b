"""The learner a run config describes: our heads, or a d3rlpy algorithm on our encoder behind the same seam."""

from __future__ import annotations

import torch

from seqrec.rl.qlearning.learner import Learner
from seqrec.runs.config import RunConfig


def build_learner(cfg: RunConfig, device: torch.device) -> torch.nn.Module:
    """Our learner of the [head] variant, or the d3rlpy algorithm on our encoder behind the same interface
    (update(batch, step, seed), scores, state dicts); d3rlpy is imported only for d3rlpy runs."""
    if cfg.algorithm == "seqrec":
        return Learner(cfg.encoder, cfg.head, cfg.train.lr).to(device)
    from seqrec.rl.d3rlpy_bridge.bridge import D3rlpyLearner

    return D3rlpyLearner(cfg.algorithm, cfg.encoder, cfg.d3rlpy, batch_size=cfg.train.batch_size, lr=cfg.train.lr,
                         gamma=cfg.head.gamma, device=device)
