"""`seqrec abtest`: the rule-based campaign against the learnt pipeline in the simulator, and an OPE check.

Stages, all seeded by the config's seed, all written under OUT:

1. Training campaign: the exploring logger (random, or the rules with epsilon > 0) contacts every customer once
   a wave for `training.waves` waves. Its log (without session ids, so one sequence per customer across
   contacts, the history the simulator hands a policy) is prepared (`seqrec prepare`, sessions of any length)
   and trains arm B's run: SASRec with the SQN head, then the two-tower (OUT/training/{events.parquet,data,run}).
2. The test wave: each arm replays the training campaign with the same seed (the same customers, decisions and
   responses: checked) and then decides the test wave, `contacts` customers once each, the same customers at
   the same times with the same random numbers for both arms (common random numbers). Arm A: the rules of the
   simulator config. Arm B: the pipeline's product (seqrec/abtest_policy.py) with the nudge of a bandit that
   learns from the test's purchases after every batch. CR = purchases / customers contacted, per arm.
3. OPE check (seqrec/abtest_ope.py) on a separate first-wave log.
4. OUT/report.md, OUT/metrics.json, OUT/cumulative_conversion.png, OUT/bandit_arm_shares.png, and the test
   wave's events of each arm (OUT/arms/{a,b}.parquet, readable by `seqrec ope` and `seqrec prepare`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from seqrec.abtest.config import AbTestConfig, apply_sim_set
from seqrec.abtest.gate import run_gate
from seqrec.abtest.offers import OfferPolicy, train_offers
from seqrec.abtest.ope import run_ope_check
from seqrec.abtest.policy import Phased, PipelineProducts
from seqrec.abtest.report import arm_summary, comparison, write_outputs
from seqrec.abtest.stats import rank_agreement
from seqrec.campaign.config import load_sim_config, sim_config_from_dict
from seqrec.campaign.policies import BanditNudgePolicy, RandomPolicy, RulePolicy, make_policy
from seqrec.campaign.records import CampaignLog, Contacts
from seqrec.campaign.simulator import Simulator
from seqrec.core.config import ConfigError, load_toml
from seqrec.rl.bandits.fit import fit_offline
from seqrec.rl.bandits.policies import CONTEXTUAL_KINDS

MARKER = "abtest_config.json"   # written first in OUT: a folder holding it may be overwritten by a new abtest


def build_simulator(cfg: AbTestConfig, calibration: str | Path | None = None) -> Simulator:
    """The simulator of cfg.simulator (with its `simulator_set` overrides) with the test's population size and seed."""
    if cfg.simulator_set:
        path = cfg.simulator_path
        data = apply_sim_set(load_toml(path), cfg.simulator_set)
        sim_cfg = sim_config_from_dict(data, f"{path} (with {', '.join(k for k, _ in cfg.simulator_set)} set)",
                                       str(path.resolve().parent))
    else:
        sim_cfg = load_sim_config(cfg.simulator_path)
    population = dataclasses.replace(sim_cfg.population, seed=cfg.seed,
                                     **({"size": cfg.customers} if cfg.customers else {}))
    return Simulator(dataclasses.replace(sim_cfg, population=population), calibration=calibration)


def stream_seeds(seed: int) -> dict[str, int]:
    """Independent integer seeds of the campaigns (training + test wave) and of the OPE check."""
    children = np.random.SeedSequence(seed).spawn(2)
    return {name: int(c.generate_state(1, np.uint64)[0] % 2**63) for name, c in zip(("campaign", "ope"), children)}


def _reporter(progress: bool | None) -> Callable[[str], None]:
    show = sys.stderr.isatty() if progress is None else progress

    def say(message: str) -> None:
        if show:
            print(f"seqrec abtest: {message}", file=sys.stderr, flush=True)

    return say


