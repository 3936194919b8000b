"""The A/B test's configuration: one TOML file -> frozen, validated dataclasses (`seqrec abtest --config`).

Tables (the shipped file, experiments/configs/abtest.toml, says what each number means and why):
  (top level)   simulator config, seed, customers, contacts per arm, batch size, interval level, torch threads
  [training]    the exploring campaign whose log trains arm B: policy, epsilon, waves, the Q head's rewards
  [encoder], [head], [train], [retrieval], [index], [rerank]
                arm B's run: the run file's tables (docs/config.md), merged over MODEL_DEFAULTS and checked by
                the run-config code (seqrec.runs.file_config); the older form [model.encoder] ... [model.index]
                means the same and is still read (one form per file)
  [bandit]      arm B's nudge bandit (seqrec.rl.bandits.policies.BanditConfig; LinUCB on the customer context
                too); the older [arm_b.bandit] means the same
  [arm_a]       the rule-based campaign: epsilon (0 = the rules as written)
  [arm_b]       learner (offers: the offer-level Q learner; pipeline: two-tower + Q re-rank + nudge bandit),
                reference_pipeline, warm_start
  [offers]      the offer-level Q learner (seqrec.training.offers.OfferConfig): history, network, fitting
  [decision]    arm B's decision layer over the joint (product, nudge) action (seqrec.rl.bandits.joint.JointConfig)
  [gate]        the go / no-go estimate before the test: estimator, resamples
  [ope]         the off-policy check: logging and target policies, contacts, estimators, reward model, resamples

An unknown key stops with a ConfigError naming it and the valid keys of its table.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from seqrec.core.config import ConfigError, check_choice, check_int, check_real, from_dict, load_toml
from seqrec.datasets.schema import EVENT_TYPES
from seqrec.rl.bandits.joint import JointConfig
from seqrec.rl.bandits.policies import BanditConfig
from seqrec.rl.offers.config import OfferConfig
from seqrec.rl.ope.estimators import ESTIMATORS
from seqrec.runs.file_config import ENCODER_PLACEHOLDERS, bandit_table, check_model_tables

POLICIES = ("random", "rules")
LEARNERS = ("offers", "pipeline")
REWARD_MODELS = ("ridge", "cell_mean")
USER_FEATURES = ("segment", "age_band", "job", "poutcome", "housing", "loan")   # simulator columns on every event
OFFER_PROFILE = ("segment", "age_band", "job", "marital", "education", "housing", "loan", "poutcome", "month")

# Arm B's run when [model] says nothing: SASRec-SQN with the papers' discount, two-tower candidates from the
# customers' segment and profile, the Q head re-ranking them. Short: the whole test runs in minutes on 2 cores.
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "encoder": {"kind": "sasrec", "dim": 32, "blocks": 1, "heads": 1, "dropout": 0.1},
    "head": {"variant": "sqn", "gamma": 0.5},
    "train": {"batch_size": 256, "lr": 0.005, "max_steps": 300, "eval_every": 150, "log_every": 50,
              "device": "cpu"},
    "retrieval": {"enabled": True, "init": "learner", "max_steps": 150, "eval_every": 75, "log_every": 25,
                  "user_categorical": list(USER_FEATURES), "item_categorical": ["product_category"]},
    "rerank": {"candidates": 5, "w_tt": 0.0, "w_sup": 0.0, "w_q": 1.0},
    "index": {"kind": "exact"},
}
RUN_TABLES = tuple(MODEL_DEFAULTS)  # the run file's tables arm B's run takes (besides [bandit])



@dataclass(frozen=True)
class TrainingPhase:
    """The exploring campaign before the test: its log trains arm B's pipeline."""

    policy: str = "random"      # random | rules (rules needs epsilon > 0 to explore)
    epsilon: float = 0.0        # rules: share of uniformly random decisions
    waves: int = 2              # every customer is contacted once a year for `waves` years, then the test wave
    # the campaign counts purchases only: every event type of the schema at 0 but the purchase
    rewards: tuple[tuple[str, float], ...] = tuple((t, float(t == "purchase")) for t in EVENT_TYPES)

    def __post_init__(self) -> None:
        check_choice("training.policy", self.policy, POLICIES)
        check_real("training.epsilon", self.epsilon, 0.0, 1.0)
        check_int("training.waves", self.waves, 1)
        names = [k for k, _ in self.rewards]
        unknown = sorted(set(names) - set(EVENT_TYPES))
        if unknown or set(names) != set(EVENT_TYPES):
            raise ValueError(f"training.rewards must give every event type ({', '.join(EVENT_TYPES)}) and no other; "
                             f"got {', '.join(names)}")
        for k, v in self.rewards:
            check_real(f"training.rewards.{k}", v, -1e6, 1e6)


