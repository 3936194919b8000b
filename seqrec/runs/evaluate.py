"""`seqrec evaluate`: a run's checkpoint on a split beside the popularity and recent-items baselines -> metrics.json."""

from __future__ import annotations

import json
from pathlib import Path

from seqrec.core.config import ConfigError
from seqrec.datasets.features import item_category_codes
from seqrec.datasets.manifest import event_names, load_transitions, read_manifest
from seqrec.models.device import pick_device
from seqrec.retrieval.config import IndexConfig
from seqrec.runs.config import saved_config
from seqrec.runs.learner import trained_learner
from seqrec.runs.pipeline import pipeline_report
from seqrec.training.evaluation import category_scorer, evaluate_arrays, popularity_scorer, recent_scorer


def evaluate_run(run: Path, split: str = "test", protocol: str = "sessions", checkpoint: str = "best",
             pipeline: bool | None = None, index: IndexConfig | None = None) -> dict:
    """Metrics of the run's checkpoint on `split`, with the popularity and recent-items baselines (and, for a run
    with item categories, the recent-items rule then the window's categories' popular items: "recent_category");
    merged into metrics.json.

    With a retrieval model (RUN/retrieval; `pipeline` None = when there is one, True = required, False = skip)
    also "pipeline" (retrieve + re-rank, same protocol), "recall" (candidate recall@K) and "pipeline_info"
    (blend, index, states/s against full ranking), each keyed by split; `index` overrides the run's [index].
    Each event type's row of the model and the baselines also has "repeat" and "explore" (targets in their
    input window or not), each with its own metrics and count."""
    cfg = saved_config(run)
    manifest = read_manifest(cfg.data)
    prepared_as = manifest["config"]["split"]
    if (protocol == "loo") != (prepared_as == "loo"):
        raise ConfigError(f"--protocol {protocol} needs data prepared with --split "
                          f"{'loo' if protocol == 'loo' else 'random or temporal'}; {cfg.data} has {prepared_as!r}")
    device = pick_device(cfg.train.device)
    learner, path = trained_learner(cfg, run, device, checkpoint)
    names = event_names(manifest)
    events = cfg.encoder.event_types > 0  # [encoder] events: the learner reads the windows' event types
    arrays = load_transitions(cfg.data, split, events)
    model = evaluate_arrays(learner.scores, arrays, names, device, cfg.train.eval_batch_size, split_repeat=True,
                            events=events)
    train_actions = load_transitions(cfg.data, "train")["action"]
    makers = {"popularity": popularity_scorer, "recent": recent_scorer}
    if cfg.encoder.categories:  # a category-aware model sits beside the category rule too
        codes = item_category_codes(cfg.data, cfg.encoder.num_items)
        makers["recent_category"] = lambda actions, n, dev: category_scorer(actions, n, codes, dev)
    baselines = {name: evaluate_arrays(make(train_actions, cfg.encoder.num_items, device), arrays, names, device,
                                       cfg.train.eval_batch_size, split_repeat=True)
                 for name, make in makers.items()}
    has_tower = (run / "retrieval" / "checkpoints" / "last.pt").exists()
    if pipeline and not has_tower:
        raise ConfigError(f"{run}: no retrieval model for --pipeline (train with [retrieval] enabled = true)")
    extra = {}
    if pipeline is not False and has_tower:
        extra = pipeline_report(run, split, learner, cfg, index)
    out_path = run / "metrics.json"
    metrics = json.loads(out_path.read_text()) if out_path.exists() else {}
    metrics[split] = model
    for name, values in baselines.items():
        metrics.setdefault(name, {})[split] = values
    metrics.setdefault("checkpoint", {})[split] = {"path": str(path.relative_to(run)), "protocol": protocol}
    for key, value in extra.items():
        metrics.setdefault(key, {})[split] = value
    out_path.write_text(json.dumps(metrics, indent=2))
    return metrics
