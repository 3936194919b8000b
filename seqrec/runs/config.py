"""A run's config: one TOML file -> frozen dataclasses -> config.json in the run folder, and back.

The run file may carry every table of a run (seqrec/runs/file_config.py checks the whole file); RunConfig keeps
the training tables as dataclasses and records [prepare], [bandit] and [score] too, each only when the file set
it, so the config.json of a run without them is what it always was. config.json stores the prepared data's path
relative to the run folder when it was given relative (so a run resolves from any working directory, and moves
together with its data), as given when absolute; older runs, which stored a relative path relative to the working
directory of `seqrec train`, still read as they did."""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from seqrec.core.config import ConfigError, from_dict, load_toml
from seqrec.datasets.features import FeatureError, item_category_codes
from seqrec.datasets.manifest import (
    data_path,
    event_names,
    has_state_events,
    no_state_events,
    read_manifest,
    stored_data_path,
)
from seqrec.models.encoders import EncoderConfig
from seqrec.retrieval.config import IndexConfig, RerankConfig, TwoTowerConfig, check_retrieval
from seqrec.rl.bandits.policies import BanditConfig
from seqrec.rl.d3rlpy_bridge.config import D3rlpyConfig
from seqrec.rl.offers.config import OfferConfig
from seqrec.rl.qlearning.losses import HeadConfig
from seqrec.rl.qlearning.recipe import RECIPE_KEYS
from seqrec.runs.file_config import (
    ALGORITHMS,
    SECTIONS,
    TOP_LEVEL_KEYS,
    bandit_dict,
    check_events,
    check_run_file,
    check_sections,
    offers_table,
    prepare_table,
    run_bandit_config,
    score_config,
)
from seqrec.runs.score_config import ScoreConfig
from seqrec.training.config import TrainConfig

__all__ = ["ALGORITHMS", "SECTIONS", "TOP_LEVEL_KEYS", "RunConfig", "load_run_config", "parse_override",
           "run_config", "same_run", "saved_config", "saved_dict"]