@dataclass(frozen=True)
class ArmA:
    """The rule-based campaign: per segment a product list and one fixed nudge ([rules] of the simulator)."""

    epsilon: float = 0.0        # share of random decisions; 0 = the rules as a campaign team wrote them

    def __post_init__(self) -> None:
        check_real("arm_a.epsilon", self.epsilon, 0.0, 1.0)


@dataclass(frozen=True)
class ArmB:
    """Arm B: the offer-level Q learner (product and nudge jointly), or the older pipeline (two-tower + Q re-rank
    with a nudge bandit that learns online from the test's purchases)."""

    learner: str = "offers"     # offers | pipeline
    reference_pipeline: bool = True   # with learner = offers, also train the pipeline for the rank-agreement table
    warm_start: bool = False    # pipeline: fit the bandit on the training log's nudges (IPS) before the test
    bandit: BanditConfig = field(default_factory=lambda: BanditConfig(kind="epsilon_greedy", epsilon=0.1))

    def __post_init__(self) -> None:
        check_choice("arm_b.learner", self.learner, LEARNERS)
        for name in ("warm_start", "reference_pipeline"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"arm_b.{name} must be true or false; got {getattr(self, name)!r}")


@dataclass(frozen=True)
class Gate:
    """The go / no-go before the test: arm B's decision policy valued off-policy on the training campaign's last
    wave, against the current policy (arm A's rules), with bootstrap intervals."""

    estimator: str = "snips"    # snips | dr (DR's reward model: ridge per offer on the customer's features)
    resamples: int = 1000       # bootstrap resamples of the intervals (the difference's are paired)

    def __post_init__(self) -> None:
        check_choice("gate.estimator", self.estimator, ("snips", "dr"))
        check_int("gate.resamples", self.resamples, 1)


@dataclass(frozen=True)
class OpeCheck:
    """Off-policy evaluation against the simulator's truth: a logging policy's log, a target's estimated value."""

    logging: str = "random"     # the exploring logger: random | rules
    logging_epsilon: float = 0.0   # rules logger: share of random decisions (0: deterministic, no overlap)
    target: str = "rules"       # the policy whose value is estimated and then run: random | rules
    target_epsilon: float = 0.0
    contacts: int = 0           # logged contacts, one per customer at most; 0 = every customer once
    estimators: tuple[str, ...] = ESTIMATORS
    reward_model: str = "ridge"  # DM/DR reward model: ridge (per action on the customer context) | cell_mean
    ridge_l2: float = 1.0
    resamples: int = 1000       # bootstrap resamples of the intervals

    def __post_init__(self) -> None:
        check_choice("ope.logging", self.logging, POLICIES)
        check_choice("ope.target", self.target, POLICIES)
        check_real("ope.logging_epsilon", self.logging_epsilon, 0.0, 1.0)
        check_real("ope.target_epsilon", self.target_epsilon, 0.0, 1.0)
        check_int("ope.contacts", self.contacts, 0)
        check_int("ope.resamples", self.resamples, 0)
        check_choice("ope.reward_model", self.reward_model, REWARD_MODELS)
        check_real("ope.ridge_l2", self.ridge_l2, 1e-12, 1e12)
        if not self.estimators or any(e not in ESTIMATORS for e in self.estimators):
            raise ValueError(f"ope.estimators must list some of {', '.join(ESTIMATORS)}; got {list(self.estimators)}")


