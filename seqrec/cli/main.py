"""The `seqrec` command: composes readers, configs and models; the only place that parses arguments."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from seqrec.core.config import ConfigError, from_dict, load_toml
from seqrec.datasets.adapters import SOURCES, source_spec
from seqrec.datasets.prepare import PrepareConfig, prepare
from seqrec.datasets.readers import InputError, parse_map


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="seqrec", description="Offline-RL sequential recommender for campaigns.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    g = sub.add_parser("generate", help="write a seeded synthetic SDK event log (the built-in data)",
                       description="Write a seeded synthetic SDK event log: users with latent preferences, "
                                   "sessions, a view > like/cart > purchase funnel and logged nudges.")
    g.add_argument("--out", required=True, type=Path, help="output file: .parquet, .csv, .tsv or .jsonl")
    g.add_argument("--events", type=int, default=200_000, help="about how many events (default 200000)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    g.set_defaults(func=_cmd_generate)

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
    pr.add_argument("--format", choices=("auto", "csv", "parquet", "jsonl"), default=None,
                    help="input format (default: from the file suffix)")
    pr.add_argument("--time-unit", choices=("auto", "s", "ms", "us", "iso"),
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
    pr.set_defaults(func=_cmd_prepare)

    tr = sub.add_parser("train", help="train an encoder with a supervised or Q-learning head on a prepared dataset",
                        description="Train from a TOML config ([data] dir, [encoder], [head], [train]; or "
                                    "algorithm = \"d3rlpy.dqn|double_dqn|discrete_cql|discrete_bcq\" with a "
                                    "[d3rlpy] table for d3rlpy's algorithms on our encoder); writes config.json, "
                                    "checkpoints/ and TensorBoard logs (tb/) under --out. Under torchrun "
                                    "(torchrun --nproc_per_node=N -m seqrec train ...) it trains data-parallel: "
                                    "train.batch_size is the global batch, rank 0 writes.")
    tr.add_argument("--config", required=True, type=Path, help="TOML run config")
    tr.add_argument("--data", help="prepared-dataset folder (overrides data.dir)")
    tr.add_argument("--out", type=Path, help="run folder (default runs/<config name>)")
    tr.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override any config field, e.g. --set train.max_steps=200 or --set "
                         "algorithm=d3rlpy.discrete_cql (repeatable)")
    tr.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    tr.add_argument("--device", choices=("auto", "cpu", "cuda"), help="shorthand for --set train.device=...")
    tr.set_defaults(func=_cmd_train)

    ev = sub.add_parser("evaluate", help="rank the whole catalogue for every held-out event; write metrics.json",
                        description="HR@k and NDCG@k (k = 5, 10, 20) per event type on a split, beside the "
                                    "popularity baseline, written to RUN/metrics.json.")
    ev.add_argument("--run", required=True, type=Path, help="run folder")
    ev.add_argument("--split", default="test", choices=("train", "valid", "test"))
    ev.add_argument("--protocol", default="sessions", choices=("sessions", "loo"),
                    help="sessions: every event of held-out sessions (the papers'); loo: leave-one-out data")
    ev.add_argument("--checkpoint", default="best", choices=("best", "last"))
    ev.add_argument("--pipeline", action=argparse.BooleanOptionalAction, default=None,
                    help="also evaluate retrieve + re-rank and candidate recall@50/100/200 (default: when the run "
                         "has a retrieval model, RUN/retrieval)")
    ev.add_argument("--index", choices=("exact", "faiss"), help="index of the pipeline (default: the run's [index])")
    ev.set_defaults(func=_cmd_evaluate)

    op = sub.add_parser("ope", help="estimate a nudge policy's value from a logged event file (off-policy)",
                        description="Off-policy evaluation: the expected reward per nudge decision that a policy "
                                    "would have earned, estimated from logged decisions (nudge_id + propensity) by "
                                    "IPS, self-normalised IPS, the direct method and doubly robust, with "
                                    "percentile-bootstrap intervals.")
    op.add_argument("--log", required=True, type=Path, help="event file (CSV/TSV/Parquet/JSONL in the event schema, "
                                                            "with nudge_id and propensity) or a prepared folder")
    op.add_argument("--policy", required=True, help="uniform | arm:ID | greedy[:EPS] | a run folder with bandit.json")
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
    op.add_argument("--format", choices=("auto", "csv", "parquet", "jsonl"), default="auto", help="input format")
    op.add_argument("--time-unit", choices=("auto", "s", "ms", "us", "iso"), help="unit of numeric times")
    op.add_argument("--json", type=Path, help="also write the estimates to this JSON file")
    op.set_defaults(func=_cmd_ope)

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
    sm.set_defaults(func=_cmd_simulate)

    sc = sub.add_parser("score", help="score user sessions in batch: top items, scores, nudge and propensity per row",
                        description="Read raw event logs with prepare's readers and validation (bad rows to "
                                    "OUT/quarantine.parquet), cut sessions, and write OUT/scores/part-*.parquet with "
                                    "one row per (session, rank): item, two-tower score, Q value, final score, nudge, "
                                    "propensity, model version and config hash; then manifest.json and _COMPLETE. "
                                    "A killed run resumes when started again with the same command.")
    sc.add_argument("--run", required=True, type=Path, help="run folder (seqrec train --out)")
    sc.add_argument("--input", required=True, nargs="+", type=Path, metavar="EVENTS", help="event file(s)")
    sc.add_argument("--out", required=True, type=Path, help="output folder")
    sc.add_argument("--top", type=int, default=10, help="recommendations per session (default 10)")
    sc.add_argument("--candidates", type=int, default=200, help="candidates retrieved before re-ranking (default 200)")
    sc.add_argument("--batch-size", type=int, default=4096, help="sessions per scored batch (default 4096)")
    sc.add_argument("--workers", type=int, help="batches scored at once, one torch thread each (default: torch's "
                                                "thread count, i.e. the cores)")
    sc.add_argument("--engine", choices=("local", "ray"), default="local",  # serve.engines.ENGINES (tested equal;
                    # importing seqrec.serve.engines here would import torch for every command)
                    help="local: this machine (default); ray: Ray Data, --workers actors (default: the cluster's CPUs; "
                         "extra seqrec[ray]), the same rows")
    sc.add_argument("--ray-address", metavar="ADDRESS",
                    help="with --engine ray: the Ray cluster to join (HOST:6379, or auto: the one this machine is in); "
                         "default: start a local Ray with this machine's cores")
    sc.add_argument("--index", choices=("exact", "faiss"), help="retrieval index (default: the run's [index])")
    sc.add_argument("--nprobe", type=int, help="faiss IVF clusters searched per query (default: the run's [index])")
    sc.add_argument("--checkpoint", choices=("best", "last"), default="best")
    sc.add_argument("--seed", type=int, default=0, help="seed of the nudge draws (default 0)")
    sc.add_argument("--session-gap-minutes", type=float,
                    help="inactivity that ends a session without session ids (default: the run's prepared data's)")
    sc.add_argument("--bucket-rows", type=int, default=2_000_000, help="rows per on-disk bucket (bounds memory)")
    sc.add_argument("--catalogue", type=Path, help="nudge catalogue TOML (default: the shipped one)")
    sc.add_argument("--source", choices=SOURCES, help="log format (default: the run's prepared data's, else events)")
    sc.add_argument("--map", help="column map, as in seqrec prepare")
    sc.add_argument("--sep", help="CSV field separator (default ',' or tab for .tsv)")
    sc.add_argument("--no-header", action="store_true", help="the CSV file has no header line")
    sc.add_argument("--format", choices=("auto", "csv", "parquet", "jsonl"), default="auto", help="input format")
    sc.add_argument("--time-unit", choices=("auto", "s", "ms", "us", "iso"), help="unit of numeric times")
    sc.add_argument("--event-type", help="constant event type for files without an event column")
    sc.add_argument("--event-map", help="raw=type pairs, as in seqrec prepare (default: the run's prepared data's)")
    sc.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                    help="show progress bars (default: in a terminal)")
    sc.set_defaults(func=_cmd_score)

    dm = sub.add_parser("demo", help="the main job on built-in data: generate, prepare, train, score",
                        description="Generate the built-in synthetic log, prepare it, train SASRec-SQN with two-tower "
                                    "candidates and the nudge bandit, score every session; prints where the "
                                    "TensorBoard logs and the scored files are. Re-running re-uses finished stages.")
    dm.add_argument("--out", type=Path, default=Path("runs/demo"), help="folder for everything (default runs/demo)")
    dm.add_argument("--events", type=int, default=200_000, help="events to generate (default 200000)")
    dm.add_argument("--seed", type=int, default=0)
    dm.add_argument("--steps", type=int, help="training steps (default 400; retrieval half of it)")
    dm.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    dm.set_defaults(func=_cmd_demo)
    _add_abtest(sub)
    return p


def _add_abtest(sub: Any) -> None:
    """The `abtest` subcommand (seqrec/abtest.py)."""
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
    ab.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                    help="stage lines and progress bars on stderr (default: when stderr is a terminal)")
    ab.set_defaults(func=_cmd_abtest)


def _cmd_abtest(args: argparse.Namespace) -> int:
    import dataclasses

    from seqrec.abtest.config import load_abtest_config
    from seqrec.abtest.run import run_abtest
    from seqrec.models.device import retain_heap

    retain_heap()
    cfg = load_abtest_config(args.config)
    if args.seed is not None:
        cfg = dataclasses.replace(cfg, seed=args.seed)
    if args.customers is not None:
        cfg = dataclasses.replace(cfg, customers=args.customers)
    command = f"seqrec abtest --config {args.config} --out {args.out}" + "".join(
        f" --{k} {v}" for k, v in (("seed", args.seed), ("customers", args.customers),
                                   ("calibration", args.calibration)) if v is not None)
    m = run_abtest(cfg, args.out, args.calibration, args.progress, command)
    a, b, c = m["arms"]["A"], m["arms"]["B"], m["comparison"]
    for name, r in (("A rules", a), ("B pipeline", b)):
        print(f"{name:>10}: CR {100 * r['cr']:.2f}% [{100 * r['cr_low']:.2f}, {100 * r['cr_high']:.2f}] "
              f"({r['purchases']:,} / {r['users']:,} customers; expected {100 * r['expected_cr']:.2f}%)")
    print(f"     B - A: {100 * c['difference']:+.2f} pp [{100 * c['difference_low']:+.2f}, "
          f"{100 * c['difference_high']:+.2f}], two-proportion z = {c['z']:.2f}, p = {c['p_value']:.2g}")
    o = m["ope"]
    found = ", ".join(f"{e['estimator']} {100 * e['value']:.2f}%" for e in o["estimates"]) or \
        "no estimate (no overlap: the logger is deterministic)"
    print(f"  OPE of {o['target']} from a {o['logging']} log: truth {100 * o['truth']:.2f}%; {found}")
    print(f"  report: {args.out / 'report.md'}  ({m['timings']['total_s']:.0f} s)")
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from seqrec.datasets.synthetic import config_for_events, write_events

    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = write_events(config_for_events(args.events, seed=args.seed), args.out)
    print(f"wrote {rows:,} events to {args.out}")
    return 0


def _prepare_settings(args: argparse.Namespace) -> tuple[PrepareConfig, dict[str, Any]]:
    """PrepareConfig and reader options from --config's [prepare] table, overridden by flags."""
    reader_keys = ("map", "sep", "header", "format", "time_unit", "event_type", "event_map")
    table: dict[str, Any] = dict(load_toml(args.config).get("prepare", {})) if args.config else {}
    reader = {k: table.pop(k) for k in reader_keys if k in table}
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


