"""`seqrec demo`: the main job on built-in data (generate, prepare, train, score)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from seqrec.cli.score import offer_summary
from seqrec.cli.show import score_summary


def add_parser(sub: Any) -> None:
    """Add the `demo` subcommand to the subparsers `sub`."""
    dm = sub.add_parser("demo", help="the main job on built-in data: generate, prepare, train, score",
                        description="Generate the built-in synthetic log, prepare it, train SASRec-SQN with two-tower "
                                    "candidates, the nudge bandit and the offer-level Q learner, score every "
                                    "session; prints where the "
                                    "TensorBoard logs and the scored files are. Re-running re-uses finished stages.")
    dm.add_argument("--out", type=Path, default=Path("runs/demo"), help="folder for everything (default runs/demo)")
    dm.add_argument("--events", type=int, default=200_000, help="events to generate (default 200000)")
    dm.add_argument("--seed", type=int, default=0)
    dm.add_argument("--steps", type=int, help="training steps (default 400; retrieval half of it)")
    dm.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    dm.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """seqrec demo: run with parsed arguments; the exit status."""
    from seqrec.api.demo import run_demo
    from seqrec.models.device import retain_heap

    retain_heap()
    r = run_demo(args.out, args.events, args.seed, args.steps, args.progress)
    print(score_summary(r["manifest"], r["scored"]))
    line = offer_summary(r["manifest"])
    if line:
        print(line)
    print(f"events: {r['events']}   prepared: {r['data']}   run: {r['run']}")
    print(f"TensorBoard: tensorboard --logdir {r['run']}   (learner in tb/, two-tower in retrieval/tb/)")
    if (r["run"] / "offers" / "offers.json").exists():
        print(f"offer learner: {r['run'] / 'offers'}   (its gate: seqrec ope --log {r['data']} --policy "
              f"{r['run'] / 'offers'})")
    print(f"scored sessions: {r['scored'] / 'scores'} (Parquet parts; manifest.json and quarantine.parquet in "
          f"{r['scored']})")
    return 0
