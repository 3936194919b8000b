"""What `seqrec ope` composes: an event log -> logged nudge decisions, a policy spec -> a target policy, a table.

The log is an event file in our schema with `nudge_id` and `propensity` (read by the same readers and
validator as `seqrec prepare`), or a prepared-dataset folder (its `events.parquet`). Each nudged event is one
decision, rewarded by what the user did next with that item (`seqrec.nudging.catalogue.nudge_decisions`, the training
rewards by event type unless `rewards` says otherwise). A bad row stops the run with its file, row and field:
estimates from a log with rows silently left out would be estimates of something else.

Policy specs (`resolve_policy`):

- `uniform`: uniform over the available arms;
- `arm:ID`: always nudge ID (uniform over the available arms where ID is not);
- `greedy` or `greedy:EPS`: epsilon-greedy (EPS, default 0.1) on each arm's mean reward in this same log
  (optimistic: it is fit on the data that evaluates it);
- a run folder (or its `bandit.json`): the bandit `rl.bandits.save_bandit` wrote there; context-free kinds
  only, since event logs carry no contexts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from seqrec.datasets.readers import BadRows, InputError, SourceSpec, read_file
from seqrec.datasets.schema import DEFAULT_REWARDS
from seqrec.datasets.validate import EventTypes, Validator
from seqrec.nudging.catalogue import NudgeCatalogue, nudge_decisions
from seqrec.rl.bandits.fit import load_bandit
from seqrec.rl.bandits.policies import Bandit
from seqrec.rl.ope.data import EpsilonGreedyPolicy, FixedArmPolicy, UniformPolicy
from seqrec.rl.ope.estimators import CellMeanModel, Estimate, LoggedBandit


@dataclass(frozen=True)
class LoadedLog:
    """The decisions of one event log, and how they were read."""

    log: LoggedBandit
    arms: tuple[str, ...]      # action index -> nudge id
    events: int                # event rows read
    source: str


def read_logged_events(path: Path, spec: SourceSpec, rewards: Mapping[str, float]) -> tuple[pa.Table, dict[str, float]]:
    """Validated events of one file (event_type as names, `_row` = 1-based source row), and the reward per
    event type; InputError naming file, row, field and value at the first bad row."""
    event_types = EventTypes.build(spec.event_map, dict(rewards))
    validate = Validator(str(path), 0, event_types, spec.time_unit, spec.event_type)
    tables = []
    for raw in read_file(path, spec):
        bad = raw.bad
        kept = validate(raw, bad) if raw.table.num_rows else None
        _stop_at_bad_row(path, bad)
        if kept is not None and kept.num_rows:
            tables.append(kept)
    if not tables:
        raise InputError(f"{path}: no events")
    table = pa.concat_tables(tables, promote_options="default")
    codes = table.column("event").to_numpy()
    names = pa.array(np.asarray(event_types.names, dtype=object)[codes], pa.string())
    table = table.append_column("event_type", names).drop_columns(["event"])
    return table, dict(zip(event_types.names, event_types.rewards))


def _stop_at_bad_row(path: Path, bad: BadRows) -> None:
    if len(bad):
        i = int(np.argmin(bad.rows))
        raise InputError(f"{path}: row {bad.rows[i]}, field {bad.fields[i]}: {bad.reasons[i]} "
                         f"(value {bad.values[i]!r}); {len(bad)} bad row(s) in this batch. Off-policy evaluation "
                         "needs every logged decision: fix or remove the row")


def read_prepared(folder: Path, rewards: Mapping[str, float] | None) -> tuple[pa.Table, dict[str, float]]:
    """events.parquet of a prepared folder (`_row` = its source_row) and the rewards from its manifest."""
    manifest = json.loads((folder / "manifest.json").read_text())
    table = pq.read_table(folder / "events.parquet")
    if "source_row" in table.column_names:
        table = table.append_column("_row", table.column("source_row"))
    if rewards is None:
        rewards = {t["name"]: float(t["reward"]) for t in manifest.get("event_types", [])} or DEFAULT_REWARDS
    return table, dict(rewards)


def load_log(path: Path, arms: tuple[str, ...], spec: SourceSpec | None = None,
             rewards: Mapping[str, float] | None = None, catalogue: NudgeCatalogue | None = None) -> LoadedLog:
    """Logged decisions of an event file (read with `spec`) or a prepared folder, over `arms`.

    `catalogue`: when given, each decision's available arms are the catalogue's mask for its item id and
    `item_category`; otherwise every arm is available.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / "manifest.json").exists():
            raise InputError(f"{path}: a folder without manifest.json is not a prepared dataset")
        table, reward_map = read_prepared(path, rewards)
    else:
        if spec is None:
            raise ValueError("an event file needs a SourceSpec")
        table, reward_map = read_logged_events(path, spec, rewards or DEFAULT_REWARDS)
    if "nudge_id" not in table.column_names:
        raise InputError(f"{path}: no nudge_id column: the log records no nudge decisions")
    if "propensity" not in table.column_names:
        raise InputError(f"{path}: no propensity column: off-policy evaluation needs the logging policy's "
                         "probability of every logged nudge")
    decisions = nudge_decisions(table, arms, reward_map)
    if decisions.unknown:
        raise InputError(f"{path}: nudge id(s) outside the arms ({', '.join(arms)}): {dict(decisions.unknown)}; "
                         "every logged decision must be an arm of the evaluated policy")
    if not len(decisions.arm):
        raise InputError(f"{path}: no nudged events")
    row_ids = (np.asarray(table.column("_row").take(pa.array(decisions.row)).to_numpy())
               if "_row" in table.column_names else decisions.row)
    available = None
    if catalogue is not None:
        if tuple(catalogue.ids) != tuple(arms):
            raise ValueError("the catalogue's arms differ from the policy's; availability needs the same arms")
        available = _catalogue_masks(table, decisions.row, catalogue)
    log = LoggedBandit(decisions.arm, decisions.reward, decisions.propensity, len(arms),
                       available=available, row_ids=row_ids, source=str(path))
    return LoadedLog(log, tuple(arms), table.num_rows, str(path))


