"""A run's decision pipeline: load it for serving, and the pipeline part of `seqrec evaluate`."""

from __future__ import annotations

from pathlib import Path

import torch

from seqrec.core.config import ConfigError
from seqrec.datasets.manifest import event_names, load_transitions, read_manifest
from seqrec.models.device import pick_device
from seqrec.retrieval.config import IndexConfig, RerankConfig
from seqrec.retrieval.rerank import Pipeline, build_pipeline, evaluate_pipeline, rerank_batch, split_users, states_per_s
from seqrec.retrieval.two_tower import load_two_tower
from seqrec.runs.config import RunConfig, saved_config
from seqrec.runs.learner import build_learner
from seqrec.training.checkpoints import load_checkpoint


def load_pipeline(run: Path, index: IndexConfig | None = None, rerank_cfg: RerankConfig | None = None,
                  checkpoint: str = "best", device: str | torch.device = "cpu") -> tuple[Pipeline, RunConfig]:
    """The run's pipeline for serving: its learner checkpoint, RUN/retrieval's model, the index of `index`
    (default: the run's [index]) and the blend of `rerank_cfg` (default: the run's [rerank]); eval mode."""
    cfg = saved_config(run)
    path = run / "checkpoints" / f"{checkpoint}.pt"
    path = path if path.exists() else run / "checkpoints" / "last.pt"
    if not path.exists():
        raise ConfigError(f"{run}: no checkpoint; train the run first")
    learner = build_learner(cfg, torch.device(device))
    learner.load_state_dict(load_checkpoint(path, device)["model"])
    learner.eval()
    tower = load_two_tower(run / "retrieval", checkpoint, device)
    return build_pipeline(tower, learner, rerank_cfg or cfg.rerank, index or cfg.index), cfg


def pipeline_report(run: Path, split: str, learner: torch.nn.Module, cfg: RunConfig,
                    index: IndexConfig | None = None, top: int = 10) -> dict[str, dict]:
    """What `seqrec evaluate` adds for a run with a retrieval model: {"pipeline", "recall", "pipeline_info"}
    on `split`, the last with states/s of full-catalogue ranking (the learner's scores + top-k) and of
    retrieve + re-rank (rerank_batch), measured over the same states in the same process."""
    device = pick_device(cfg.train.device)
    tower = load_two_tower(run / "retrieval", "best", device)
    index = index or cfg.index
    pipeline = build_pipeline(tower, learner, cfg.rerank, index)
    arrays = load_transitions(cfg.data, split)
    users = split_users(tower, cfg.data, arrays)
    names = event_names(read_manifest(cfg.data))
    bs = cfg.train.eval_batch_size
    out = evaluate_pipeline(pipeline, arrays, users, names, bs)
    full = states_per_s(lambda x, i: torch.topk(learner.scores(x), top, dim=1), arrays, device, bs)
    piped = states_per_s(lambda x, i: rerank_batch(pipeline, x, users.rows(i) if users is not None else None, top),
                         arrays, device, bs)
    info = {"candidates": cfg.rerank.candidates, "index": index.kind if index.kind == "exact" else
            f"faiss-{index.faiss_type}", "w_tt": cfg.rerank.w_tt, "w_sup": cfg.rerank.w_sup, "w_q": cfg.rerank.w_q,
            "normalize": cfg.rerank.normalize, "states_per_s_full": full, "states_per_s_pipeline": piped,
            "threads": torch.get_num_threads()}
    return {**out, "pipeline_info": info}