def _prepare_out(out: Path) -> None:
    """OUT new or empty, or an earlier abtest's folder (its outputs are replaced); anything else is refused."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file; --out must be a folder")
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise ConfigError(f"{out} exists and is not an abtest output folder (no {MARKER}); choose another --out")
    for name in ("training", "arms"):
        shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)


def check_budget(cfg: AbTestConfig, sim: Simulator) -> tuple[int, int]:
    """(test contacts per arm, OPE contacts): each at most one per customer, and the campaign within the
    simulator's contacts per customer."""
    c = sim.population.size
    test, ope = cfg.contacts or c, cfg.ope.contacts or c
    for key, n in (("contacts", test), ("ope.contacts", ope)):
        if n > c:
            raise ConfigError(f"{cfg.source}: {key} = {n:,} exceeds the {c:,} customers: a test contacts each customer "
                              "at most once, so that CR = purchases / customers is a proportion")
    cap = sim.config.campaign.max_contacts_per_customer
    if cfg.training.waves + 1 > cap:
        raise ConfigError(f"{cfg.source}: training.waves = {cfg.training.waves} plus the test wave exceeds the "
                          f"simulator's campaign.max_contacts_per_customer = {cap}")
    return test, ope


def train_pipeline(cfg: AbTestConfig, sim: Simulator, log: CampaignLog, folder: Path,
                   progress: bool | None) -> tuple[PipelineProducts, dict]:
    """Write the training log, prepare it, train arm B's run; the product policy and what to report."""
    from seqrec.datasets.adapters import source_spec
    from seqrec.datasets.prepare import PrepareConfig, prepare
    from seqrec.runs.config import run_config
    from seqrec.runs.pipeline import load_pipeline
    from seqrec.runs.train import train

    folder.mkdir(parents=True, exist_ok=True)
    events = folder / "events.parquet"
    pq.write_table(log.events.drop_columns(["session_id"]), events)   # one sequence per customer, across contacts
    prep_cfg = PrepareConfig(min_session_length=1, session_gap_minutes=math.inf,
                             window=sim.config.campaign.history_window, seed=cfg.seed, rewards=cfg.training.rewards)
    manifest = prepare([events], lambda p: source_spec("events", p), prep_cfg, folder / "data", progress=progress)
    raw = copy.deepcopy(cfg.model)
    raw["train"]["seed"] = cfg.seed
    raw["retrieval"]["seed"] = cfg.seed
    run_cfg = run_config(raw, [], str(folder / "data"))
    result = train(run_cfg, folder / "run", progress=progress)
    pipeline, _ = load_pipeline(folder / "run", checkpoint="best")
    vocab = pq.read_table(folder / "data" / "vocab.parquet").sort_by("index").column("item_id").to_pylist()
    products = PipelineProducts(sim, pipeline, [str(v) for v in vocab], run_cfg.encoder.max_len)
    info = {"events": manifest["rows_kept"], "sequences": manifest["sessions"]["after_filter"],
            "transitions": {k: v["events"] for k, v in manifest["splits"].items()},
            "best_step": result.get("best_step"), "select_metric": run_cfg.train.select_metric,
            "best": result.get("best"), "retrieval_best": (result.get("retrieval") or {}).get("best")}
    return products, info


def make_bandit(cfg: AbTestConfig, sim: Simulator, log: CampaignLog):
    """Arm B's nudge bandit, seeded by the test's seed; with warm_start fitted on the training log (IPS)."""
    bandit_cfg = dataclasses.replace(cfg.arm_b.bandit, seed=cfg.seed)
    dim = len(sim.context_feature_names()) if bandit_cfg.kind in CONTEXTUAL_KINDS else 0
    bandit = bandit_cfg.create(sim.arms, dim=dim)
    if cfg.arm_b.warm_start:
        d = log.decisions
        fit_offline(bandit, d.nudge, log.purchased.astype(np.float64), d.propensity,
                    contexts=sim.context_features(log.contacts) if dim else None,
                    available=sim.nudge_mask[d.product], method="ips")
    return bandit


def bandit_summary(cfg: AbTestConfig, sim: Simulator, arm_b) -> dict:
    """metrics.json["bandit"]: arm B's nudge bandit, or (offer learner) its joint decision layer."""
    if cfg.arm_b.learner == "offers":
        d = arm_b.decision
        return {"kind": d.kind, "epsilon": d.epsilon if d.kind == "epsilon_greedy" else 0.0, "warm_start": False,
                "updates": 0, "arms": list(sim.arms), "values": None, "joint": True}
    return {"kind": arm_b.bandit.config.kind, "epsilon": arm_b.bandit.config.effective_epsilon,
            "warm_start": cfg.arm_b.warm_start, "updates": int(arm_b.bandit.updates), "arms": list(sim.arms),
            "values": None if arm_b.bandit.dim else [float(v) for v in arm_b.bandit.values()], "joint": False}


