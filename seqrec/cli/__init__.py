"""The `seqrec` command, one module per subcommand."""

from seqrec.cli.main import main

__all__ = ["main"]
