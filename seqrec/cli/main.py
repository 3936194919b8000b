"""The `seqrec` command: the argument parser assembled from one module per subcommand, and the shared error
handling (a config, input or value error is one line `seqrec CMD: error: ...` and exit status 2)."""

from __future__ import annotations

import argparse
import sys

from seqrec.cli import abtest, demo, evaluate, generate, ope, prepare, score, simulate, train
from seqrec.core.config import ConfigError
from seqrec.datasets.readers import InputError

COMMANDS = (generate, prepare, train, evaluate, ope, simulate, score, demo, abtest)  # in `seqrec --help` order


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` (default sys.argv) and run the command; the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (InputError, ConfigError, ValueError) as e:
        print(f"seqrec {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"seqrec {args.command}: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    """The whole parser: every command module adds its subcommand."""
    p = argparse.ArgumentParser(prog="seqrec", description="Offline-RL sequential recommender for campaigns.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return p


if __name__ == "__main__":
    raise SystemExit(main())