def _catalogue_masks(table: pa.Table, rows: np.ndarray, catalogue: NudgeCatalogue) -> np.ndarray:
    """(N, A) the catalogue's allowed arms for each decision's item id and item_category."""
    items = table.column("item_id").take(pa.array(rows)).to_pylist()
    cats = (table.column("item_category").take(pa.array(rows)).to_pylist()
            if "item_category" in table.column_names else [None] * len(rows))
    cache: dict[tuple[object, object], np.ndarray] = {}
    out = np.empty((len(rows), len(catalogue.ids)), dtype=bool)
    for i, key in enumerate(zip(items, cats)):
        if key not in cache:
            cache[key] = catalogue.mask(*key)
        out[i] = cache[key]
    return out


def bandit_folder(spec: str) -> Path | None:
    """The run folder a policy spec names (a folder with bandit.json, or the bandit.json file), else None."""
    p = Path(spec)
    if p.is_file() and p.name.endswith(".json"):
        return p.parent
    return p if (p / "bandit.json").is_file() else None


def load_policy_bandit(spec: str) -> Bandit | None:
    """The bandit a spec names, or None when the spec is not a run folder."""
    folder = bandit_folder(spec)
    if folder is None:
        return None
    name = Path(spec).stem if Path(spec).is_file() else "bandit"
    bandit = load_bandit(folder, name)
    if bandit.dim:
        raise ValueError(f"{spec}: a {bandit.config.kind} bandit needs {bandit.dim}-dimensional contexts, which an "
                         "event log does not carry; evaluate it from Python with LoggedBandit(context=...)")
    return bandit


def resolve_policy(spec: str, loaded: LoadedLog, bandit: Bandit | None = None) -> tuple[object, str]:
    """(policy for rl.ope, description) for a policy spec (see the module docstring)."""
    if bandit is not None:
        return bandit, f"{bandit.config.kind} bandit from {spec}"
    if spec == "uniform":
        return UniformPolicy(), "uniform over the available arms"
    if spec.startswith("arm:"):
        arm = spec[4:]
        if arm not in loaded.arms:
            raise ValueError(f"policy {spec!r}: unknown arm; arms: {', '.join(loaded.arms)}")
        return FixedArmPolicy(loaded.arms.index(arm)), f"always {arm}"
    if spec == "greedy" or spec.startswith("greedy:"):
        try:
            eps = float(spec.split(":", 1)[1]) if ":" in spec else 0.1
        except ValueError:
            raise ValueError(f"policy {spec!r}: epsilon must be a number") from None
        scores = CellMeanModel(by_position=False).fit_predict(loaded.log)
        return EpsilonGreedyPolicy(scores, eps), f"epsilon-greedy ({eps:g}) on each arm's mean reward in this log"
    raise ValueError(f"unknown policy {spec!r}: give uniform, arm:ID, greedy[:EPS] or a run folder with bandit.json")


def parse_rewards(text: str) -> dict[str, float]:
    """`view=0,cart=0.5,purchase=1` -> {event type: reward}; types left out keep the training reward."""
    out = dict(DEFAULT_REWARDS)
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            raise ValueError(f"--rewards entry {part!r} is not TYPE=NUMBER") from None
        if not sep or not key.strip():
            raise ValueError(f"--rewards entry {part!r} is not TYPE=NUMBER")
    return out


def estimates_table(estimates: list[Estimate]) -> str:
    """Markdown table: estimator, value, interval, ESS, max weight, clip, note."""
    if not estimates:
        return ""
    level = f"{estimates[0].level:.0%}"
    lines = [f"| estimator | value | {level} interval | ESS | max weight | clipped rows | note |", "|---" * 7 + "|"]
    for e in estimates:
        clip = f"{e.clipped:,} at {e.clip:g}" if e.clip is not None else "-"
        lines.append(f"| {e.estimator.upper()} | {e.value:.6g} | [{e.low:.6g}, {e.high:.6g}] | {e.ess:,.1f} | "
                     f"{e.max_weight:.4g} | {clip} | {e.note} |")
    return "\n".join(lines)
