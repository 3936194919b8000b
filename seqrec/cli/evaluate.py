"""`seqrec evaluate`: rank the catalogue for every held-out event of a run's data; write metrics.json."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from seqrec.cli.show import metrics_table, repeat_table


def add_parser(sub: Any) -> None:
    """Add the `evaluate` subcommand to the subparsers `sub`."""
    ev = sub.add_parser("evaluate", help="rank the whole catalogue for every held-out event; write metrics.json",
                        description="HR@k and NDCG@k (k = 5, 10, 20) per event type on a split, beside the "
                                    "popularity and recent-items baselines, also split into repeat targets (in the "
                                    "input window) and explore targets (not), written to RUN/metrics.json.")
    ev.add_argument("--run", required=True, type=Path, help="run folder")
    ev.add_argument("--split", default="test", choices=("train", "valid", "test"))
    ev.add_argument("--protocol", default="sessions", choices=("sessions", "loo"),
                    help="sessions: every event of held-out sessions (the papers'); loo: leave-one-out data")
    ev.add_argument("--checkpoint", default="best", choices=("best", "last"))
    ev.add_argument("--pipeline", action=argparse.BooleanOptionalAction, default=None,
                    help="also evaluate retrieve + re-rank and candidate recall@50/100/200 (default: when the run "
                         "has a retrieval model, RUN/retrieval)")
    ev.add_argument("--index", choices=("exact", "faiss"), help="index of the pipeline (default: the run's [index])")
    ev.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """seqrec evaluate: run with parsed arguments; the exit status."""
    from dataclasses import replace

    from seqrec.models.device import retain_heap
    from seqrec.runs.config import saved_config
    from seqrec.runs.evaluate import evaluate_run

    retain_heap()
    index = replace(saved_config(args.run).index, kind=args.index) if args.index else None
    metrics = evaluate_run(args.run, args.split, args.protocol, args.checkpoint, args.pipeline, index)
    print(metrics_table(metrics, args.split))
    repeats = repeat_table(metrics, args.split)
    if repeats:
        print("  repeat targets are in their input window, explore targets are not:")
        print(repeats)
    if args.split in metrics.get("pipeline_info", {}):
        info, recall = metrics["pipeline_info"][args.split], metrics["recall"][args.split]["all"]
        print(f"  pipeline: {info['index']} index, {info['candidates']} candidates, recall@50/100/200 = "
              + "/".join(f"{recall[f'recall@{k}']:.4f}" for k in (50, 100, 200))
              + f"; states/s full ranking {info['states_per_s_full']:,.0f}, "
                f"retrieve + re-rank {info['states_per_s_pipeline']:,.0f}")
    print(f"  written to {args.run / 'metrics.json'}")
    return 0