@dataclass(frozen=True)
class RunConfig:
    """Everything a run is: the prepared data, the encoder, the head (variant) and the loop; or, with
    `algorithm = "d3rlpy.*"`, a d3rlpy algorithm on the same encoder (only head.gamma applies, plus [d3rlpy])."""

    data: str
    encoder: EncoderConfig
    head: HeadConfig = field(default_factory=HeadConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    algorithm: str = "seqrec"
    d3rlpy: D3rlpyConfig = field(default_factory=D3rlpyConfig)
    retrieval: TwoTowerConfig = field(default_factory=TwoTowerConfig)  # two-tower candidates (seqrec/two_tower.py)
    index: IndexConfig = field(default_factory=IndexConfig)
    rerank: RerankConfig = field(default_factory=RerankConfig)
    bandit: BanditConfig = field(default_factory=BanditConfig)  # the nudge bandit (fit_run_bandit; scoring)
    score: ScoreConfig = field(default_factory=ScoreConfig)     # `seqrec score`'s defaults for this run
    prepare: dict[str, Any] = field(default_factory=dict)       # the file's [prepare] table as given (a record)
    offers: OfferConfig | None = None   # the offer-level Q learner (docs/offers.md), trained when the log has offers

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ConfigError(f"algorithm must be one of {', '.join(ALGORITHMS)}, got {self.algorithm!r}")
        check_retrieval(self.algorithm, self.head.variant, self.encoder.dim, self.retrieval, self.rerank)
        if self.encoder.event_types and (self.algorithm != "seqrec" or self.retrieval.enabled):
            raise ConfigError('[encoder] events applies to algorithm = "seqrec" (our heads) without [retrieval] (the '
                              "two-tower model and d3rlpy's algorithms read item windows only); turn one of them off")
        run_bandit_config(bandit_dict(self.bandit))  # a kind fittable offline, seed 0 (the run's seeds apply)
        if self.bandit.seed:
            raise ConfigError("bandit.seed comes from the run's seed; leave it out")
        prepare_table(self.prepare)

    def to_dict(self) -> dict[str, Any]:
        new_encoder_keys = ("categories", "event_types")
        d = {"data": self.data, "encoder": _set_keys(self.encoder, EncoderConfig(num_items=3), new_encoder_keys),
             "head": _set_keys(self.head, HeadConfig(), RECIPE_KEYS),
             "train": _set_keys(self.train, TrainConfig(), ("patience",))}
        if self.algorithm != "seqrec":  # runs of our own heads keep the config.json they always had
            d = {"algorithm": self.algorithm, **d, "d3rlpy": asdict(self.d3rlpy)}
        if self.retrieval.enabled:  # likewise runs without a retrieval model; lists as config.json holds them
            d.update(json.loads(json.dumps({"retrieval": asdict(self.retrieval), "index": asdict(self.index),
                                            "rerank": asdict(self.rerank)})))
        # the new tables, each only when set (so a run without them writes the config.json it always did)
        if self.prepare:
            d["prepare"] = json.loads(json.dumps(self.prepare))
        if self.bandit != BanditConfig():
            d["bandit"] = bandit_dict(self.bandit)
        if self.score != ScoreConfig():
            d["score"] = asdict(self.score)
        if self.offers is not None:
            d["offers"] = {k: v for k, v in self.offers.to_dict().items() if k != "seed"}
        return d


def _set_keys(cfg: Any, default: Any, new: tuple[str, ...]) -> dict[str, Any]:
    """asdict(cfg) without the keys `new` that are at their defaults: keys added to a table later appear in
    config.json only when a run sets them, so every older run's config.json (and config_hash) stays as it was."""
    return {k: v for k, v in asdict(cfg).items() if k not in new or v != getattr(default, k)}


def parse_override(text: str) -> tuple[str, str, Any]:
    """`section.key=value` (value as a TOML literal, else a string) -> (section, key, value); a top-level
    key (`algorithm=d3rlpy.dqn`) comes back with section ""."""
    path = text.split("=", 1)[0].strip()
    if "=" not in text or ("." not in path and path not in TOP_LEVEL_KEYS):
        raise ConfigError(f"--set {text!r}: expected section.key=value (sections: {', '.join(SECTIONS)}) "
                          f"or {'|'.join(TOP_LEVEL_KEYS)}=value")
    raw = text.split("=", 1)[1]
    section, key = path.split(".", 1) if "." in path else ("", path)
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return section, key, value


def run_config(raw: dict[str, Any], overrides: list[str] = (), data: str | None = None) -> RunConfig:
    """Compose the RunConfig from a TOML dict, --set overrides and --data; num_items and max_len default
    to the prepared dataset's catalogue size and window."""
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    check_sections(raw)
    for text in overrides:
        section, key, value = parse_override(text)
        if section == "":
            raw[key] = value
            continue
        if section not in SECTIONS:
            raise ConfigError(f"--set {text!r}: unknown section {section!r}; valid: {', '.join(SECTIONS)}")
        if section == "data":
            raw["data"] = {**raw.get("data", {}), key: value}
        else:
            raw.setdefault(section, {})[key] = value
    check_run_file(raw, models=False)  # the model tables are checked below, against the prepared data
    data_dir = data or raw.get("data", {}).get("dir")
    if not data_dir:
        raise ConfigError("no prepared dataset: give --data DIR or data.dir in the config")
    manifest = read_manifest(data_dir)
    enc = {"num_items": manifest["catalogue_size"], "max_len": manifest["config"]["window"], **raw.get("encoder", {})}
    algorithm = raw.get("algorithm", "seqrec")
    _check_algorithm_sections(algorithm, raw)
    head, asked = dict(raw.get("head", {})), enc.get("categories", 0)
    enc["categories"] = _categories(asked, data_dir, enc["num_items"], algorithm)
    if "events" in enc:
        if "event_types" in enc:
            raise ConfigError('give [encoder] events (true, false or "auto") or event_types (a count), not both')
        retrieval = raw.get("retrieval", {}).get("enabled", False) is True
        enc["event_types"] = _events(enc.pop("events"), data_dir, manifest, algorithm, retrieval)
    if not enc["categories"] and head.get("copy_category") is True and asked == "auto":
        head["copy_category"] = False  # "auto" on a log without categories: the mixture without that component
        head["copy_calibrate"] = False  # and without its gates' calibration
    return RunConfig(data=str(data_dir), encoder=from_dict(EncoderConfig, enc, "encoder"),
                     head=from_dict(HeadConfig, head, "head"),
                     train=from_dict(TrainConfig, raw.get("train", {}), "train"), algorithm=algorithm,
                     d3rlpy=from_dict(D3rlpyConfig, raw.get("d3rlpy", {}), "d3rlpy"), **_later_sections(raw))


def _categories(value: Any, data_dir: str, num_items: int, algorithm: str) -> Any:
    """[encoder] categories: true (the prepared log's category count; an error without categories), "auto" (the
    count, or 0 for a log without them), false (0), or a count as config.json holds it."""
    if value is False:
        return 0
    if value is not True and value != "auto":
        return value  # a count (or a wrong value, which EncoderConfig names)
    if algorithm != "seqrec":
        raise ConfigError('[encoder] categories applies to algorithm = "seqrec" (our heads) only')
    try:
        return int(item_category_codes(data_dir, num_items).max()) + 1
    except FeatureError as e:
        if value == "auto":
            return 0
        raise ConfigError(f"[encoder] categories = true: {e}") from None


def _events(value: Any, data_dir: str, manifest: dict, algorithm: str, retrieval: bool) -> int:
    """[encoder] events: true (the prepared log's event types + 1; an error on data without event windows), "auto"
    (that count when the log has more than one event type and event windows and the run can pass them: our heads
    without [retrieval]; else 0), false (0)."""
    check_events(value)
    if value is False:
        return 0
    count = len(event_names(manifest)) + 1  # codes + 1, index 0 = padding
    if value == "auto":
        seen = sum(1 for n in manifest.get("events_by_type", {}).values() if n)
        usable = algorithm == "seqrec" and not retrieval
        return count if usable and seen > 1 and has_state_events(data_dir) else 0
    if algorithm != "seqrec":  # RunConfig refuses it, with retrieval too: no data to read for the count
        return count
    if not has_state_events(data_dir):
        raise ConfigError(f"[encoder] events = true: {no_state_events(data_dir)}")
    return count


def _later_sections(d: dict[str, Any]) -> dict[str, Any]:
    """The [retrieval], [index], [rerank], [bandit], [score], [prepare] and [offers] tables of a TOML dict or
    config.json as RunConfig fields (absent: the defaults)."""
    return {"retrieval": from_dict(TwoTowerConfig, d.get("retrieval", {}), "retrieval"),
            "index": from_dict(IndexConfig, d.get("index", {}), "index"),
            "rerank": from_dict(RerankConfig, d.get("rerank", {}), "rerank"),
            "bandit": run_bandit_config(d.get("bandit", {})), "score": score_config(d.get("score", {})),
            "prepare": dict(d.get("prepare", {})), "offers": offers_table(d.get("offers"))}


def _check_algorithm_sections(algorithm: Any, raw: dict[str, Any]) -> None:
    """The algorithm is a known name, and no table holds keys the algorithm would silently ignore."""
    if algorithm == "seqrec" and raw.get("d3rlpy"):
        raise ConfigError('[d3rlpy] applies only with algorithm = "d3rlpy.*"; this run trains our own heads '
                          "(algorithm = \"seqrec\")")
    ignored = sorted(set(raw.get("head", {})) - {"gamma"})
    if algorithm != "seqrec" and ignored:
        raise ConfigError(f"with algorithm = {algorithm!r} only head.gamma applies (the discount); remove "
                          f"head.{ignored[0]} (d3rlpy settings go in [d3rlpy])")


def load_run_config(path: str | Path, overrides: list[str] = (), data: str | None = None) -> RunConfig:
    """The RunConfig of a run file, with --set overrides and --data (see run_config)."""
    return run_config(load_toml(path), overrides, data)


def saved_dict(cfg: RunConfig, run: Path) -> dict[str, Any]:
    """What config.json of run folder `run` holds for `cfg`: its dict, with a relative data path made relative to the
    run folder (so that it resolves from any working directory and survives moving the run together with its data);
    an absolute one as given (the run may then move alone). A resumed run keeps its record when it names the same
    folder in today's form; an older run's record (relative to the working directory) is rewritten."""
    stored = stored_data_path(cfg.data, run)
    try:
        old = json.loads((Path(run) / "config.json").read_text())["data"]
    except (OSError, ValueError, KeyError):
        old = None
    if isinstance(old, str) and (Path(old).is_absolute() or (Path(run) / old / "manifest.json").exists()) \
            and Path(data_path(run, old)).resolve() == Path(cfg.data).resolve():
        stored = old
    return {**cfg.to_dict(), "data": stored}


def same_run(a: RunConfig, b: RunConfig) -> bool:
    """Whether two run configs are the same run (what --resume checks): equal dicts, the data paths compared as the
    folders they name, whichever working directory or run folder they were written relative to."""
    return ({**a.to_dict(), "data": str(Path(a.data).resolve())}
            == {**b.to_dict(), "data": str(Path(b.data).resolve())})


def saved_config(run: Path) -> RunConfig:
    """The RunConfig a run was trained with, from its config.json (its data path usable from here: data_path)."""
    try:
        d = json.loads((run / "config.json").read_text())
    except FileNotFoundError:
        raise ConfigError(f"{run}: not a run folder (no config.json)") from None
    return RunConfig(data=data_path(run, d["data"]), encoder=from_dict(EncoderConfig, d["encoder"], "encoder"),
                     head=from_dict(HeadConfig, d["head"], "head"), train=from_dict(TrainConfig, d["train"], "train"),
                     algorithm=d.get("algorithm", "seqrec"),
                     d3rlpy=from_dict(D3rlpyConfig, d.get("d3rlpy", {}), "d3rlpy"), **_later_sections(d))
