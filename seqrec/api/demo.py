"""`seqrec demo`: the main job on the built-in data in one command: generate a log, prepare, train, score.

Every stage writes under OUT and re-uses what an earlier demo left there (prepare re-uses an unchanged folder,
training resumes its last checkpoint, scoring re-uses a complete output of the same job), so running it twice
costs seconds the second time.
"""

from __future__ import annotations

from pathlib import Path

from seqrec.datasets.adapters import source_spec
from seqrec.datasets.prepare import PrepareConfig, prepare
from seqrec.datasets.synthetic import config_for_events, write_events
from seqrec.runs.score_config import ScoreConfig
from seqrec.serve.engines import ScoreJob
from seqrec.serve.local import LocalEngine

# SASRec-SQN with the papers' width and discount, two-tower candidates with the log's user and item features, and
# the offer-level Q learner on the log's nudged views (their nudge and propensity: docs/offers.md), short enough
# for a first run on two cores.
DEMO_RUN = {
    "encoder": {"kind": "sasrec", "dim": 64, "blocks": 1, "heads": 1, "dropout": 0.1},
    "head": {"variant": "sqn", "gamma": 0.5},
    "train": {"batch_size": 256, "lr": 0.005, "max_steps": 400, "eval_every": 200, "log_every": 50},
    "retrieval": {"enabled": True, "init": "learner", "random_negatives": 256, "max_steps": 200,
                  "eval_every": 100, "log_every": 50, "user_categorical": ["user_segment"],
                  "item_categorical": ["item_category"]},
    "offers": {"profile": ["user_segment"], "history": 20, "epochs": 3, "blocks": 0},
}


def run_demo(out: Path, events: int = 200_000, seed: int = 0, steps: int | None = None,
             progress: bool | None = None) -> dict:
    """Generate `events` synthetic events, prepare them, train DEMO_RUN (`steps` overrides train.max_steps),
    score the log's sessions; returns {"events", "data", "run", "scored", "manifest"} paths and the manifest."""
    from seqrec.runs.config import run_config
    from seqrec.runs.train import train

    log = out / f"events-{events}-seed{seed}.parquet"
    if not log.exists():
        out.mkdir(parents=True, exist_ok=True)
        write_events(config_for_events(events, seed=seed), log)
    data, run, scored = out / "data", out / "run", out / "scored"
    prepare([log], lambda p: source_spec("events", p), PrepareConfig(source="synthetic", seed=seed), data,
            progress=progress)
    raw = {k: dict(v) for k, v in DEMO_RUN.items()}
    raw["train"]["seed"] = seed
    if steps is not None:
        raw["train"].update(max_steps=steps, eval_every=max(1, steps // 2))
        raw["offers"].update(epochs=max(1, min(3, steps // 100)))
        raw["retrieval"].update(max_steps=max(1, steps // 2), eval_every=max(1, steps // 4))
    cfg = run_config(raw, [], str(data))
    train(cfg, run, resume=(run / "checkpoints" / "last.pt").exists(), progress=progress)
    job = ScoreJob(run, (log,), (source_spec("events", log),), scored, ScoreConfig(seed=seed))
    manifest = LocalEngine().score(job, progress=progress)
    return {"events": log, "data": data, "run": run, "scored": scored, "manifest": manifest}