@dataclass(frozen=True)
class AbTestConfig:
    """The whole A/B test as loaded from one TOML file (see the module docstring)."""

    simulator: str              # simulator TOML; relative paths are resolved against base_dir
    seed: int = 0               # population draw, every campaign, model training, the bandit
    customers: int = 0          # population size; 0 = the simulator's population.size
    contacts: int = 0           # test contacts per arm (one per customer at most); 0 = every customer once
    batch_size: int = 500       # contacts decided before their outcomes are seen (the bandit learns in between)
    level: float = 0.95         # confidence level of every interval
    threads: int = 1            # torch threads while the test runs (the model is tiny; fixed, so figures repeat)
    training: TrainingPhase = field(default_factory=TrainingPhase)
    model: dict[str, dict[str, Any]] = field(default_factory=lambda: copy.deepcopy(MODEL_DEFAULTS))
    arm_a: ArmA = field(default_factory=ArmA)
    arm_b: ArmB = field(default_factory=ArmB)
    ope: OpeCheck = field(default_factory=OpeCheck)
    offers: OfferConfig = field(default_factory=lambda: OfferConfig(profile=OFFER_PROFILE))
    decision: JointConfig = field(default_factory=lambda: JointConfig(kind="epsilon_greedy", epsilon=0.02))
    gate: Gate = field(default_factory=Gate)
    simulator_set: tuple[tuple[str, Any], ...] = ()   # overrides of simulator keys ("population.taste_sd", 1.0)
    source: str = "<memory>"    # the TOML file, for errors and the report
    base_dir: str = "."

    def __post_init__(self) -> None:
        if not isinstance(self.simulator, str) or not self.simulator:
            raise ValueError(f"simulator must be the path of a simulator TOML; got {self.simulator!r}")
        check_int("seed", self.seed, 0)
        check_int("customers", self.customers, 0)
        check_int("contacts", self.contacts, 0)
        check_int("batch_size", self.batch_size, 1)
        check_int("threads", self.threads, 1)
        check_real("level", self.level, 0.5, 0.999)

    @property
    def simulator_path(self) -> Path:
        p = Path(self.simulator)
        return p if p.is_absolute() else Path(self.base_dir) / p

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (written to OUT/config.json and metrics.json)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "model":
                out[f.name] = copy.deepcopy(v)
            elif f.name == "simulator_set":
                out[f.name] = {k: x for k, x in v}
            elif hasattr(v, "__dataclass_fields__"):
                out[f.name] = _plain(v)
            else:
                out[f.name] = v
        return out


def _plain(obj: Any) -> Any:
    """A dataclass as nested dicts, pairs tables as dicts."""
    if hasattr(obj, "__dataclass_fields__"):
        return {f.name: _plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, tuple) and obj and all(isinstance(x, tuple) and len(x) == 2 for x in obj):
        return {k: v for k, v in obj}
    return list(obj) if isinstance(obj, tuple) else obj


DECISION_TABLES = ("offers", "decision", "gate")
TOP_KEYS = (*(f.name for f in fields(AbTestConfig) if f.name not in ("source", "base_dir", "simulator_set")),
            *RUN_TABLES, "bandit")


def load_abtest_config(path: str | Path) -> AbTestConfig:
    """Read and validate an A/B test TOML file; every problem is one ConfigError naming the file and key."""
    p = Path(path)
    return abtest_config_from_dict(load_toml(p), str(p), str(p.resolve().parent))


def abtest_config_from_dict(data: dict[str, Any], source: str = "<memory>", base_dir: str = ".") -> AbTestConfig:
    """Validate a parsed TOML document into an AbTestConfig (errors prefixed with `source`)."""
    try:
        return _build(dict(data), source, base_dir)
    except (ConfigError, ValueError, TypeError) as e:
        raise ConfigError(f"{source}: {e}") from None


def _table(where: str, value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"[{where}] must be a table; got {value!r}")
    return dict(value)