def _cmd_prepare(args: argparse.Namespace) -> int:
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
            write_events(config_for_events(args.events, seed=cfg.seed), path)
        inputs, source = [path], "events"
    if not inputs:
        raise ValueError("give at least one --input file")
    manifest = prepare(inputs, lambda p: source_spec(source, p, **opts), cfg, args.out, progress=args.progress)
    print(summary(manifest, args.out))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from seqrec.models.device import retain_heap
    from seqrec.runs.config import load_run_config
    from seqrec.runs.train import train
    from seqrec.training.distributed import from_env

    retain_heap()
    overrides = list(args.set) + ([f"train.device={args.device!r}".replace("'", '"')] if args.device else [])
    cfg = load_run_config(args.config, overrides, args.data)
    out = args.out or Path("runs") / args.config.stem
    result = train(cfg, out, resume=args.resume)
    rank = from_env()
    if rank is not None and not rank.main:  # under torchrun only rank 0 reports
        return 0
    best = result["best"]
    print(f"trained {out} to step {result['step']}: best {cfg.train.select_metric} = "
          f"{best if best is None else round(best, 4)} at step {result['best_step']}")
    print(f"  checkpoints: {out / 'checkpoints'}   TensorBoard: tensorboard --logdir {out / 'tb'}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from seqrec.models.device import retain_heap
    from seqrec.runs.config import saved_config
    from seqrec.runs.evaluate import evaluate_run

    retain_heap()
    index = replace(saved_config(args.run).index, kind=args.index) if args.index else None
    metrics = evaluate_run(args.run, args.split, args.protocol, args.checkpoint, args.pipeline, index)
    print(metrics_table(metrics, args.split))
    if args.split in metrics.get("pipeline_info", {}):
        info, recall = metrics["pipeline_info"][args.split], metrics["recall"][args.split]["all"]
        print(f"  pipeline: {info['index']} index, {info['candidates']} candidates, recall@50/100/200 = "
              + "/".join(f"{recall[f'recall@{k}']:.4f}" for k in (50, 100, 200))
              + f"; states/s full ranking {info['states_per_s_full']:,.0f}, "
                f"retrieve + re-rank {info['states_per_s_pipeline']:,.0f}")
    print(f"  written to {args.run / 'metrics.json'}")
    return 0


def _cmd_ope(args: argparse.Namespace) -> int:
    import json
    import warnings

    from seqrec.nudging.catalogue import load_catalogue
    from seqrec.nudging.offpolicy import estimates_table, load_log, load_policy_bandit, parse_rewards, resolve_policy
    from seqrec.rl.ope.estimators import OpeConfig, estimate_policy, estimators_from_names

    config = OpeConfig(resamples=args.bootstrap, level=args.level, seed=args.seed)
    estimators = estimators_from_names(args.estimators, config, clip=args.clip)
    catalogue = load_catalogue(args.catalogue)
    bandit = load_policy_bandit(args.policy)
    arms = bandit.arms if bandit is not None else catalogue.ids
    rewards = parse_rewards(args.rewards) if args.rewards else None
    spec = None
    if not args.log.is_dir():
        sep = "\t" if args.sep in ("\\t", "tab") else args.sep
        spec = source_spec("events", args.log, columns=parse_map(args.map) if args.map else (), fmt=args.format,
                           sep=sep, time_unit=args.time_unit)
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


def _cmd_simulate(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    import numpy as np
    import pyarrow.parquet as pq

    from seqrec.campaign.config import load_sim_config
    from seqrec.campaign.policies import make_policy
    from seqrec.campaign.simulator import Simulator

    if args.out.suffix.lower() not in (".parquet", ".pq"):
        raise ValueError(f"--out must be a .parquet file; got {args.out}")
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
    pq.write_table(log.events.replace_schema_metadata(meta), args.out)
    print(f"simulated {budget:,} contacts of {log.customers:,} customers (policy {name}): {log.events.num_rows:,} "
          f"events, {int(log.purchased.sum()):,} purchases (conversion {100 * log.conversion_rate:.2f}%; expected "
          f"{log.probability.sum():,.1f} purchases) -> {args.out}")
    if args.calibration_table:
        print(f"calibration on {sim.uci.path} ({sim.uci.rows:,} rows; {sim.population.size:,} customers):")
        print(sim.calibration_table())
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from seqrec.models.device import retain_heap
    from seqrec.serve.engines import ScoreJob, reader_defaults
    from seqrec.serve.factory import make_engine
    from seqrec.serve.scoring import ScoreConfig

    retain_heap()
    cfg = ScoreConfig(top=args.top, candidates=args.candidates, batch_size=args.batch_size, workers=args.workers,
                      index=args.index, nprobe=args.nprobe, checkpoint=args.checkpoint, seed=args.seed,
                      session_gap_minutes=args.session_gap_minutes, bucket_rows=args.bucket_rows,
                      catalogue=str(args.catalogue) if args.catalogue else None)
    source, event_map = reader_defaults(args.run)
    sep = "\t" if args.sep in ("\\t", "tab") else args.sep
    specs = tuple(source_spec(args.source or source, p, columns=parse_map(args.map) if args.map else (),
                              fmt=args.format, sep=sep, header=False if args.no_header else None,
                              time_unit=args.time_unit, event_type=args.event_type,
                              event_map=parse_map(args.event_map) if args.event_map is not None else event_map)
                  for p in args.input)
    engine = make_engine(args.engine, ray_address=args.ray_address)
    m = engine.score(ScoreJob(args.run, tuple(args.input), specs, args.out, cfg), args.progress)
    print(score_summary(m, args.out))
    return 0


def score_summary(m: dict, out: Path) -> str:
    """What `seqrec score` prints: the counts of manifest.json and where the output is."""
    s = m["sessions"]
    lines = [f"scored {s['scored']:,} sessions -> {m['rows']:,} rows in {len(m['parts'])} part(s) under {out}"
             + ("  (re-used: same job already complete)" if m.get("reused") else "")
             + ("  (resumed)" if m.get("resumed") else ""),
             f"  rows read {m['rows_read']:,}  kept {m['rows_kept']:,}  quarantined {m['rows_quarantined']:,}"
             + (f"  excluded {m['rows_excluded']:,}" if m["rows_excluded"] else "")
             + (f"  -> {out / 'quarantine.parquet'}" if m["rows_quarantined"] else ""),
             f"  popularity fallback {s['fallback']:,} sessions; index: {m['index']}; nudges: {m['policy']}",
             f"  model {m['model_version']}  config hash {m['config_hash']}"]
    if not m.get("reused"):
        lines.append(f"  time {m['timings']['total_s']:.2f} s ({m['sessions_per_s']:,.0f} sessions/s)")
    return "\n".join(lines)


def _cmd_demo(args: argparse.Namespace) -> int:
    from seqrec.api.demo import run_demo
    from seqrec.models.device import retain_heap

    retain_heap()
    r = run_demo(args.out, args.events, args.seed, args.steps, args.progress)
    print(score_summary(r["manifest"], r["scored"]))
    print(f"events: {r['events']}   prepared: {r['data']}   run: {r['run']}")
    print(f"TensorBoard: tensorboard --logdir {r['run']}   (learner in tb/, two-tower in retrieval/tb/)")
    print(f"scored sessions: {r['scored'] / 'scores'} (Parquet parts; manifest.json and quarantine.parquet in "
          f"{r['scored']})")
    return 0


def metrics_table(metrics: dict, split: str) -> str:
    """Markdown table of a split's metrics per event type, model beside the popularity and recent baselines."""
    lines = [f"| {split} | events | HR@5 | NDCG@5 | HR@10 | NDCG@10 | HR@20 | NDCG@20 |", "|---" * 8 + "|"]
    blocks = [("model", metrics[split]), ("popularity", metrics["popularity"][split])]
    if split in metrics.get("recent", {}):
        blocks.append(("recent", metrics["recent"][split]))
    if split in metrics.get("pipeline", {}):
        blocks.insert(1, ("pipeline", metrics["pipeline"][split]))
    for who, rows in blocks:
        for ev, r in rows.items():
            vals = " | ".join(f"{r[f'{m}@{k}']:.4f}" for k in (5, 10, 20) for m in ("hr", "ndcg"))
            lines.append(f"| {who} {ev} | {r['count']:,} | {vals} |")
    return "\n".join(lines)


def summary(m: dict, out: Path) -> str:
    """The human-readable summary printed by `seqrec prepare` (the same figures as manifest.json)."""
    lines = [f"prepared {out}" + ("  (re-used: inputs and config unchanged)" if m.get("reused") else "")]
    lines.append(f"  rows read {m['rows_read']:,}  kept {m['rows_kept']:,}  quarantined {m['rows_quarantined']:,}"
                 + (f"  excluded {m['rows_excluded']:,}" if m.get("excluded_by_event") else ""))
    if m["quarantine_reasons"]:
        reasons = ", ".join(f"{k} {v:,}" for k, v in m["quarantine_reasons"].items())
        lines.append(f"  quarantine: {reasons}  -> {out / 'quarantine.parquet'}")
    if m.get("excluded_by_event"):
        lines.append("  excluded (event map -> drop): "
                     + ", ".join(f"{k} {v:,}" for k, v in m["excluded_by_event"].items()))
    lines.append("  events: " + ", ".join(f"{k} {v:,}" for k, v in m["events_by_type"].items()))
    s = m["sessions"]
    lines.append(f"  sessions {s['before_filter']:,} -> {s['after_filter']:,} "
                 f"(dropped {s['dropped_short']:,} shorter than {s['min_length']}, {s['events_in_dropped']:,} events)")
    if s.get("max_sessions") is not None:
        lines.append(f"  sampled {s['after_filter'] - s['sampled_out']:,} of {s['after_filter']:,} sessions "
                     f"(max {s['max_sessions']:,}; {s['events_sampled_out']:,} events left out); events and "
                     "items above and below count the sample")
    lines.append(f"  items {m['items']:,} (catalogue size with padding and OOV: {m['catalogue_size']:,})")
    lines.append("  splits: " + ", ".join(f"{k} {v['sessions']:,} sessions / {v['events']:,} events"
                                          for k, v in m["splits"].items()))
    t = m.get("timings", {})
    if t.get("total_s") and not m.get("reused"):
        lines.append(f"  time {t['total_s']:.2f} s ({m['rows_read'] / max(t['total_s'], 1e-9):,.0f} rows/s)")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
