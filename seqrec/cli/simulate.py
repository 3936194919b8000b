"""`seqrec simulate`: a simulated bank campaign written as an SDK event log."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    """Add the `simulate` subcommand to the subparsers `sub`."""
    sm = sub.add_parser("simulate", help="simulate a bank campaign (UCI-calibrated customers, nudges) as an event log",
                        description="Run a campaign in the simulator (seqrec/simulator.py): bank customers drawn from "
                                    "UCI Bank Marketing with a calibrated base response, financial products, nudges "
                                    "with effects from the config; writes the SDK event log (nudge and propensity "
                                    "on each offer) that seqrec prepare reads unchanged.")
    sm.add_argument("--config", required=True, type=Path, help="simulator TOML (experiments/configs/campaign_sim.toml)")
    sm.add_argument("--out", required=True, type=Path, help="output event log (.parquet)")
    sm.add_argument("--customers", type=int, help="population size (default: population.size)")
    sm.add_argument("--contacts", type=int, help="contact budget (default: campaign.contacts; 0 = one per customer)")
    sm.add_argument("--seed", type=int, help="seed of both the population and the campaign (default: the config's)")
    sm.add_argument("--policy", choices=("random", "rules"), help="who decides (default: campaign.policy)")
    sm.add_argument("--epsilon", type=float, help="rules policy: share of random decisions (default: campaign.epsilon)")
    sm.add_argument("--calibration", type=Path, help="UCI bank-additional-full.csv (default: population.calibration, "
                                                     "else $SEQREC_SHARED_DATA or ../shared/data)")
    sm.add_argument("--calibration-table", action="store_true",
                    help="also print the calibration table (UCI rate vs simulated rate per group, markdown)")
    sm.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """seqrec simulate: run with parsed arguments; the exit status."""
    from seqrec.core.lock import output_lock

    if args.out.suffix.lower() not in (".parquet", ".pq"):
        raise ValueError(f"--out must be a .parquet file; got {args.out}")
    with output_lock(args.out, "seqrec simulate"):  # one writer per output, its lock beside it (seqrec/core/lock.py)
        return _simulate(args)


def _simulate(args: argparse.Namespace) -> int:
    """`run` under the lock of --out: simulate, then write the log atomically."""
    import dataclasses
    import json

    import numpy as np
    import pyarrow.parquet as pq

    from seqrec.campaign.config import load_sim_config
    from seqrec.campaign.policies import make_policy
    from seqrec.campaign.simulator import Simulator
    from seqrec.core.io import atomic_write

    cfg = load_sim_config(args.config)
    population, campaign = cfg.population, cfg.campaign
    if args.customers is not None:
        population = dataclasses.replace(population, size=args.customers)
    if args.seed is not None:
        population = dataclasses.replace(population, seed=args.seed)
        campaign = dataclasses.replace(campaign, seed=args.seed)
    cfg = dataclasses.replace(cfg, population=population, campaign=campaign)
    sim = Simulator(cfg, calibration=args.calibration)
    name = args.policy or cfg.campaign.policy
    policy = make_policy(sim, name, args.epsilon)
    budget = args.contacts if args.contacts is not None else cfg.campaign.contacts
    budget = budget or sim.population.size
    log = sim.run_policy(policy, budget, np.random.default_rng(cfg.campaign.seed))
    meta = {b"seqrec_simulator": json.dumps({"config": dataclasses.asdict(cfg), "policy": name,
                                               "contacts": budget}).encode()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    events = log.events.replace_schema_metadata(meta)
    atomic_write(args.out, lambda tmp: pq.write_table(events, tmp))  # a kill leaves the old file or none
    print(f"simulated {budget:,} contacts of {log.customers:,} customers (policy {name}): {log.events.num_rows:,} "
          f"events, {int(log.purchased.sum()):,} purchases (conversion {100 * log.conversion_rate:.2f}%; expected "
          f"{log.probability.sum():,.1f} purchases) -> {args.out}")
    if args.calibration_table:
        print(f"calibration on {sim.uci.path} ({sim.uci.rows:,} rows; {sim.population.size:,} customers):")
        print(sim.calibration_table())
    return 0