def _build(data: dict[str, Any], source: str, base_dir: str) -> AbTestConfig:
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]}; valid top-level keys: {', '.join(TOP_KEYS)}")
    if "simulator" not in data:
        raise ConfigError("missing key simulator (the simulator TOML, e.g. \"campaign_sim.toml\")")
    tables = ("training", "model", "arm_a", "arm_b", "ope", *RUN_TABLES, "bandit", *DECISION_TABLES)
    top = {k: v for k, v in data.items() if k not in tables}
    for k, v in top.items():
        want, kinds = {"simulator": ("text", str), "level": ("a number", (int, float))}.get(k, ("an integer", int))
        if isinstance(v, bool) or not isinstance(v, kinds):
            raise ConfigError(f"{k} must be {want}; got {v!r}")
    training = from_dict(TrainingPhase, _table("training", data.get("training", {})), "training")
    arm_a = from_dict(ArmA, _table("arm_a", data.get("arm_a", {})), "arm_a")
    b = _table("arm_b", data.get("arm_b", {}))
    bandit = ArmB().bandit
    if "bandit" in b and "bandit" in data:
        raise ConfigError("give the bandit once: [bandit] (or the older [arm_b.bandit]), not both")
    if "bandit" in b or "bandit" in data:
        where = "arm_b.bandit" if "bandit" in b else "bandit"
        raw = _table(where, b.pop("bandit") if "bandit" in b else data["bandit"])
        if "seed" in raw:
            raise ConfigError(f"{where}.seed comes from the top-level seed; leave it out")
        bandit = bandit_table(raw, where)
    arm_b = from_dict(ArmB, b, "arm_b")
    arm_b = replace(arm_b, bandit=bandit)
    ope = from_dict(OpeCheck, _table("ope", data.get("ope", {})), "ope")
    model = _model(_run_tables(data))
    offers_raw = {"profile": list(OFFER_PROFILE), **_table("offers", data.get("offers", {}))}
    if "seed" in offers_raw:
        raise ConfigError("offers.seed comes from the top-level seed; leave it out")
    offers = from_dict(OfferConfig, offers_raw, "offers")
    decision_raw = {"kind": "epsilon_greedy", "epsilon": 0.02, **_table("decision", data.get("decision", {}))}
    if "seed" in decision_raw:
        raise ConfigError("decision.seed comes from the top-level seed; leave it out")
    decision = from_dict(JointConfig, decision_raw, "decision")
    if offers.grid_epsilon and decision.kind != "epsilon_greedy":
        raise ConfigError(f"offers.grid_epsilon chooses the exploration share of an epsilon_greedy decision layer; "
                          f"decision.kind is {decision.kind!r}")
    gate = from_dict(Gate, _table("gate", data.get("gate", {})), "gate")
    return AbTestConfig(**top, training=training, model=model, arm_a=arm_a, arm_b=arm_b, ope=ope, offers=offers,
                        decision=decision, gate=gate, source=source, base_dir=base_dir)


def _run_tables(data: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Arm B's run tables as given, and the prefix of their names in errors: the top-level tables ("") or the
    older [model.*] form ("model."); a file uses one form."""
    top = [t for t in RUN_TABLES if t in data]
    if "model" in data and top:
        raise ConfigError(f"give arm B's run tables at the top level ([{top[0]}]) or under [model] (the older "
                          "form), not both")
    if "model" in data:
        raw = _table("model", data["model"])
        unknown = sorted(set(raw) - set(RUN_TABLES))
        if unknown:
            raise ConfigError(f"unknown table [model.{unknown[0]}]; valid: "
                              f"{', '.join(f'[model.{t}]' for t in RUN_TABLES)}")
        return raw, "model."
    return {t: data[t] for t in top}, ""


def _model(given_tables: tuple[dict[str, Any], str]) -> dict[str, dict[str, Any]]:
    """MODEL_DEFAULTS with the given run tables merged in key by key, each checked by the run-config code."""
    raw, where = given_tables
    model = copy.deepcopy(MODEL_DEFAULTS)
    for name in RUN_TABLES:
        given = _table(f"{where}{name}", raw.get(name, {}))
        fixed = sorted(set(given) & set(ENCODER_PLACEHOLDERS)) if name == "encoder" else []
        if fixed:
            raise ConfigError(f"{where}{name}.{fixed[0]} comes from the prepared data; leave it out")
        if "seed" in given and name in ("train", "retrieval"):
            raise ConfigError(f"{where}{name}.seed comes from the top-level seed; leave it out")
        model[name].update(given)
    check_model_tables(model, where)
    if not model["retrieval"].get("enabled", False):
        raise ConfigError(f"{where}retrieval.enabled must be true: arm B takes its candidates from the two-tower")
    if model["head"].get("variant", "ce") == "ce" and model["rerank"].get("w_q", 0.0):
        raise ConfigError(f"{where}rerank.w_q needs a Q head: {where}head.variant must not be 'ce'")
    return model


def parse_sim_set(items: list[str]) -> tuple[tuple[str, Any], ...]:
    """`--sim-set KEY=VALUE` flags -> (dotted key, TOML value) pairs, e.g. population.taste_sd=1.0 or
    nudges.odds_ratio.social_appeal=1.2; a ConfigError naming the flag when one does not parse."""
    import tomllib

    out = []
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip() or not all(key.strip().split(".")):
            raise ConfigError(f"--sim-set {item!r}: expected KEY=VALUE with a dotted KEY (population.taste_sd=1.0)")
        try:
            value = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"--sim-set {item!r}: the value is not a TOML value ({e})") from None
        out.append((key.strip(), value))
    return tuple(out)


def apply_sim_set(data: dict[str, Any], pairs: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    """The simulator's parsed TOML with each dotted key set (tables created or replaced along the path)."""
    data = copy.deepcopy(data)
    for key, value in pairs:
        *path, last = key.split(".")
        node = data
        for part in path:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[last] = value
    return data
