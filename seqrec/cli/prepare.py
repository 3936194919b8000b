"""`seqrec prepare`: validate event logs into a prepared dataset (sessions, vocabulary, splits, transitions)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from seqrec.cli.show import summary
from seqrec.core.config import ConfigError, from_dict, load_toml
from seqrec.core.io import atomic_write
from seqrec.core.lock import output_lock
from seqrec.datasets.adapters import SOURCES, source_spec
from seqrec.datasets.prepare import PrepareConfig, prepare
from seqrec.datasets.readers import FORMATS, TIME_UNITS, parse_map
from seqrec.runs.file_config import check_run_file, prepare_table


def add_parser(sub: Any) -> None:
    """Add the `prepare` subcommand to the subparsers `sub`."""
    pr = sub.add_parser("prepare", help="validate event logs and build sessions, vocabulary, splits, transitions",
                        description="Read event logs, quarantine bad rows, cut sessions, build the item "
                                    "vocabulary, split by session and write RL transitions to --out, with "
                                    "a manifest.json summary. Re-uses --out when inputs and config are unchanged.")
    pr.add_argument("--source", choices=(*SOURCES, "synthetic"),
                    help="log format: a named adapter, 'events' for the generic reader, or 'synthetic' "
                         "to generate the built-in log (default: the config's source, else events)")
    pr.add_argument("--input", nargs="+", type=Path, default=[], metavar="PATH", help="input file(s)")
    pr.add_argument("--out", required=True, type=Path, help="prepared-dataset folder")
    pr.add_argument("--config", type=Path, help="TOML file with a [prepare] table (CLI flags override it)")
    pr.add_argument("--map", help="column map, e.g. user=uid,session=sid,item=sku,time=ts,event=action; "
                                  "other keys keep a column as a feature; without a header use 0-based positions")
    pr.add_argument("--sep", help="CSV field separator (default ',' or tab for .tsv); '\\t' means tab")
    pr.add_argument("--no-header", action="store_true", help="the CSV file has no header line")
    pr.add_argument("--format", choices=("auto", *FORMATS), default=None,
                    help="input format (default: from the file suffix)")
    pr.add_argument("--time-unit", choices=TIME_UNITS,
                    help="unit of numeric times, or iso (default auto: numbers are seconds, text is ISO-8601)")
    pr.add_argument("--event-type", help="constant event type for files without an event column")
    pr.add_argument("--event-map", help="raw=type pairs mapping extra event names to view/like/cart/purchase, "
                                        "raw=REWARD to keep a new event type with that reward, or raw=drop to "
                                        "exclude those rows (counted in the manifest)")
    pr.add_argument("--min-session-length", type=int, help="drop shorter sessions (default 3)")
    pr.add_argument("--session-gap-minutes", type=float,
                    help="inactivity that ends a session (default 30); inf: one session per user")
    pr.add_argument("--window", type=int, help="state window W (default 10)")
    pr.add_argument("--min-item-count", type=int, help="rarer items map to the out-of-vocabulary index (default 1)")
    pr.add_argument("--split", choices=("random", "temporal", "loo"),
                    help="random 8:1:1 by session (default), temporal by session start, or loo: per session the "
                         "last event is test, the one before valid, the rest train")
    pr.add_argument("--max-sessions", type=int, metavar="N",
                    help="after the length filter keep a uniform random sample of exactly N sessions (seeded "
                         "by --seed); vocabulary, splits and transitions come from the sample (default: all)")
    pr.add_argument("--seed", type=int, help="seed of the random split and the session sample (default 0)")
    pr.add_argument("--id-type", choices=("auto", "int", "string"), help="id column type (default auto)")
    pr.add_argument("--strict", action="store_true", help="stop at the first bad row instead of quarantining it")
    pr.add_argument("--events", type=int, default=200_000, help="with --source synthetic: events to generate")
    pr.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                    help="show a progress bar (default: on for large inputs in a terminal)")
    pr.set_defaults(func=run)


def _prepare_settings(args: argparse.Namespace) -> tuple[PrepareConfig, dict[str, Any]]:
    """PrepareConfig and reader options from --config's [prepare] table, overridden by flags; the rest of the
    run file is checked too (a typo in any table stops here rather than at `seqrec train`)."""
    raw = load_toml(args.config) if args.config else {}
    check_run_file(raw)
    table, reader = prepare_table(raw.get("prepare", {}))
    flags = {"min_session_length": args.min_session_length, "session_gap_minutes": args.session_gap_minutes,
             "window": args.window, "min_item_count": args.min_item_count, "split": args.split,
             "seed": args.seed, "id_type": args.id_type, "max_sessions": args.max_sessions}
    table.update({k: v for k, v in flags.items() if v is not None})
    if args.strict:
        table["strict"] = True
    table["source"] = args.source or table.get("source", "events")
    if table["source"] not in (*SOURCES, "synthetic"):
        raise ConfigError(f"prepare.source {table['source']!r} is not one of {', '.join((*SOURCES, 'synthetic'))}")
    cfg = from_dict(PrepareConfig, table, "prepare")

    def pairs(v: Any) -> tuple[tuple[str, str], ...]:
        if v is None:
            return ()
        return tuple((k, str(x)) for k, x in v.items()) if isinstance(v, dict) else parse_map(v)

    sep = args.sep if args.sep is not None else reader.get("sep")
    opts = {
        "columns": pairs(args.map if args.map is not None else reader.get("map")),
        "fmt": args.format or reader.get("format", "auto"),
        "sep": "\t" if sep in ("\\t", "tab") else sep,
        "header": False if args.no_header else reader.get("header"),
        "time_unit": args.time_unit or reader.get("time_unit"),
        "event_type": args.event_type or reader.get("event_type"),
        "event_map": pairs(args.event_map if args.event_map is not None else reader.get("event_map")),
    }
    return cfg, opts


def run(args: argparse.Namespace) -> int:
    """seqrec prepare: run with parsed arguments; the exit status. Holds --out's lock (seqrec/core/lock.py) from
    the start, as --source synthetic writes its log there first."""
    with output_lock(args.out, "seqrec prepare"):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    cfg, opts = _prepare_settings(args)
    inputs = list(args.input)
    source = cfg.source
    if source == "synthetic":
        from seqrec.datasets.synthetic import config_for_events, write_events

        if inputs:
            raise ValueError("--source synthetic generates its own log; give no --input")
        path = args.out / "generated" / f"events-{args.events}-seed{cfg.seed}.parquet"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda tmp: write_events(config_for_events(args.events, seed=cfg.seed), tmp),
                         tmp=path.with_name(f".{path.stem}.tmp{path.suffix}"))  # a kill leaves no half log
        inputs, source = [path], "events"
    if not inputs:
        raise ValueError("give at least one --input file")
    manifest = prepare(inputs, lambda p: source_spec(source, p, **opts), cfg, args.out, progress=args.progress)
    print(summary(manifest, args.out))
    return 0
