"""Training the two-tower candidate generator (seqrec/retrieval/two_tower.py) of a run: its features, the
sampled-softmax step with log-Q correction, recall evaluation, and the loop (seqrec.training.loop.fit).

Kept apart from the model so that loading a run for scoring never imports the training loop.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from seqrec.core.config import ConfigError
from seqrec.datasets.manifest import data_path, event_names, load_transitions, read_manifest, stored_data_path
from seqrec.datasets.schema import FIRST_ITEM
from seqrec.models.device import pick_device
from seqrec.models.encoders import EncoderConfig
from seqrec.retrieval.config import RECALL_KS, TwoTowerConfig
from seqrec.retrieval.features import Features, FeatureSpec, check_numeric, item_rows, read_event_columns, session_rows
from seqrec.retrieval.index import ExactIndex
from seqrec.retrieval.two_tower import (
    RecallMetrics,
    TwoTower,
    in_batch_softmax_loss,
    log_q,
    session_features,
)
from seqrec.rl.qlearning.learner import step_generator
from seqrec.training.checkpoints import last_checkpoint
from seqrec.training.loop import (
    Bar,
    Checkpoints,
    Evaluation,
    Schedule,
    fit,
    flat_hparams,
    open_writer,
    resume_point,
    write_hparams,
)
from seqrec.training.sampler import EpochSampler


def build_features(data_dir: str | Path, cfg: TwoTowerConfig,
                   num_items: int) -> tuple[FeatureSpec, FeatureSpec, Features, pd.DataFrame | None]:
    """Fit both towers' specs on the prepared data: (user spec, item spec, item Features (I, ...), per-session
    user frame)."""
    user_cols = [*cfg.user_categorical, *cfg.user_numeric]
    cols = user_cols + [*cfg.item_categorical, *cfg.item_numeric]
    if not cols:
        return FeatureSpec(), FeatureSpec(), Features(torch.zeros(num_items, 0, dtype=torch.long),
                                                      torch.zeros(num_items, 0)), None
    events = read_event_columns(data_dir, cols)
    check_numeric(events, [*cfg.user_numeric, *cfg.item_numeric])
    sessions = session_rows(events, user_cols)
    user_spec = FeatureSpec.fit(sessions[sessions["split"] == "train"], cfg.user_categorical, cfg.user_numeric)
    items = item_rows(events, cfg.item_categorical, cfg.item_numeric, num_items)
    item_spec = FeatureSpec.fit(items.iloc[FIRST_ITEM:], cfg.item_categorical, cfg.item_numeric)
    return user_spec, item_spec, item_spec.encode(items), sessions


def tower_encoder(enc: EncoderConfig, cfg: TwoTowerConfig) -> EncoderConfig:
    """The user tower's encoder: the run's architecture at width `dim` (0 = the run's)."""
    return replace(enc, dim=cfg.dim or enc.dim)


@torch.no_grad()
def evaluate_recall(model: TwoTower, arrays: dict[str, np.ndarray], users: Features | None,
                    event_names: tuple[str, ...], device: torch.device, batch_size: int = 1024) -> dict:
    """Candidate recall@50/100/200 of the exact top-k over the item table, per event type."""
    model.eval()
    index = ExactIndex(model.item_table())
    metrics = RecallMetrics(event_names)
    n = len(arrays["action"])
    for lo in range(0, n, batch_size):
        idx = np.arange(lo, min(lo + batch_size, n))
        state = torch.from_numpy(np.asarray(arrays["state"][idx], np.int64)).to(device)
        _, ids = index.search(model.user(state, users.rows(idx) if users is not None else None), max(RECALL_KS))
        metrics.add(ids.cpu(), torch.from_numpy(np.asarray(arrays["action"][idx], np.int64)),
                    torch.from_numpy(np.asarray(arrays["event"][idx], np.int64)))
    return metrics.result()


def train_two_tower(cfg: TwoTowerConfig, enc: EncoderConfig, data: str | Path, out: Path,
                    init: dict[str, torch.Tensor] | None = None, device: str = "auto", resume: bool = False,
                    progress: bool | None = None) -> dict:
    """Train (or resume) the two-tower model in `out` (config.json, features.json, checkpoints/, tb/) on
    seqrec.training.loop.fit.

    `init`: an encoder state dict to start the user tower and the id embeddings from (init = "learner").
    Returns {"step", "valid": recall metrics, "best": recall@100, "best_step"}.
    """
    dev = pick_device(device)
    enc = tower_encoder(enc, cfg)
    ckpt_dir = out / "checkpoints"
    if not resume and (ckpt_dir / "last.pt").exists():
        raise ConfigError(f"{out} already holds a retrieval model; pass --resume to continue it")
    # a relative data path relative to `out`, as the run's own config.json has it (absolute ones, older folders: as
    # given)
    saved = {"data": stored_data_path(data, out), "encoder": asdict(enc), "retrieval": asdict(cfg)}
    if resume and (out / "config.json").exists() and not _same_model(
            json.loads((out / "config.json").read_text()), json.loads(json.dumps(saved)), out, Path(data)):
        raise ConfigError(f"{out}: --resume with a different [retrieval] config than the one it was trained with")
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    user_spec, item_spec, item_feats, sessions = build_features(data, cfg, enc.num_items)
    (out / "config.json").write_text(json.dumps(saved, indent=2))
    (out / "features.json").write_text(json.dumps({"user": user_spec.to_dict(), "item": item_spec.to_dict()}))

    torch.manual_seed(cfg.seed)
    model = TwoTower(enc, user_spec, item_spec, item_feats, cfg.temperature).to(dev)
    if init is not None:
        model.encoder.load_state_dict(init)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)

    def restore(state: dict) -> None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optim"])

    start = resume_point(last_checkpoint(ckpt_dir, dev) if resume else None, restore)

    train_arrays, valid_arrays = load_transitions(data, "train"), load_transitions(data, "valid")
    has_users = bool(user_spec.columns)
    train_users = session_features(user_spec, sessions, train_arrays["session"]) if has_users else None
    valid_users = session_features(user_spec, sessions, valid_arrays["session"]) if has_users else None
    counts = np.bincount(np.asarray(train_arrays["action"]), minlength=enc.num_items).astype(np.float64)
    item_prob = torch.from_numpy(counts / counts.sum()).float().to(dev)  # (I,) q(item)
    names = event_names(read_manifest(data))
    sampler = EpochSampler(len(train_arrays["action"]), cfg.batch_size, cfg.seed)
    writer = open_writer(out / "tb", start, "|param|value|\n|-|-|\n" + "\n".join(
        f"|retrieval.{k}|{v}|" for k, v in asdict(cfg).items()))

    def step_fn(step: int) -> dict[str, torch.Tensor]:
        model.train()
        idx = sampler.indices(step)
        state = torch.from_numpy(np.asarray(train_arrays["state"][idx], np.int64)).to(dev)  # (B, T)
        action = torch.from_numpy(np.asarray(train_arrays["action"][idx], np.int64)).to(dev)  # (B,)
        users = train_users.rows(idx) if train_users is not None else None
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(step_generator(cfg.seed, step).initial_seed())  # dropout
            loss = _loss(model, cfg, state, action, users, item_prob, step_generator(cfg.seed, step, dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss/retrieval": loss.detach()}

    def evaluate_fn() -> Evaluation:
        metrics = evaluate_recall(model, valid_arrays, valid_users, names, dev)
        everything = metrics.get("all", {})
        return Evaluation(metrics, everything.get("recall@100"),
                          {f"metrics/recall@{k}": everything.get(f"recall@{k}", 0.0) for k in RECALL_KS})

    checkpoints = Checkpoints(ckpt_dir, lambda: {"model": model.state_dict(), "optim": opt.state_dict()},
                              "all/recall@100")
    # evaluate_first: where training starts from (with init = "learner": the learner's own ranking)
    schedule = Schedule(cfg.max_steps, cfg.eval_every, cfg.log_every, cfg.batch_size,
                        "perf/retrieval_samples_per_s", evaluate_first=True)
    result = fit(step_fn, evaluate_fn, schedule, start, writer, checkpoints,
                 bar=Bar("retrieval", "recall@100", progress))
    write_hparams(writer, flat_hparams(saved), result)  # the HParams dashboard: data, encoder.*, retrieval.*
    writer.close()
    return result.as_dict()


def _loss(model: TwoTower, cfg: TwoTowerConfig, state: torch.Tensor, action: torch.Tensor, users: Features | None,
          item_prob: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """One batch's sampled-softmax loss (B transitions; M = cfg.random_negatives shared negatives)."""
    user = model.user(state, users)  # (B, D)
    pos = model.item(action)  # (B, D)
    neg = neg_ids = neg_lq = None
    b, m = action.shape[0], cfg.random_negatives
    if m:
        neg_ids = torch.randint(FIRST_ITEM, model.enc.num_items, (m,), generator=g, device=g.device)  # (M,)
        neg = model.item(neg_ids)  # (M, D)
    pos_lq = log_q(action, item_prob, b, m) if cfg.logq_correction else None  # (B,)
    if m and cfg.logq_correction:
        neg_lq = log_q(neg_ids, item_prob, b, m)  # (M,)
    return in_batch_softmax_loss(user, pos, action, cfg.temperature, pos_lq, neg, neg_ids, neg_lq)




def _same_model(old: dict, new: dict, out: Path, data: Path) -> bool:
    """Whether a retrieval folder's config.json `old` is the model `new` would train: equal but for the data path,
    which must name the same folder (relative to `out`, or, in older folders, to the working directory)."""
    same_data = Path(data_path(out, old.get("data", ""))).resolve() == data.resolve()
    return same_data and {**old, "data": None} == {**new, "data": None}
