"""`seqrec abtest`: the simulated A/B test of the rule-based campaign against the learnt pipeline."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    """Add the `abtest` subcommand to the subparsers `sub`."""
    ab = sub.add_parser("abtest", help="A/B test in the simulator: the rule-based campaign against the learnt pipeline",
                        description="Train arm B (two-tower candidates, Q re-rank, an online nudge bandit) on an "
                                    "exploring campaign's log, run it and the rule-based campaign (arm A) on the same "
                                    "simulated customers with the same budget and random numbers, compare their "
                                    "conversion (Wilson intervals, two-proportion test), and check off-policy "
                                    "estimates against the simulator's truth; writes report.md, metrics.json and "
                                    "PNG plots under --out.")
    ab.add_argument("--config", required=True, type=Path, help="A/B test TOML (experiments/configs/abtest.toml)")
    ab.add_argument("--out", required=True, type=Path, help="output folder (new, or an earlier abtest's: replaced)")
    ab.add_argument("--seed", type=int, help="overrides the config's seed (population, campaigns, training, bandit)")
    ab.add_argument("--customers", type=int, help="population size (default: the config's, else the simulator's)")
    ab.add_argument("--calibration", type=Path, help="UCI bank-additional-full.csv (default: the simulator config's, "
                                                     "else $SEQREC_SHARED_DATA or ../shared/data)")
    ab.add_argument("--sim-set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a simulator key for this test, e.g. population.taste_sd=1.0 or "
                         "nudges.odds_ratio.social_appeal=1.2 (repeatable): another world, same config")
    ab.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                    help="stage lines and progress bars on stderr (default: when stderr is a terminal)")
    ab.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """seqrec abtest: run with parsed arguments; the exit status."""
    import dataclasses

    from seqrec.abtest.config import load_abtest_config, parse_sim_set
    from seqrec.abtest.run import run_abtest
    from seqrec.core.lock import output_lock
    from seqrec.models.device import retain_heap

    retain_heap()
    cfg = load_abtest_config(args.config)
    if args.seed is not None:
        cfg = dataclasses.replace(cfg, seed=args.seed)
    if args.customers is not None:
        cfg = dataclasses.replace(cfg, customers=args.customers)
    if args.sim_set:
        cfg = dataclasses.replace(cfg, simulator_set=cfg.simulator_set + parse_sim_set(args.sim_set))
    command = f"seqrec abtest --config {args.config} --out {args.out}" + "".join(
        f" --{k} {v}" for k, v in (("seed", args.seed), ("customers", args.customers),
                                   ("calibration", args.calibration)) if v is not None) + "".join(
        f" --sim-set {item}" for item in args.sim_set)
    with output_lock(args.out, "seqrec abtest"):  # one writer per output folder (seqrec/core/lock.py)
        m = run_abtest(cfg, args.out, args.calibration, args.progress, command)
    a, b, c = m["arms"]["A"], m["arms"]["B"], m["comparison"]
    for name, r in (("A rules", a), (f"B {m['learner']}", b)):
        print(f"{name:>10}: CR {100 * r['cr']:.2f}% [{100 * r['cr_low']:.2f}, {100 * r['cr_high']:.2f}] "
              f"({r['purchases']:,} / {r['users']:,} customers; expected {100 * r['expected_cr']:.2f}%)")
    print(f"     B - A: {100 * c['difference']:+.2f} pp [{100 * c['difference_low']:+.2f}, "
          f"{100 * c['difference_high']:+.2f}], two-proportion z = {c['z']:.2f}, p = {c['p_value']:.2g}")
    o = m["ope"]
    found = ", ".join(f"{e['estimator']} {100 * e['value']:.2f}%" for e in o["estimates"]) or \
        "no estimate (no overlap: the logger is deterministic)"
    print(f"  OPE of {o['target']} from a {o['logging']} log: truth {100 * o['truth']:.2f}%; {found}")
    g = m.get("gate")
    if g:
        print(f"  gate ({g['estimator']}, before the test): B {100 * g['estimate']:.2f}% [{100 * g['low']:.2f}, "
              f"{100 * g['high']:.2f}] against the rules' {100 * g['current']['estimate']:.2f}%: {g['decision']}")
    print(f"  report: {args.out / 'report.md'}  ({m['timings']['total_s']:.0f} s)")
    return 0
