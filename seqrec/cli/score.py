"""`seqrec score`: batch-score raw sessions with a trained run (top items, scores, nudge, propensity, and the
session's offer when the run has an offer learner)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from seqrec.cli.show import score_summary
from seqrec.core.config import ConfigError, load_toml
from seqrec.core.lock import output_lock
from seqrec.datasets.adapters import SOURCES, source_spec
from seqrec.datasets.readers import FORMATS, TIME_UNITS, parse_map
from seqrec.rl.bandits.joint import JointConfig
from seqrec.runs.file_config import check_run_file, score_config
from seqrec.runs.score_config import ScoreConfig
from seqrec.serve.factory import ENGINES
from seqrec.serve.offer_settings import DECISION_KINDS, DEFAULT_DECISION, OfferSettings


def add_parser(sub: Any) -> None:
    """Add the `score` subcommand to the subparsers `sub`."""
    sc = sub.add_parser("score", help="score user sessions in batch: top items, scores, nudge and propensity per row",
                        description="Read raw event logs with prepare's readers and validation (bad rows to "
                                    "OUT/quarantine.parquet), cut sessions, and write OUT/scores/part-*.parquet with "
                                    "one row per (session, rank): item, two-tower score, Q value, final score, nudge, "
                                    "propensity, model version and config hash (with the run's offer learner, "
                                    "RUN/offers, also the session's offer: offer_item_id, offer_nudge_id, offer_q, "
                                    "offer_joint_propensity, offer_product_propensity); then manifest.json and "
                                    "_COMPLETE. "
                                    "A killed run resumes when started again with the same command.")
    sc.add_argument("--run", required=True, type=Path, help="run folder (seqrec train --out)")
    sc.add_argument("--input", required=True, nargs="+", type=Path, metavar="EVENTS", help="event file(s)")
    sc.add_argument("--out", required=True, type=Path, help="output folder")
    sc.add_argument("--config", type=Path, help="run file (TOML) whose [score] table sets what the flags below do not "
                                                "(default: the run's recorded [score], else the defaults shown)")
    sc.add_argument("--top", type=int, help="recommendations per session (default 10)")
    sc.add_argument("--candidates", type=int, help="candidates retrieved before re-ranking (default 200)")
    sc.add_argument("--batch-size", type=int, help="sessions per scored batch (default 4096)")
    sc.add_argument("--workers", type=int, help="batches scored at once, one torch thread each (default: torch's "
                                                "thread count, i.e. the cores)")
    sc.add_argument("--engine", choices=ENGINES, default="local",
                    help="local: this machine (default); ray: Ray Data, --workers actors (default: the cluster's CPUs; "
                         "extra seqrec[ray]), the same rows")
    sc.add_argument("--ray-address", metavar="ADDRESS",
                    help="with --engine ray: the Ray cluster to join (HOST:6379, or auto: the one this machine is in); "
                         "default: start a local Ray with this machine's cores")
    sc.add_argument("--index", choices=("exact", "faiss"), help="retrieval index (default: the run's [index])")
    sc.add_argument("--nprobe", type=int, help="faiss IVF clusters searched per query (default: the run's [index])")
    sc.add_argument("--checkpoint", choices=("best", "last"))
    sc.add_argument("--seed", type=int, help="seed of the nudge draws (default 0)")
    sc.add_argument("--session-gap-minutes", type=float,
                    help="inactivity that ends a session without session ids (default: the run's prepared data's)")
    sc.add_argument("--bucket-rows", type=int, help="rows per on-disk bucket (bounds memory)")
    sc.add_argument("--catalogue", type=Path, help="nudge catalogue TOML (default: the shipped one)")
    sc.add_argument("--source", choices=SOURCES, help="log format (default: the run's prepared data's, else events)")
    sc.add_argument("--map", help="column map, as in seqrec prepare")
    sc.add_argument("--sep", help="CSV field separator (default ',' or tab for .tsv)")
    sc.add_argument("--no-header", action="store_true", help="the CSV file has no header line")
    sc.add_argument("--format", choices=("auto", *FORMATS), default="auto", help="input format")
    sc.add_argument("--time-unit", choices=TIME_UNITS, help="unit of numeric times")
    sc.add_argument("--event-type", help="constant event type for files without an event column")
    sc.add_argument("--event-map", help="raw=type pairs, as in seqrec prepare (default: the run's prepared data's)")
    sc.add_argument("--offers", action=argparse.BooleanOptionalAction, default=None,
                    help="decide each session's offer with the run's offer learner (default: when the run has "
                         "RUN/offers; --no-offers: today's rows without the offer columns)")
    sc.add_argument("--offer-decision", choices=DECISION_KINDS, default=DEFAULT_DECISION.kind,
                    help=f"the offers' decision layer over the allowed (product, nudge) pairs "
                         f"(default {DEFAULT_DECISION.kind})")
    sc.add_argument("--offer-epsilon", type=float, default=DEFAULT_DECISION.epsilon,
                    help=f"epsilon-greedy: the share spread uniformly over the allowed pairs "
                         f"(default {DEFAULT_DECISION.epsilon})")
    sc.add_argument("--offer-temperature", type=float, default=DEFAULT_DECISION.temperature,
                    help=f"softmax: the temperature, in units of Q (default {DEFAULT_DECISION.temperature})")
    sc.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                    help="show progress bars (default: in a terminal)")
    sc.set_defaults(func=run)


def score_settings(args: argparse.Namespace) -> ScoreConfig:
    """The ScoreConfig of a `seqrec score` call: flags > --config's [score] > the run's recorded [score] >
    defaults (the whole run file is checked, as every command does)."""
    from seqrec.runs.config import saved_config

    raw = load_toml(args.config) if args.config else {}
    check_run_file(raw)
    flags = {"top": args.top, "candidates": args.candidates, "batch_size": args.batch_size,
             "workers": args.workers, "index": args.index, "nprobe": args.nprobe, "checkpoint": args.checkpoint,
             "seed": args.seed, "session_gap_minutes": args.session_gap_minutes, "bucket_rows": args.bucket_rows,
             "catalogue": str(args.catalogue) if args.catalogue else None}
    table = {**raw.get("score", {}), **{k: v for k, v in flags.items() if v is not None}}
    return score_config(table, base=saved_config(args.run).score)


def offer_settings(args: argparse.Namespace) -> OfferSettings:
    """The offer flags of a `seqrec score` call (ConfigError naming the flag when a value is out of range)."""
    try:
        decision = JointConfig(kind=args.offer_decision, epsilon=args.offer_epsilon,
                               temperature=args.offer_temperature)
    except ValueError as e:
        raise ConfigError(f"--offer-{str(e).split(' ', 1)[0]}: {e}") from None
    return OfferSettings(args.offers, decision)


def run(args: argparse.Namespace) -> int:
    """seqrec score: run with parsed arguments; the exit status."""
    from seqrec.models.device import retain_heap
    from seqrec.serve.engines import ScoreJob, reader_defaults
    from seqrec.serve.factory import make_engine

    retain_heap()
    cfg = score_settings(args)
    offers = offer_settings(args)
    source, event_map = reader_defaults(args.run)
    sep = "\t" if args.sep in ("\\t", "tab") else args.sep
    specs = tuple(source_spec(args.source or source, p, columns=parse_map(args.map) if args.map else (),
                              fmt=args.format, sep=sep, header=False if args.no_header else None,
                              time_unit=args.time_unit, event_type=args.event_type,
                              event_map=parse_map(args.event_map) if args.event_map is not None else event_map)
                  for p in args.input)
    engine = make_engine(args.engine, ray_address=args.ray_address)
    with output_lock(args.out, "seqrec score"):  # one writer per output folder (seqrec/core/lock.py)
        m = engine.score(ScoreJob(args.run, tuple(args.input), specs, args.out, cfg, offers), args.progress)
    print(score_summary(m, args.out))
    line = offer_summary(m)
    if line:
        print(line)
    return 0


def offer_summary(manifest: dict) -> str | None:
    """One line on the sessions' offers of a score manifest (None when the offer learner was not used)."""
    offers = manifest.get("offers") or {}
    if not offers.get("used"):
        return None
    d = offers["decision"]
    layer = {"greedy": "greedy", "epsilon_greedy": f"epsilon-greedy (epsilon {d['epsilon']:g})",
             "softmax": f"softmax (temperature {d['temperature']:g})"}[d["kind"]]
    return (f"  offers: {layer} over the offer learner's Q ({offers['learner']}: {offers['products']} products x "
            f"{offers['nudges']} nudges) -> {', '.join(offers['columns'])}")