def reference_values(sim: Simulator, products: PipelineProducts | None, ctx: Contacts,
                     offers: OfferPolicy | None = None) -> dict:
    """What only the simulator knows about the test contacts: exact CR of random offers and of the best offer per
    contact, and how well each of arm B's product scores ranks the products by their true purchase probability
    (Spearman per contact over the products not held, nudge uniform over the allowed arms, averaged). The offer
    learner's product score is its Q averaged over the product's allowed nudges ("offer_q"); it sees each
    contact's history as it stood before the test wave (`offers` holds the events up to the test)."""
    truth = sim.expected_rewards(ctx)                                                          # (N, P, A)
    nudge = sim.nudge_mask / sim.nudge_mask.sum(axis=1, keepdims=True)                         # (P, A)
    by_product = (truth * nudge[None]).sum(axis=2)                                             # (N, P)
    scores: dict[str, list[np.ndarray]] = {}
    for lo in range(0, len(ctx), 4096):
        part_ctx = ctx.take(np.arange(lo, min(lo + 4096, len(ctx))))
        part = {k: v.numpy() for k, v in products.scores(part_ctx).items()} if products is not None else {}
        if offers is not None:
            part["offer_q"] = (offers.values(part_ctx) * nudge[None]).sum(axis=2)
        for k, v in part.items():
            scores.setdefault(k, []).append(v)
    return {"random_cr": sim.true_value(RandomPolicy(sim), ctx), "oracle_cr": float(truth.max(axis=(1, 2)).mean()),
            "rank_agreement": {k: rank_agreement(np.concatenate(v), by_product, ~ctx.held) for k, v in scores.items()}}


def test_rows(log: CampaignLog, waves: int) -> np.ndarray:
    """Rows of the test wave: contacts of customers already contacted `waves` times."""
    return np.flatnonzero(log.contacts.previous_contacts >= waves)


def _check_replay(arm: str, log: CampaignLog, training: CampaignLog, rows: np.ndarray) -> None:
    """The arm's campaign before the test wave must be the training campaign, decision for decision."""
    n = len(training.purchased)
    same = (len(log.purchased) - len(rows) == n
            and np.array_equal(log.contacts.customer[:n], training.contacts.customer)
            and np.array_equal(log.decisions.product[:n], training.decisions.product)
            and np.array_equal(log.decisions.nudge[:n], training.decisions.nudge)
            and np.array_equal(log.purchased[:n], training.purchased))
    if not same:
        raise RuntimeError(f"arm {arm} did not replay the training campaign: the simulator's common random numbers "
                           "are broken")


