"""`seqrec train`: a run config -> a run folder (the learner, then the two-tower model and the nudge bandit).

Run folder: config.json, checkpoints/{last,best}.pt (+ .json), tb/ (TensorBoard), metrics.json.
Every step's randomness comes from (seed, step), and checkpoints hold the model and optimiser states, so
a run killed at any moment and resumed from its last checkpoint ends exactly as an uninterrupted one.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from seqrec.core.config import ConfigError
from seqrec.core.io import atomic_write, atomic_write_json
from seqrec.core.lock import output_lock
from seqrec.datasets.features import item_category_codes
from seqrec.datasets.manifest import event_names, load_transitions, read_manifest
from seqrec.models.device import pick_device
from seqrec.nudging.fit import fit_run_bandit
from seqrec.retrieval.tower_training import train_two_tower
from seqrec.runs.config import RunConfig, same_run, saved_config, saved_dict
from seqrec.runs.learner import build_learner
from seqrec.training import distributed
from seqrec.training.calibrate import calibrate_checkpoint
from seqrec.training.checkpoints import last_checkpoint, load_checkpoint
from seqrec.training.evaluation import evaluate_arrays, selected_metric
from seqrec.training.loop import (
    Bar,
    Checkpoints,
    Evaluation,
    Hooks,
    Schedule,
    fit,
    flat_hparams,
    open_writer,
    resume_point,
    write_hparams,
)
from seqrec.training.sampler import EpochSampler, to_batch


def train(cfg: RunConfig, out: Path, resume: bool = False, progress: bool | None = None) -> dict:
    """Train (or resume) the run in `out`; returns the final validation metrics and the best checkpoint.

    Under torchrun (WORLD_SIZE > 1) every process runs this loop on its rows of each batch, with gradients
    averaged over the processes; train.batch_size is then the global batch (seqrec/distributed.py). The writing
    process holds `out`'s lock throughout (seqrec/core/lock.py): a second writer of `out` stops, naming it."""
    rank = distributed.from_env()
    device = pick_device(cfg.train.device)
    if rank is None:
        with output_lock(out, "seqrec train"):
            return _train(cfg, out, resume, progress, device, None)
    distributed.check_supported(rank, cfg.algorithm, cfg.train.batch_size)
    if cfg.head.copy_calibrate:
        raise ConfigError("[head] copy_calibrate chooses the gates on validation in one process: train it without "
                          "torchrun (or --nproc_per_node=1)")
    device = distributed.rank_device(rank, device)
    with output_lock(out, "seqrec train") if rank.main else nullcontext(), distributed.process_group(rank, device):
        return _train(cfg, out, resume, progress, device, rank)


def _open_run_folder(cfg: RunConfig, out: Path, resume: bool) -> None:
    """Check that `out` is new (or resumed with the same config) and write config.json into it."""
    ckpt_dir = out / "checkpoints"
    if not resume and (ckpt_dir / "last.pt").exists():
        raise ConfigError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    saved = out / "config.json"
    # compared as parsed, so a key added to seqrec since the run started (at its default) is no difference
    if resume and saved.exists() and not same_run(saved_config(out), cfg):
        raise ConfigError(f"{out}: --resume with a different config than the run's config.json")
    saved.write_text(json.dumps(saved_dict(cfg, out), indent=2))


