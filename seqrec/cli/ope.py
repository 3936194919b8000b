"""`seqrec ope`: off-policy estimates of a nudge policy's value from a logged event file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from seqrec.datasets.adapters import source_spec
from seqrec.datasets.readers import FORMATS, TIME_UNITS, parse_map


def add_parser(sub: Any) -> None:
    """Add the `ope` subcommand to the subparsers `sub`."""
    op = sub.add_parser("ope", help="estimate a nudge policy's value from a logged event file (off-policy)",
                        description="Off-policy evaluation: the expected reward per nudge decision that a policy "
                                    "would have earned, estimated from logged decisions (nudge_id + propensity) by "
                                    "IPS, self-normalised IPS, the direct method and doubly robust, with "
                                    "percentile-bootstrap intervals.")
    op.add_argument("--log", required=True, type=Path, help="event file (CSV/TSV/Parquet/JSONL in the event schema, "
                                                            "with nudge_id and propensity) or a prepared folder")
    op.add_argument("--policy", required=True, help="uniform | arm:ID | greedy[:EPS] | a run folder with bandit.json "
                                                    "| an offer learner's folder (offers.json): the gate, below")
    op.add_argument("--estimators", default="ips,snips,dm,dr", help="comma-separated (default ips,snips,dm,dr)")
    op.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default 1000; 0: none)")
    op.add_argument("--level", type=float, default=0.95, help="interval coverage (default 0.95)")
    op.add_argument("--seed", type=int, default=0, help="seed of the resampling (default 0)")
    op.add_argument("--clip", type=float, help="clip importance weights at this value (IPS and DR)")
    op.add_argument("--catalogue", type=Path, help="nudge catalogue TOML (default: the shipped one)")
    op.add_argument("--available", choices=("all", "catalogue"), default="all",
                    help="arms available at each decision: all, or the catalogue's per item/category (default all)")
    op.add_argument("--rewards", help="reward per event type, e.g. view=0,cart=0,purchase=1 (default: the training "
                                      "rewards, or a prepared folder's)")
    op.add_argument("--map", help="column map for the event file, as in seqrec prepare")
    op.add_argument("--sep", help="CSV field separator (default ',' or tab for .tsv)")
    op.add_argument("--format", choices=("auto", *FORMATS), default="auto", help="input format")
    op.add_argument("--time-unit", choices=TIME_UNITS, help="unit of numeric times")
    op.add_argument("--json", type=Path, help="also write the estimates to this JSON file")
    gate = op.add_argument_group("the gate (--policy names an offer learner's folder)",
                                 "the learner's decisions over (product, nudge) against the logged policy, "
                                 "with a go / no-go")
    gate.add_argument("--decision", default="greedy",
                      help="the decision layer: greedy | epsilon:EPS | softmax:TEMPERATURE (default greedy)")
    gate.add_argument("--all-customers", action="store_true",
                      help="use every customer's offers, not only those the learner never trained on")
    op.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """seqrec ope: run with parsed arguments; the exit status."""
    import json
    import warnings

    from seqrec.nudging.catalogue import load_catalogue
    from seqrec.nudging.offer_gate import offers_folder
    from seqrec.nudging.offpolicy import estimates_table, load_log, load_policy_bandit, parse_rewards, resolve_policy
    from seqrec.rl.ope.estimators import OpeConfig, estimate_policy, estimators_from_names

    config = OpeConfig(resamples=args.bootstrap, level=args.level, seed=args.seed)
    folder = offers_folder(args.policy)
    if folder is not None:
        return run_gate(args, folder, config)
    estimators = estimators_from_names(args.estimators, config, clip=args.clip)
    catalogue = load_catalogue(args.catalogue)
    bandit = load_policy_bandit(args.policy)
    arms = bandit.arms if bandit is not None else catalogue.ids
    rewards = parse_rewards(args.rewards) if args.rewards else None
    spec = None
    if not args.log.is_dir():
        spec = log_spec(args)
    loaded = load_log(args.log, arms, spec, rewards, catalogue if args.available == "catalogue" else None)
    policy, what = resolve_policy(args.policy, loaded, bandit)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        estimates = estimate_policy(loaded.log, policy, estimators=estimators)
    log = loaded.log
    print(f"{log.n:,} nudge decisions ({len(arms)} arms) from {loaded.events:,} events in {args.log}; "
          f"logged mean reward {log.reward.mean():.6g}")
    print(f"policy: {what}; {args.bootstrap} bootstrap resamples, seed {args.seed}")
    print(estimates_table(estimates))
    for w in caught:
        print(f"seqrec ope: warning: {w.message}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps({"log": str(args.log), "policy": args.policy, "decisions": log.n,
                                         "estimates": [e.as_dict() for e in estimates]}, indent=1) + "\n")
    return 0


def decision_config(text: str) -> Any:
    """greedy | epsilon:EPS | softmax:TEMPERATURE -> a JointConfig (ValueError naming the flag otherwise)."""
    from seqrec.rl.bandits.joint import JointConfig

    kind, _, value = text.partition(":")
    try:
        if kind == "greedy" and not value:
            return JointConfig(kind="greedy")
        if kind == "epsilon":
            return JointConfig(kind="epsilon_greedy", epsilon=float(value))
        if kind == "softmax":
            return JointConfig(kind="softmax", temperature=float(value))
    except ValueError as e:
        raise ValueError(f"--decision {text}: {e}") from None
    raise ValueError(f"--decision must be greedy, epsilon:EPS or softmax:TEMPERATURE; got {text!r}")


def run_gate(args: argparse.Namespace, folder: Path, config: Any) -> int:
    """seqrec ope with an offer learner: the gate's estimate, interval and go / no-go."""
    import json

    from seqrec.nudging.offer_gate import gate_lines, offer_gate
    from seqrec.nudging.offpolicy import parse_rewards, read_logged_events, read_prepared

    names = [e.strip() for e in args.estimators.split(",") if e.strip()]
    estimator = next((e for e in names if e in ("snips", "dr")), None)
    if estimator is None:
        raise ValueError("the gate estimates by snips or dr: give one of them in --estimators")
    saved = json.loads((folder / "offers.json").read_text()).get("rewards")
    rewards = parse_rewards(args.rewards) if args.rewards else saved
    if args.log.is_dir():
        table, found = read_prepared(args.log, rewards)
    else:
        spec = log_spec(args)
        from seqrec.datasets.schema import DEFAULT_REWARDS

        table, found = read_logged_events(args.log, spec, rewards or DEFAULT_REWARDS)
    gate = offer_gate(table, rewards or found, folder, decision_config(args.decision), estimator, config,
                      held_out_only=not args.all_customers)
    print(f"gate of the offer learner {folder} on {args.log}:")
    for line in gate_lines(gate):
        print(f"  {line}")
    if args.json:
        args.json.write_text(json.dumps({"log": str(args.log), "policy": args.policy, "gate": gate}, indent=1) + "\n")
    return 0


def log_spec(args: argparse.Namespace) -> Any:
    """The reader spec of an event file given as --log (its --map, --sep, --format, --time-unit)."""
    sep = "\t" if args.sep in ("\\t", "tab") else args.sep
    return source_spec("events", args.log, columns=parse_map(args.map) if args.map else (), fmt=args.format,
                       sep=sep, time_unit=args.time_unit)