def run_abtest(cfg: AbTestConfig, out: Path, calibration: str | Path | None = None,
               progress: bool | None = None, command: str | None = None) -> dict:
    """Run the whole test (see the module docstring); returns the metrics written to OUT/metrics.json.
    `command`: the command line that made it, quoted at the top of the report. Torch runs on `cfg.threads`
    threads meanwhile (restored after)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _run(cfg, out, calibration, progress, command)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: AbTestConfig, out: Path, calibration: str | Path | None, progress: bool | None,
         command: str | None) -> dict:
    say, clock, timings = _reporter(progress), time.perf_counter, {}
    t0 = clock()
    _prepare_out(out)
    (out / MARKER).write_text(json.dumps(cfg.to_dict(), indent=1) + "\n")
    sim = build_simulator(cfg, calibration)
    customers = sim.population.size
    test_contacts, ope_contacts = check_budget(cfg, sim)
    seeds, waves, batch = stream_seeds(cfg.seed), cfg.training.waves, cfg.batch_size
    logger = make_policy(sim, cfg.training.policy, cfg.training.epsilon)
    say(f"{customers:,} customers; training campaign: {waves} wave(s) of the {cfg.training.policy} policy")
    training = sim.run_policy(logger, waves * customers, np.random.default_rng(seeds["campaign"]), batch_size=batch)
    timings["simulate_training_s"] = clock() - t0

    t = clock()
    say(f"training arm B on {len(training.purchased):,} logged contacts ({training.events.num_rows:,} events)")
    products, train_info = None, {}
    if cfg.arm_b.learner == "pipeline" or cfg.arm_b.reference_pipeline:
        products, train_info = train_pipeline(cfg, sim, training, out / "training", progress)
    timings["prepare_and_train_s"] = clock() - t
    gate, offers_info = None, None
    if cfg.arm_b.learner == "offers":
        t = clock()
        offer_cfg = dataclasses.replace(cfg.offers, seed=cfg.seed)
        say("training the offer-level Q learner on the same log")
        decision = dataclasses.replace(cfg.decision, seed=cfg.seed)
        fitted, offers_info = train_offers(sim, training, offer_cfg, dict(cfg.training.rewards), out / "training",
                                           decision)
        timings["offers_train_s"] = clock() - t
        decision = fitted.decision or decision   # the exploration share chosen by held-out value, if a grid
        gate_fitted = dataclasses.replace(fitted, model=fitted.gate_model) if fitted.gate_model is not None else fitted
        gate_policy = OfferPolicy(sim, gate_fitted, decision, cfg.seed)
        gate_policy.observe(training.events)
        gate = run_gate(sim, training, gate_policy, RulePolicy(sim, cfg.arm_a.epsilon), waves, cfg.gate, cfg.level,
                        cfg.seed, fitted.held_out if len(fitted.held_out) else None)
        say(f"gate: {gate['estimator']} {100 * gate['estimate']:.2f}% [{100 * gate['low']:.2f}, "
            f"{100 * gate['high']:.2f}] against the rules' {100 * gate['current']['estimate']:.2f}%: "
            f"{gate['decision']}")
        arm_b = OfferPolicy(sim, fitted, decision, cfg.seed)

    t = clock()
    say(f"test wave: {test_contacts:,} contacts per arm")
    if cfg.arm_b.learner == "pipeline":
        arm_b = BanditNudgePolicy(sim, products, make_bandit(cfg, sim, training))
    policies = {"A": Phased(logger, RulePolicy(sim, cfg.arm_a.epsilon), waves), "B": Phased(logger, arm_b, waves)}
    total = waves * customers + test_contacts
    logs, rows = {}, {}
    for arm, policy in policies.items():
        logs[arm] = sim.run_policy(policy, total, np.random.default_rng(seeds["campaign"]), batch_size=batch)
        rows[arm] = test_rows(logs[arm], waves)
        _check_replay(arm, logs[arm], training, rows[arm])
        first = len(training.purchased)
        (out / "arms").mkdir(exist_ok=True)
        events = logs[arm].events
        keep = pa.array(np.asarray(events.column("session_id")) >= first)
        pq.write_table(events.filter(keep), out / "arms" / f"{arm}.parquet")
    ctx = logs["A"].contacts.take(rows["A"])
    other = logs["B"].contacts.take(rows["B"])
    if not all(np.array_equal(getattr(ctx, k), getattr(other, k)) for k in ("customer", "time_us", "held", "history")):
        raise RuntimeError("the arms met different customers or states in the test wave")
    timings["test_wave_s"] = clock() - t

    t = clock()
    say(f"OPE check: {ope_contacts:,} contacts logged by the {cfg.ope.logging} policy, target {cfg.ope.target}")
    ope = run_ope_check(sim, cfg.ope, ope_contacts, seeds["ope"], batch, cfg.level)
    timings["ope_check_s"] = clock() - t

    arms = {arm: arm_summary(sim, logs[arm], rows[arm], batch, cfg.level) for arm in logs}
    references = reference_values(sim, products, ctx, arm_b if cfg.arm_b.learner == "offers" else None)
    metrics = {
        "command": command, "config": cfg.to_dict(), "source": cfg.source, "customers": customers,
        "test_contacts": test_contacts,
        "simulator": {"config": str(cfg.simulator_path), "calibration": str(sim.uci.path), "uci_rows": sim.uci.rows},
        "training": {**train_info, "contacts": len(training.purchased), "purchases": int(training.purchased.sum()),
                     "conversion": float(training.purchased.mean())},
        "arms": {arm: s["metrics"] for arm, s in arms.items()},
        "comparison": comparison(arms["A"]["metrics"], arms["B"]["metrics"], logs["A"].purchased[rows["A"]],
                                 logs["B"].purchased[rows["B"]], cfg.level),
        "learner": cfg.arm_b.learner,
        "bandit": bandit_summary(cfg, sim, arm_b),
        "offers": offers_info,
        "gate": gate,
        "references": references,
        "ope": ope.as_dict(),
    }
    write_outputs(out, metrics, arms, sim)
    timings["total_s"] = clock() - t0
    metrics["timings"] = timings
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1, default=float) + "\n")
    say(f"done in {timings['total_s']:.1f} s: {out / 'report.md'}")
    return metrics