def _train(cfg: RunConfig, out: Path, resume: bool, progress: bool | None, device: torch.device,
           rank: distributed.Rank | None) -> dict:
    """The learner's part of `train` on seqrec.training.loop.fit; `rank` None for a single process (no
    collectives at all), else rank 0 writes."""
    t_cfg = cfg.train
    main = rank is None or rank.main
    names = event_names(read_manifest(cfg.data))
    ckpt_dir = out / "checkpoints"
    distributed.on_main(rank, _open_run_folder, cfg, out, resume)

    torch.manual_seed(t_cfg.seed)  # initialisation
    learner = build_learner(cfg, device)

    def restore(state: dict) -> None:
        learner.load_state_dict(state["model"])
        learner.load_optim_state(state["optim"])

    # with ranks, rank 0 reads the checkpoint (on CPU) and sends it to the others
    saved = distributed.on_main(rank, last_checkpoint, ckpt_dir, device if rank is None else "cpu") if resume else None
    start = resume_point(saved, restore)
    if rank is not None:
        distributed.broadcast_module(learner)  # every rank starts from rank 0's weights
        distributed.sync_gradients(learner.opts, rank.world)  # gradients averaged before each optimiser step

    events = cfg.encoder.event_types > 0  # [encoder] events: the windows' event types reach the learner
    train_arrays = load_transitions(cfg.data, "train", events)
    if cfg.encoder.categories:  # each item's category code (datasets/features.py), kept in the checkpoints
        learner.set_item_categories(torch.from_numpy(item_category_codes(cfg.data, cfg.encoder.num_items)))
    if cfg.algorithm == "seqrec" and learner.needs_item_counts:  # the sampler's / the category component's counts
        learner.set_item_counts(torch.from_numpy(np.bincount(train_arrays["action"], minlength=cfg.encoder.num_items)))
    valid_part = distributed.split_rows(load_transitions(cfg.data, "valid", events), rank)  # this rank's rows
    sampler = EpochSampler(len(train_arrays["action"]), t_cfg.batch_size, t_cfg.seed)
    rows = [f"|{sec}.{k}|{v}|" for sec, d in cfg.to_dict().items() if isinstance(d, dict) for k, v in d.items()]
    rows.insert(0, f"|algorithm|{cfg.algorithm}|")
    writer = open_writer(out / "tb", start, "|param|value|\n|-|-|\n" + "\n".join(rows), enabled=main)
    event, metric = t_cfg.select_metric.split("/")
    amp = t_cfg.amp and device.type == "cuda"

    def step_fn(step: int) -> dict[str, float]:
        learner.train()
        batch = to_batch(train_arrays, distributed.shard_rows(sampler.indices(step), rank), device, events)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            return learner.update(batch, step, t_cfg.seed)

    def evaluate_fn() -> Evaluation:
        learner.eval()
        metrics = distributed.gather_metrics(
            rank, evaluate_arrays(learner.scores, valid_part, names, device, t_cfg.eval_batch_size, events=events),
            names)
        scalars = {f"metrics/{ev}_{m}": v for ev, row in metrics.items() for m, v in row.items() if m != "count"}
        return Evaluation(metrics, selected_metric(metrics, event, metric), scalars)

    def save_d3rlpy(step: int) -> None:  # d3rlpy's own file too, for d3rlpy_bridge.load_learnable
        atomic_write(ckpt_dir / "best.d3", lambda tmp: learner.save_d3rlpy(str(tmp)))

    hooks = Hooks(on_best=save_d3rlpy if cfg.algorithm != "seqrec" else None,
                  reduce_stats=(lambda s: distributed.mean_stats(s, device)) if rank is not None else None)
    checkpoints = Checkpoints(ckpt_dir, lambda: {"model": learner.state_dict(), "optim": learner.optim_state()},
                              t_cfg.select_metric)
    schedule = Schedule(t_cfg.max_steps, t_cfg.eval_every, t_cfg.log_every, t_cfg.batch_size,
                        patience=t_cfg.patience)
    fitted = fit(step_fn, evaluate_fn, schedule, start, writer, checkpoints, hooks,
                 Bar("train", t_cfg.select_metric, progress), writes=main)
    tables = {sec: d for sec, d in cfg.to_dict().items() if isinstance(d, dict)}
    write_hparams(writer, {"algorithm": cfg.algorithm, **flat_hparams(tables)}, fitted)  # the HParams dashboard
    writer.close()
    result = fitted.as_dict()
    if cfg.head.copy_calibrate and main and (ckpt_dir / "best.pt").exists():  # the gates' offsets, on validation
        result["calibration"] = calibrate_checkpoint(learner, ckpt_dir / "best.pt",
                                                     lambda: evaluate_fn().value, device)
        atomic_write_json(out / "calibration.json", result["calibration"], indent=2)
    if cfg.retrieval.enabled and main:  # the two-tower candidate generator, into out/retrieval (rank 0 alone)
        result["retrieval"] = train_retrieval(cfg, out, resume, progress)
    if main:  # the nudge bandit, fitted offline on the training split's logged nudges (seqrec/nudging/fit.py)
        result["bandit"] = fit_run_bandit(cfg.data, out, t_cfg.seed, config=cfg.bandit)
    if main and cfg.offers is not None:  # the offer-level Q learner, when the log carries offers (RUN/offers)
        from seqrec.runs.offers import train_run_offers

        result["offers"] = train_run_offers(cfg, out)
    return result


def learner_encoder_state(cfg: RunConfig, run: Path) -> dict[str, torch.Tensor]:
    """The encoder state dict of the run's trained learner (best checkpoint, else last), first network."""
    for name in ("best", "last"):
        path = run / "checkpoints" / f"{name}.pt"
        if path.exists():
            learner = build_learner(cfg, torch.device("cpu"))
            learner.load_state_dict(load_checkpoint(path, "cpu")["model"])
            return learner.encoder_state_dict()
    raise ConfigError(f"{run}: no learner checkpoint to start the retrieval model from (init = \"learner\")")


def train_retrieval(cfg: RunConfig, run: Path, resume: bool = False, progress: bool | None = None) -> dict:
    """Train the run's [retrieval] model into RUN/retrieval after the learner (`seqrec train`)."""
    out = run / "retrieval"
    fresh = not (resume and (out / "checkpoints" / "last.pt").exists())
    init = learner_encoder_state(cfg, run) if cfg.retrieval.init == "learner" and fresh else None
    return train_two_tower(cfg.retrieval, cfg.encoder, cfg.data, out, init, cfg.train.device, resume, progress)
