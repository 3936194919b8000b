"""The run file: one TOML that may carry every table of a run, from [prepare] to [score] (docs/config.md).

Each command validates the whole file (an unknown table or key anywhere is one ConfigError naming it and the
valid ones) and reads its own tables: `seqrec prepare` [prepare]; `seqrec train` [data], [encoder], [head],
[train], [d3rlpy], [retrieval], [index], [rerank], [bandit] (and records [prepare] and [score]); `seqrec score`
[score]. Torch-free: the model tables' dataclasses (whose modules import torch) are imported only when a file
carries one of them, so `seqrec prepare` on a file of [prepare] alone never loads torch.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any

from seqrec.core.config import ConfigError, from_dict
from seqrec.datasets import readers
from seqrec.datasets.adapters import SOURCES
from seqrec.datasets.prepare import PrepareConfig
from seqrec.rl.bandits.policies import CONTEXTUAL_KINDS, KINDS, BanditConfig
from seqrec.rl.d3rlpy_bridge.config import D3RLPY_ALGORITHMS
from seqrec.rl.offers.config import OfferConfig
from seqrec.runs.score_config import ScoreConfig

ALGORITHMS = ("seqrec", *D3RLPY_ALGORITHMS)  # seqrec: our own heads ([head] variant); else d3rlpy's algorithm
SECTIONS = ("data", "prepare", "encoder", "head", "train", "d3rlpy", "retrieval", "index", "rerank", "bandit",
            "score", "offers")
MODEL_SECTIONS = ("encoder", "head", "train", "d3rlpy", "retrieval", "index", "rerank")
TOP_LEVEL_KEYS = ("algorithm",)
READER_KEYS = ("map", "sep", "header", "format", "time_unit", "event_type", "event_map")  # [prepare]'s reader options
FORMATS = ("auto", *readers.FORMATS)  # the input formats, listed once in datasets/readers.py
TIME_UNITS = readers.TIME_UNITS
BANDIT_KINDS_OFFLINE = tuple(k for k in KINDS if k not in CONTEXTUAL_KINDS)  # a run's bandit has no contexts
# placeholders for the keys the prepared data decides, so [encoder] can be checked before any data exists
ENCODER_PLACEHOLDERS = {"num_items": 11, "max_len": 10}


def check_sections(raw: dict[str, Any]) -> None:
    """Every top-level name is a known table (a TOML table) or top-level key."""
    unknown = sorted(set(raw) - set(SECTIONS) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise ConfigError(f"unknown section [{unknown[0]}]; valid sections: {', '.join(SECTIONS)}; "
                          f"valid top-level keys: {', '.join(TOP_LEVEL_KEYS)}")
    for name in SECTIONS:
        if name in raw and not isinstance(raw[name], dict):
            raise ConfigError(f"[{name}] must be a table, got {raw[name]!r}")


def check_run_file(raw: dict[str, Any], models: bool = True) -> None:
    """Validate a whole run file: its tables, every key in them, every value. `models` False leaves the model
    tables to the caller (`run_config` builds them against the prepared data)."""
    check_sections(raw)
    data = raw.get("data", {})
    bad = sorted(set(data) - {"dir"})
    if bad:
        raise ConfigError(f"unknown key data.{bad[0]}; valid keys in [data]: dir")
    if "dir" in data and not isinstance(data["dir"], str):
        raise ConfigError(f"data.dir must be a folder path, got {data['dir']!r}")
    check_algorithm(raw.get("algorithm", "seqrec"))
    prepare_table(raw.get("prepare", {}))
    run_bandit_config(raw.get("bandit", {}))
    score_config(raw.get("score", {}))
    offers_table(raw.get("offers"))
    if models:
        check_model_tables(raw)


def check_algorithm(algorithm: Any) -> None:
    if algorithm not in ALGORITHMS:
        raise ConfigError(f"algorithm must be one of {', '.join(ALGORITHMS)}, got {algorithm!r}")


def check_model_tables(raw: dict[str, Any], where: str = "") -> None:
    """Check the model tables present in `raw` key by key against their dataclasses (the prepared data's keys
    filled by placeholders); `where` prefixes the table names in errors (the abtest's old "model.")."""
    present = [name for name in MODEL_SECTIONS if name in raw]
    classes = model_classes() if present else {}  # no model table: no torch
    for name in present:
        given = raw[name]
        if not isinstance(given, dict):
            raise ConfigError(f"[{where}{name}] must be a table, got {given!r}")
        base = ENCODER_PLACEHOLDERS if name == "encoder" else {}
        if name == "encoder":
            given = encoder_keys(given, where)
        from_dict(classes[name], {**base, **given}, f"{where}{name}")


def check_events(value: Any, where: str = "") -> None:
    """[encoder] events is true, false or "auto" (a ConfigError naming the key otherwise)."""
    if not (isinstance(value, bool) or value == "auto"):
        raise ConfigError(f'{where}encoder.events must be true, false or "auto", got {value!r}')


def encoder_keys(given: dict[str, Any], where: str = "") -> dict[str, Any]:
    """[encoder] as EncoderConfig takes it before the prepared data is known: `events` checked and turned into
    `event_types`, `categories` = true / "auto" left out (seqrec train resolves both against the data)."""
    given = dict(given)
    if "events" in given:
        check_events(given.pop("events"), where)
        if "event_types" in given:
            raise ConfigError(f"give {where}encoder.events (true, false or \"auto\") or event_types (a count), "
                              "not both")
    if given.get("categories") is True or given.get("categories") == "auto":
        given.pop("categories")
    return given


def model_classes() -> dict[str, type]:
    """The dataclass of each model table (imported here: the encoder's and head's modules import torch)."""
    from seqrec.models.encoders import EncoderConfig
    from seqrec.retrieval.config import IndexConfig, RerankConfig, TwoTowerConfig
    from seqrec.rl.d3rlpy_bridge.config import D3rlpyConfig
    from seqrec.rl.qlearning.losses import HeadConfig
    from seqrec.training.config import TrainConfig

    return {"encoder": EncoderConfig, "head": HeadConfig, "train": TrainConfig, "d3rlpy": D3rlpyConfig,
            "retrieval": TwoTowerConfig, "index": IndexConfig, "rerank": RerankConfig}


def prepare_table(table: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a [prepare] table into PrepareConfig keys and reader options, each checked; the PrepareConfig part
    is validated as given (the command adds its flags and the default source before building it)."""
    fields_ = {f.name for f in fields(PrepareConfig)}
    unknown = sorted(set(table) - fields_ - set(READER_KEYS))
    if unknown:
        raise ConfigError(f"unknown key prepare.{unknown[0]}; valid keys in [prepare]: "
                          f"{', '.join(sorted(fields_ | set(READER_KEYS)))}")
    reader = {k: table[k] for k in READER_KEYS if k in table}
    config = {k: v for k, v in table.items() if k not in READER_KEYS}
    for key in ("map", "event_map"):
        if key in reader and not isinstance(reader[key], (str, dict)):
            raise ConfigError(f"prepare.{key} must be text (a=b,c=d) or a table, got {reader[key]!r}")
    for key in ("sep", "event_type"):
        if key in reader and not isinstance(reader[key], str):
            raise ConfigError(f"prepare.{key} must be text, got {reader[key]!r}")
    if "header" in reader and not isinstance(reader["header"], bool):
        raise ConfigError(f"prepare.header must be true or false, got {reader['header']!r}")
    for key, choices in (("format", FORMATS), ("time_unit", TIME_UNITS)):
        if key in reader and reader[key] not in choices:
            raise ConfigError(f"prepare.{key} must be one of {', '.join(choices)}, got {reader[key]!r}")
    sources = (*SOURCES, "synthetic")
    if "source" in config and config["source"] not in sources:
        raise ConfigError(f"prepare.source {config['source']!r} is not one of {', '.join(sources)}")
    from_dict(PrepareConfig, config, "prepare")
    return config, reader


def bandit_table(table: dict[str, Any], where: str = "bandit") -> BanditConfig:
    """A [bandit] table -> BanditConfig; its seed is never in the table (it comes from the run's seeds)."""
    if "seed" in table:
        raise ConfigError(f"{where}.seed comes from the run's seed (train.seed when fitted, score's seed for a "
                          "fresh bandit); leave it out")
    valid = sorted(f.name for f in fields(BanditConfig) if f.name != "seed")
    unknown = sorted(set(table) - set(valid))
    if unknown:
        raise ConfigError(f"unknown key {where}.{unknown[0]}; valid keys in [{where}]: {', '.join(valid)}")
    return from_dict(BanditConfig, table, where)


def run_bandit_config(table: dict[str, Any]) -> BanditConfig:
    """A run's [bandit]: fitted offline on logged nudges without contexts, so every kind but LinUCB."""
    cfg = bandit_table(table)
    if cfg.kind not in BANDIT_KINDS_OFFLINE:
        raise ConfigError(f"bandit.kind {cfg.kind!r}: a run's bandit is fitted offline without contexts; use one "
                          f"of {', '.join(BANDIT_KINDS_OFFLINE)}")
    return cfg


def bandit_dict(cfg: BanditConfig) -> dict[str, Any]:
    """A BanditConfig as its [bandit] table (no seed), JSON-ready."""
    return {k: v for k, v in asdict(cfg).items() if k != "seed"}


def score_config(table: dict[str, Any], base: ScoreConfig | None = None) -> ScoreConfig:
    """A [score] table over `base` (default: ScoreConfig's defaults) -> ScoreConfig."""
    merged = {**(asdict(base) if base is not None else {}), **table}
    return from_dict(ScoreConfig, merged, "score")



def offers_table(table: dict[str, Any] | None) -> OfferConfig | None:
    """A run's [offers] table -> the offer learner's config (None: no table, no offer learner); its seed comes
    from the run's [train] seed."""
    if table is None:
        return None
    if "seed" in table:
        raise ConfigError("offers.seed comes from the run's train.seed; leave it out")
    return from_dict(OfferConfig, dict(table), "offers")
