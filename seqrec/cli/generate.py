"""`seqrec generate`: write the seeded synthetic SDK event log (the built-in data)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    """Add the `generate` subcommand to the subparsers `sub`."""
    g = sub.add_parser("generate", help="write a seeded synthetic SDK event log (the built-in data)",
                       description="Write a seeded synthetic SDK event log: users with latent preferences, "
                                   "sessions, a view > like/cart > purchase funnel and logged nudges.")
    g.add_argument("--out", required=True, type=Path, help="output file: .parquet, .csv, .tsv or .jsonl")
    g.add_argument("--events", type=int, default=200_000, help="about how many events (default 200000)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    g.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """seqrec generate: run with parsed arguments; the exit status."""
    from seqrec.datasets.synthetic import config_for_events, write_events

    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = write_events(config_for_events(args.events, seed=args.seed), args.out)
    print(f"wrote {rows:,} events to {args.out}")
    return 0
