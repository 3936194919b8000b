"""The `seqrec` command: the argument parser assembled from one module per subcommand, and the shared error
handling (a config, input, value or file-system error, or an output another command is writing, is one line
`seqrec CMD: error: ...` and exit status 2; `seqrec --debug CMD ...` lets the traceback through instead)."""

from __future__ import annotations

import argparse
import sys

from seqrec.cli import abtest, demo, evaluate, generate, ope, prepare, score, simulate, train
from seqrec.core.config import ConfigError
from seqrec.core.lock import OutputLocked
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
    except (InputError, ConfigError, ValueError, OSError, OutputLocked) as e:
        if args.debug:
            raise
        print(f"seqrec {args.command}: error: {os_error_line(e) if isinstance(e, OSError) else e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"seqrec {args.command}: interrupted", file=sys.stderr)
        return 130


def os_error_line(e: OSError) -> str:
    """`<path>: <reason>` for a file-system error (a file where a folder should be, a path under a file, no
    permission), instead of Python's `[Errno N] ...`; the bare message when the error names no path."""
    if e.filename is None or not e.strerror:
        return str(e)
    paths = f"{e.filename} -> {e.filename2}" if e.filename2 is not None else f"{e.filename}"
    return f"{paths}: {e.strerror[0].lower()}{e.strerror[1:]}"


def build_parser() -> argparse.ArgumentParser:
    """The whole parser: every command module adds its subcommand."""
    p = argparse.ArgumentParser(prog="seqrec", description="Offline-RL sequential recommender for campaigns.")
    p.add_argument("--debug", action="store_true",
                   help="show the full traceback of an error instead of the one-line message")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return p


if __name__ == "__main__":
    raise SystemExit(main())
