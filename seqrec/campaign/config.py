"""The campaign simulator's configuration: one TOML file -> frozen, validated dataclasses.

Every number the simulator assumes lives in the TOML file (`experiments/configs/campaign_sim.toml` is the
shipped one, with a comment on each number saying what it means and why it was chosen); nothing is tuned in
code. Loading checks every key: an unknown, missing or mistyped key stops with a `SimConfigError` naming the
file and the key (`products[2] ('credit_card').odds_ratio.retiree`), not a traceback from deep inside a run.

Tables (see the shipped file for meanings):
  [population]   size, seed, calibration file, age bands, response features, ridge, taste spread, reference product
  [[segments]]   ordered rules (jobs, age range) -> segment name; the last rule matches everyone
  [[products]]   id, category, value, odds ratio per segment against the reference product, held_if
  [nudges]       catalogue, repeat_decay; [nudges.odds_ratio] family x segment; [nudges.arm_odds_ratio];
                 [nudges.forbid] category -> arms never shown with it
  [funnel]       like / cart / browsing probabilities and event gaps
  [campaign]     seed, contacts, calendar, contact fatigue, history window, batch size, default policy
  [rules]        the rule-based campaign: segment -> products in order of preference and one fixed nudge
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from seqrec.core.config import ConfigError, check_int, check_real, load_toml
from seqrec.datasets.synthetic import NUDGE_FAMILIES

# UCI Bank Marketing columns a customer may carry. `duration` (call length, known only after the call, which
# leaks the label) and `campaign` (calls in this campaign, stopped at success) are deliberately absent, as are
# the five macro-economic indicators (not customer attributes). Nothing else is ever read from the file.
CUSTOMER_COLUMNS: tuple[str, ...] = (
    "age", "job", "marital", "education", "default", "housing", "loan", "contact", "month", "day_of_week",
    "pdays", "previous", "poutcome",
)
LABEL_COLUMN = "y"
# Features the base-response model may use: categorical customer columns plus the derived age band.
RESPONSE_FEATURE_CHOICES: tuple[str, ...] = (
    "age_band", "job", "marital", "education", "default", "housing", "loan", "contact", "month", "day_of_week",
    "poutcome",
)
HELD_IF_CHOICES: tuple[str, ...] = ("housing", "loan")   # UCI yes/no columns that mean "already holds"
POLICIES: tuple[str, ...] = ("random", "rules")


class SimConfigError(ConfigError):
    """A simulator config that cannot be used: the message names the file and the key."""


def _fail(where: str, msg: str) -> SimConfigError:
    return SimConfigError(f"{where}: {msg}")


def _int(where: str, value: object, low: int) -> int:
    """`value` as an int >= low (seqrec.core.config.check_int), else a SimConfigError naming `where`."""
    try:
        check_int("", value, low)
    except ValueError as e:
        raise _fail(where, str(e).strip()) from None
    return int(value)  # type: ignore[call-overload]


def _real(where: str, value: object, low: float, high: float = math.inf, open_low: bool = False) -> float:
    """`value` as a float in [low, high] ((low, high] if `open_low`; seqrec.core.config.check_real), else a
    SimConfigError naming `where`."""
    try:
        check_real("", value, low, high, open_low)
    except ValueError as e:
        raise _fail(where, str(e).strip()) from None
    return float(value)  # type: ignore[arg-type]


def _text(where: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(where, f"must be non-empty text; got {value!r}")
    return value


def _texts(where: str, value: object, allow_empty: bool = False) -> tuple[str, ...]:
    if not isinstance(value, list) or (not value and not allow_empty):
        raise _fail(where, f"must be a {'' if allow_empty else 'non-empty '}list of text; got {value!r}")
    out = tuple(_text(f"{where}[{i}]", v) for i, v in enumerate(value))
    if len(set(out)) < len(out):
        raise _fail(where, f"lists a value twice: {list(out)}")
    return out


def _table(where: str, value: object, keys: tuple[str, ...], required: tuple[str, ...] = ()) -> dict[str, Any]:
    """A TOML table with only `keys` (error naming the unknown key) and every `required` key present."""
    if not isinstance(value, dict):
        raise _fail(where, f"must be a table; got {value!r}")
    unknown = sorted(set(value) - set(keys))
    if unknown:
        raise _fail(f"{where}.{unknown[0]}", f"unknown key; valid keys: {', '.join(keys)}")
    for k in required:
        if k not in value:
            raise _fail(where, f"is missing {k!r}")
    return value


# ------------------------------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class PopulationConfig:
    """Who the customers are: how many, drawn how, and how their base response is calibrated."""

    size: int = 41_188                 # customers, drawn from the calibration file's rows (default: every UCI row)
    seed: int = 0                      # seed of the draw and of the customers' tastes
    calibration: str = ""              # UCI bank-additional-full.csv; "" = default shared-data path
    age_bands: tuple[int, ...] = (25, 35, 45, 55, 65)   # band edges: <25, 25-34, ..., 65+
    response_features: tuple[str, ...] = ("age_band", "job", "poutcome", "month")
    ridge: float = 1.0                 # L2 penalty on the level effects of the logistic fit
    taste_sd: float = 0.5              # sd of each customer's own log-odds taste for each product
    reference_product: str = "term_deposit"   # the product UCI's label measured (a term-deposit subscription)

    def __post_init__(self) -> None:
        _int("population.size", self.size, 1)
        _int("population.seed", self.seed, 0)
        _real("population.ridge", self.ridge, 0.0, 1e6)
        _real("population.taste_sd", self.taste_sd, 0.0, 5.0)


@dataclass(frozen=True)
class SegmentRule:
    """Customers whose job is in `jobs` (any job when empty) and age in [min_age, max_age] get `name`."""

    name: str
    jobs: tuple[str, ...] = ()
    min_age: int = 0
    max_age: int = 200

    @property
    def catch_all(self) -> bool:
        return not self.jobs and self.min_age == 0 and self.max_age == 200


@dataclass(frozen=True)
class ProductSpec:
    """A financial product: its id (the logged item_id), category, value, and appeal per segment."""

    id: str
    category: str
    value: float                        # logged in the `value` column (yearly margin, illustrative)
    odds_ratio: tuple[float, ...]       # (S,) odds of buying it against the reference product, per segment
    held_if: str = ""                   # UCI column whose "yes" means the customer already holds it


@dataclass(frozen=True)
class NudgeEffects:
    """What a nudge does to the odds of buying, by family and segment, and how repetition wears it out."""

    catalogue: str = ""                              # nudge catalogue TOML; "" = the shipped seqrec/nudging/nudges.toml
    repeat_decay: float = 0.7                        # each earlier showing of a family keeps this share of its effect
    family_odds_ratio: tuple[tuple[float, ...], ...] = ()   # (F, S) in NUDGE_FAMILIES x segment order
    arm_odds_ratio: tuple[tuple[str, float], ...] = ()      # arm id -> extra odds ratio of that arm
    forbid: tuple[tuple[str, tuple[str, ...]], ...] = ()    # product category -> arms never shown with it


@dataclass(frozen=True)
class FunnelConfig:
    """How one contact turns into view, like, cart and purchase events."""

    like_if_purchase: float = 0.35      # P(like the offered product | bought it)
    like_if_no_purchase: float = 0.06   # P(like the offered product | did not buy)
    cart_if_no_purchase: float = 0.10   # P(start an application and abandon it | did not buy)
    browse_mean: float = 2.0            # mean number of other products viewed after the offer (Poisson)
    browse_weight: float = 1.0          # how strongly browsing follows the customer's appeal for products
    like_browsed: float = 0.04          # P(like a browsed product)
    gap_seconds: float = 40.0           # mean seconds between events of a session (1 s + exponential)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("browse_mean", "browse_weight"):
                _real(f"funnel.{f.name}", value, 0.0, 100.0)
            elif f.name == "gap_seconds":
                _real(f"funnel.{f.name}", value, 0.0, 600.0)
            else:
                _real(f"funnel.{f.name}", value, 0.0, 1.0)


@dataclass(frozen=True)
class CampaignConfig:
    """How a campaign runs: its contacts, calendar, fatigue and the cadence at which a policy learns."""

    seed: int = 0                      # seed of the schedule, the policy's draws and the responses
    contacts: int = 0                  # contact budget; 0 = one contact per customer
    start_year: int = 2024             # year of the first wave; wave w runs in start_year + w
    max_contacts_per_customer: int = 5
    contact_odds_ratio: float = 0.87   # odds multiplier per earlier contact of the same customer
    history_window: int = 10           # products in a customer's history state (newest last)
    batch_size: int = 500              # contacts decided before the policy sees their outcomes
    policy: str = "random"             # default for `seqrec simulate`: random | rules
    epsilon: float = 0.0               # rules policy: share of contacts decided uniformly at random

    def __post_init__(self) -> None:
        _int("campaign.seed", self.seed, 0)
        _int("campaign.contacts", self.contacts, 0)
        _int("campaign.start_year", self.start_year, 1971)
        if self.start_year > 2100:
            raise _fail("campaign.start_year", f"must be <= 2100; got {self.start_year}")
        _int("campaign.max_contacts_per_customer", self.max_contacts_per_customer, 1)
        _real("campaign.contact_odds_ratio", self.contact_odds_ratio, 0.0, 10.0, open_low=True)
        _int("campaign.history_window", self.history_window, 1)
        _int("campaign.batch_size", self.batch_size, 1)
        if self.policy not in POLICIES:
            raise _fail("campaign.policy", f"must be one of {', '.join(POLICIES)}; got {self.policy!r}")
        _real("campaign.epsilon", self.epsilon, 0.0, 1.0)


@dataclass(frozen=True)
class RuleSpec:
    """The rule-based campaign for one segment: the first product of `products` not yet held, with `nudge`."""

    segment: str
    products: tuple[str, ...]
    nudge: str


@dataclass(frozen=True)
class SimConfig:
    """The whole simulator configuration (every assumption), as loaded from one TOML file."""

    population: PopulationConfig
    segments: tuple[SegmentRule, ...]
    products: tuple[ProductSpec, ...]
    nudges: NudgeEffects
    funnel: FunnelConfig
    campaign: CampaignConfig
    rules: tuple[RuleSpec, ...] = ()
    source: str = "<memory>"           # the TOML file, for errors and provenance
    base_dir: str = "."                # folder relative paths in the file are resolved against

    @property
    def segment_names(self) -> tuple[str, ...]:
        """Segment names in order of first appearance in [[segments]]."""
        return tuple(dict.fromkeys(r.name for r in self.segments))

    @property
    def product_ids(self) -> tuple[str, ...]:
        return tuple(p.id for p in self.products)


# ------------------------------------------------------------------------------------------------ loading

TOP_KEYS = ("population", "segments", "products", "nudges", "funnel", "campaign", "rules")


def load_sim_config(path: str | Path) -> SimConfig:
    """Read and validate a simulator TOML file (SimConfigError naming the file and key on any problem)."""
    p = Path(path)
    try:
        data = load_toml(p)
    except ConfigError as e:
        raise SimConfigError(str(e)) from None
    return sim_config_from_dict(data, str(p), str(p.resolve().parent))


def sim_config_from_dict(data: Mapping[str, Any], source: str = "<memory>", base_dir: str = ".") -> SimConfig:
    """Validate a parsed TOML document into a SimConfig; errors are prefixed with `source`."""
    try:
        return _build(dict(data), source, base_dir)
    except SimConfigError as e:
        raise SimConfigError(f"{source}: {e}") from None


def _build(data: dict[str, Any], source: str, base_dir: str) -> SimConfig:
    _table("(top level)", data, TOP_KEYS, ("population", "segments", "products", "nudges"))
    population = _population(data["population"])
    segments = _segments(data["segments"])
    names = tuple(dict.fromkeys(r.name for r in segments))
    products = _products(data["products"], names, population.reference_product)
    nudges = _nudges(data["nudges"], names, {p.category for p in products})
    funnel = _flat(FunnelConfig, data.get("funnel", {}), "funnel")
    campaign = _flat(CampaignConfig, data.get("campaign", {}), "campaign")
    rules = _rules(data.get("rules", {}), names, {p.id for p in products})
    return SimConfig(population, segments, products, nudges, funnel, campaign, rules, source, base_dir)


def _flat(cls: type, raw: object, where: str) -> Any:
    """A table of scalars -> dataclass `cls` (ints accepted for floats); errors name `where.key`."""
    known = tuple(f.name for f in fields(cls))
    table = _table(where, raw, known)
    kwargs = {}
    for f in fields(cls):
        if f.name in table:
            v = table[f.name]
            if f.type == "float" and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
            kind = {"float": float, "int": int, "str": str}.get(str(f.type))
            if kind is not None and (isinstance(v, bool) or not isinstance(v, kind)):
                raise _fail(f"{where}.{f.name}", f"must be {kind.__name__}; got {v!r}")
            kwargs[f.name] = v
    return cls(**kwargs)


def _population(raw: object) -> PopulationConfig:
    keys = tuple(f.name for f in fields(PopulationConfig))
    t = _table("population", raw, keys)
    d = PopulationConfig()
    size = _int("population.size", t.get("size", d.size), 1)
    seed = _int("population.seed", t.get("seed", d.seed), 0)
    calibration = t.get("calibration", d.calibration)
    if not isinstance(calibration, str):
        raise _fail("population.calibration", f"must be a path as text (\"\" for the default); got {calibration!r}")
    bands = t.get("age_bands", list(d.age_bands))
    if not isinstance(bands, list) or not bands:
        raise _fail("population.age_bands", f"must be a non-empty list of ages; got {bands!r}")
    edges = tuple(_int(f"population.age_bands[{i}]", b, 1) for i, b in enumerate(bands))
    if any(b >= c for b, c in zip(edges, edges[1:])):
        raise _fail("population.age_bands", f"must increase strictly; got {list(edges)}")
    feats = _texts("population.response_features", t.get("response_features", list(d.response_features)))
    for i, f in enumerate(feats):
        if f not in RESPONSE_FEATURE_CHOICES:
            raise _fail(f"population.response_features[{i}]",
                        f"unknown feature {f!r}; valid: {', '.join(RESPONSE_FEATURE_CHOICES)}")
    ridge = _real("population.ridge", t.get("ridge", d.ridge), 0.0, 1e6)
    taste = _real("population.taste_sd", t.get("taste_sd", d.taste_sd), 0.0, 5.0)
    ref = _text("population.reference_product", t.get("reference_product", d.reference_product))
    return PopulationConfig(size, seed, calibration, edges, feats, ridge, taste, ref)


def _segments(raw: object) -> tuple[SegmentRule, ...]:
    if not isinstance(raw, list) or not raw:
        raise _fail("segments", "needs at least one [[segments]] rule")
    out = []
    for i, entry in enumerate(raw):
        where = f"segments[{i}]"
        t = _table(where, entry, ("name", "jobs", "min_age", "max_age"), ("name",))
        rule = SegmentRule(
            name=_text(f"{where}.name", t["name"]),
            jobs=_texts(f"{where}.jobs", t["jobs"]) if "jobs" in t else (),
            min_age=_int(f"{where}.min_age", t.get("min_age", 0), 0),
            max_age=_int(f"{where}.max_age", t.get("max_age", 200), 0),
        )
        if rule.min_age > rule.max_age:
            raise _fail(where, f"min_age {rule.min_age} > max_age {rule.max_age}")
        out.append(rule)
    if not out[-1].catch_all:
        raise _fail(f"segments[{len(out) - 1}]", "the last rule must match everyone (a name only, no jobs or ages), "
                                                 "so that every customer gets a segment")
    return tuple(out)


def _per_segment(where: str, raw: object, segments: tuple[str, ...]) -> tuple[float, ...]:
    """An odds ratio for every segment: one positive number for all, or a table segment -> number."""
    if isinstance(raw, numbers.Real) and not isinstance(raw, bool):
        return (_real(where, raw, 0.0, 1e3, open_low=True),) * len(segments)
    if not isinstance(raw, dict):
        raise _fail(where, f"must be a positive number or a table segment -> number; got {raw!r}")
    unknown = sorted(set(raw) - set(segments))
    if unknown:
        raise _fail(f"{where}.{unknown[0]}", f"unknown segment; segments: {', '.join(segments)}")
    missing = [s for s in segments if s not in raw]
    if missing:
        raise _fail(where, f"is missing segment {missing[0]!r}; give every segment: {', '.join(segments)}")
    return tuple(_real(f"{where}.{s}", raw[s], 0.0, 1e3, open_low=True) for s in segments)


def _products(raw: object, segments: tuple[str, ...], reference: str) -> tuple[ProductSpec, ...]:
    if not isinstance(raw, list) or not raw:
        raise _fail("products", "needs at least one [[products]] entry")
    out: list[ProductSpec] = []
    for i, entry in enumerate(raw):
        where = f"products[{i}]"
        t = _table(where, entry, ("id", "category", "value", "odds_ratio", "held_if"), ("id", "category", "value"))
        pid = _text(f"{where}.id", t["id"])
        where = f"{where} ({pid!r})"
        if any(p.id == pid for p in out):
            raise _fail(where, f"duplicate product id {pid!r}")
        held_if = t.get("held_if", "")
        if held_if and held_if not in HELD_IF_CHOICES:
            raise _fail(f"{where}.held_if", f"must be one of {', '.join(HELD_IF_CHOICES)}; got {held_if!r}")
        odds = _per_segment(f"{where}.odds_ratio", t.get("odds_ratio", 1.0), segments)
        if pid == reference and any(o != 1.0 for o in odds):
            raise _fail(f"{where}.odds_ratio", "the reference product's response is the calibrated one: its odds "
                                               "ratios must all be 1 (or leave odds_ratio out)")
        out.append(ProductSpec(pid, _text(f"{where}.category", t["category"]),
                               _real(f"{where}.value", t["value"], 0.0, 1e9), odds, held_if))
    if reference not in {p.id for p in out}:
        raise _fail("population.reference_product", f"{reference!r} is not a product id; products: "
                                                     f"{', '.join(p.id for p in out)}")
    return tuple(out)


def _nudges(raw: object, segments: tuple[str, ...], categories: set[str]) -> NudgeEffects:
    t = _table("nudges", raw, ("catalogue", "repeat_decay", "odds_ratio", "arm_odds_ratio", "forbid"),
               ("odds_ratio",))
    catalogue = t.get("catalogue", "")
    if not isinstance(catalogue, str):
        raise _fail("nudges.catalogue", f"must be a path as text (\"\" for the shipped one); got {catalogue!r}")
    decay = _real("nudges.repeat_decay", t.get("repeat_decay", 0.7), 0.0, 1.0)
    fam = t["odds_ratio"]
    if not isinstance(fam, dict):
        raise _fail("nudges.odds_ratio", "must be a table family -> odds ratio per segment")
    unknown = sorted(set(fam) - set(NUDGE_FAMILIES))
    if unknown:
        raise _fail(f"nudges.odds_ratio.{unknown[0]}", f"unknown family; families: {', '.join(NUDGE_FAMILIES)}")
    missing = [f for f in NUDGE_FAMILIES if f not in fam]
    if missing:
        raise _fail("nudges.odds_ratio", f"is missing family {missing[0]!r}")
    family = tuple(_per_segment(f"nudges.odds_ratio.{f}", fam[f], segments) for f in NUDGE_FAMILIES)
    arm_raw = t.get("arm_odds_ratio", {})
    if not isinstance(arm_raw, dict):
        raise _fail("nudges.arm_odds_ratio", "must be a table arm id -> odds ratio")
    arms = tuple((str(k), _real(f"nudges.arm_odds_ratio.{k}", v, 0.0, 1e3, open_low=True)) for k, v in arm_raw.items())
    forbid_raw = t.get("forbid", {})
    if not isinstance(forbid_raw, dict):
        raise _fail("nudges.forbid", "must be a table product category -> list of arm ids")
    forbid = []
    for cat, lst in forbid_raw.items():
        if cat not in categories:
            raise _fail(f"nudges.forbid.{cat}",
                        f"unknown product category; categories: {', '.join(sorted(categories))}")
        forbid.append((str(cat), _texts(f"nudges.forbid.{cat}", lst)))
    return NudgeEffects(catalogue, decay, family, arms, tuple(forbid))


def _rules(raw: object, segments: tuple[str, ...], products: set[str]) -> tuple[RuleSpec, ...]:
    if not isinstance(raw, dict):
        raise _fail("rules", "must be a table segment -> {products = [...], nudge = \"...\"}")
    if not raw:
        return ()
    unknown = sorted(set(raw) - set(segments))
    if unknown:
        raise _fail(f"rules.{unknown[0]}", f"unknown segment; segments: {', '.join(segments)}")
    missing = [s for s in segments if s not in raw]
    if missing:
        raise _fail("rules", f"is missing segment {missing[0]!r}: the rules must cover every segment")
    out = []
    for s in segments:
        where = f"rules.{s}"
        t = _table(where, raw[s], ("products", "nudge"), ("products", "nudge"))
        prods = _texts(f"{where}.products", t["products"])
        for i, p in enumerate(prods):
            if p not in products:
                raise _fail(f"{where}.products[{i}]", f"unknown product {p!r}; products: {', '.join(sorted(products))}")
        out.append(RuleSpec(s, prods, _text(f"{where}.nudge", t["nudge"])))
    return tuple(out)
