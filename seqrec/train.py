"""Training and evaluation of a run: one TOML file -> frozen configs -> a run folder.

Run folder: config.json, checkpoints/{last,best}.pt (+ .json), tb/ (TensorBoard), metrics.json.
Every step's randomness comes from (seed, step), and checkpoints hold the model and optimiser states, so
a run killed at any moment and resumed from its last checkpoint ends exactly as an uninterrupted one.
"""

from __future__ import annotations

import ctypes
import json
import os
import time
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seqrec import distributed
from seqrec.config import ConfigError, from_dict, load_toml
from seqrec.datasets.prepare import load_transitions, read_manifest
from seqrec.encoders import OOV, EncoderConfig
from seqrec.metrics import RankingMetrics, target_ranks
from seqrec.retrieval_config import IndexConfig, RerankConfig, TwoTowerConfig, check_retrieval
from seqrec.rl.d3rlpy_config import D3RLPY_ALGORITHMS, D3rlpyConfig
from seqrec.rl.losses import HeadConfig
from seqrec.rl.qlearning import Learner


@dataclass(frozen=True)
class TrainConfig:
    """The training loop: batches, optimiser, schedule of validation and checkpoints, device."""

    batch_size: int = 256
    lr: float = 0.005
    max_steps: int = 2000
    eval_every: int = 500            # validation (and checkpoint) every N steps, and at the end
    log_every: int = 50              # TensorBoard scalars every N steps
    select_metric: str = "purchase/ndcg@10"  # EVENT/METRIC on the valid split that picks the best checkpoint
    seed: int = 0
    device: str = "auto"             # auto | cpu | cuda
    amp: bool = True                 # bfloat16 autocast on CUDA (ignored on CPU)
    eval_batch_size: int = 1024

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_steps", "eval_every", "log_every", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.select_metric.count("/") != 1:
            raise ValueError(f"select_metric must be EVENT/METRIC like purchase/ndcg@10, got {self.select_metric!r}")


ALGORITHMS = ("seqrec", *D3RLPY_ALGORITHMS)  # seqrec: our own heads ([head] variant); else d3rlpy's algorithm


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

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ConfigError(f"algorithm must be one of {', '.join(ALGORITHMS)}, got {self.algorithm!r}")
        check_retrieval(self.algorithm, self.head.variant, self.encoder.dim, self.retrieval, self.rerank)

    def to_dict(self) -> dict[str, Any]:
        d = {"data": self.data, "encoder": asdict(self.encoder), "head": asdict(self.head),
             "train": asdict(self.train)}
        if self.algorithm != "seqrec":  # runs of our own heads keep the config.json they always had
            d = {"algorithm": self.algorithm, **d, "d3rlpy": asdict(self.d3rlpy)}
        if self.retrieval.enabled:  # likewise runs without a retrieval model; lists as config.json holds them
            d.update(json.loads(json.dumps({"retrieval": asdict(self.retrieval), "index": asdict(self.index),
                                            "rerank": asdict(self.rerank)})))
        return d


SECTIONS = ("data", "encoder", "head", "train", "d3rlpy", "retrieval", "index", "rerank")
TOP_LEVEL_KEYS = ("algorithm",)


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
    unknown = sorted(set(raw) - set(SECTIONS) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise ConfigError(f"unknown section [{unknown[0]}]; valid sections: {', '.join(SECTIONS)}; "
                          f"valid top-level keys: {', '.join(TOP_LEVEL_KEYS)}")
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
    data_section = raw.get("data", {})
    bad = sorted(set(data_section) - {"dir"})
    if bad:
        raise ConfigError(f"unknown key data.{bad[0]}; valid keys in [data]: dir")
    data_dir = data or data_section.get("dir")
    if not data_dir:
        raise ConfigError("no prepared dataset: give --data DIR or data.dir in the config")
    manifest = read_manifest(data_dir)
    enc = {"num_items": manifest["catalogue_size"], "max_len": manifest["config"]["window"], **raw.get("encoder", {})}
    algorithm = raw.get("algorithm", "seqrec")
    _check_algorithm_sections(algorithm, raw)
    return RunConfig(data=str(data_dir), encoder=from_dict(EncoderConfig, enc, "encoder"),
                     head=from_dict(HeadConfig, raw.get("head", {}), "head"),
                     train=from_dict(TrainConfig, raw.get("train", {}), "train"), algorithm=algorithm,
                     d3rlpy=from_dict(D3rlpyConfig, raw.get("d3rlpy", {}), "d3rlpy"), **_retrieval_sections(raw))


def _retrieval_sections(d: dict[str, Any]) -> dict[str, Any]:
    """The [retrieval], [index] and [rerank] tables of a TOML dict or config.json as RunConfig fields."""
    return {"retrieval": from_dict(TwoTowerConfig, d.get("retrieval", {}), "retrieval"),
            "index": from_dict(IndexConfig, d.get("index", {}), "index"),
            "rerank": from_dict(RerankConfig, d.get("rerank", {}), "rerank")}


def _check_algorithm_sections(algorithm: Any, raw: dict[str, Any]) -> None:
    """The algorithm is a known name, and no table holds keys the algorithm would silently ignore."""
    if algorithm not in ALGORITHMS:
        raise ConfigError(f"algorithm must be one of {', '.join(ALGORITHMS)}, got {algorithm!r}")
    if algorithm == "seqrec" and raw.get("d3rlpy"):
        raise ConfigError('[d3rlpy] applies only with algorithm = "d3rlpy.*"; this run trains our own heads '
                          "(algorithm = \"seqrec\")")
    ignored = sorted(set(raw.get("head", {})) - {"gamma"})
    if algorithm != "seqrec" and ignored:
        raise ConfigError(f"with algorithm = {algorithm!r} only head.gamma applies (the discount); remove "
                          f"head.{ignored[0]} (d3rlpy settings go in [d3rlpy])")


def load_run_config(path: str | Path, overrides: list[str] = (), data: str | None = None) -> RunConfig:
    return run_config(load_toml(path), overrides, data)


def saved_config(run: Path) -> RunConfig:
    """The RunConfig a run was trained with, from its config.json."""
    try:
        d = json.loads((run / "config.json").read_text())
    except FileNotFoundError:
        raise ConfigError(f"{run}: not a run folder (no config.json)") from None
    return RunConfig(data=d["data"], encoder=from_dict(EncoderConfig, d["encoder"], "encoder"),
                     head=from_dict(HeadConfig, d["head"], "head"), train=from_dict(TrainConfig, d["train"], "train"),
                     algorithm=d.get("algorithm", "seqrec"),
                     d3rlpy=from_dict(D3rlpyConfig, d.get("d3rlpy", {}), "d3rlpy"), **_retrieval_sections(d))


def build_learner(cfg: RunConfig, device: torch.device) -> torch.nn.Module:
    """Our learner of the [head] variant, or the d3rlpy algorithm on our encoder behind the same interface
    (update(batch, step, seed), scores, state dicts); d3rlpy is imported only for d3rlpy runs."""
    if cfg.algorithm == "seqrec":
        return Learner(cfg.encoder, cfg.head, cfg.train.lr).to(device)
    from seqrec.rl.d3rlpy_bridge import D3rlpyLearner

    return D3rlpyLearner(cfg.algorithm, cfg.encoder, cfg.d3rlpy, batch_size=cfg.train.batch_size, lr=cfg.train.lr,
                         gamma=cfg.head.gamma, device=device)


def retain_heap() -> bool:
    """glibc: keep freed memory in the heap instead of returning it to the OS, so the large (B, I)
    temporaries of every step are not page-faulted in afresh (MALLOC_MMAP_MAX_=0 and a huge
    MALLOC_TRIM_THRESHOLD_). Called once per process by the CLI; returns False where unavailable.

    Measured by experiments/bench_train.py at 26,702 items: SASRec 3,584 -> 4,697 samples/s.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
    except (OSError, AttributeError):
        return False


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device = 'cuda' but no CUDA device is available")
    return torch.device(name)


class EpochSampler:
    """Batch indices that depend only on (seed, step): each epoch is a seeded permutation of the data."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        if n == 0:
            raise ConfigError("the training split has no transitions")
        self.n, self.b, self.seed = n, batch_size, seed
        self._cache: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._cache:
            self._cache = {k: v for k, v in self._cache.items() if k >= epoch - 1}
            self._cache[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._cache[epoch]

    def indices(self, step: int) -> np.ndarray:
        pos = step * self.b + np.arange(self.b)  # positions in the endless stream of epochs
        epochs = pos // self.n
        out = np.empty(self.b, np.int64)
        for e in np.unique(epochs):
            m = epochs == e
            out[m] = self._perm(int(e))[pos[m] % self.n]
        return np.sort(out)  # sorted: friendlier reads from the memory-mapped arrays


def to_batch(arrays: dict[str, np.ndarray], idx: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
    """Rows `idx` of the transition arrays as tensors on `device`."""
    return {
        "state": torch.from_numpy(np.asarray(arrays["state"][idx], np.int64)).to(device),
        "next_state": torch.from_numpy(np.asarray(arrays["next_state"][idx], np.int64)).to(device),
        "action": torch.from_numpy(np.asarray(arrays["action"][idx], np.int64)).to(device),
        "reward": torch.from_numpy(np.asarray(arrays["reward"][idx], np.float32)).to(device),
        "done": torch.from_numpy(np.asarray(arrays["done"][idx], np.bool_)).to(device),
    }


@torch.no_grad()
def evaluate_arrays(score_fn, arrays: dict[str, np.ndarray], event_names: tuple[str, ...], device: torch.device,
                    batch_size: int = 1024) -> dict[str, dict[str, float]]:
    """HR/NDCG@k per event type: every transition's action is a target ranked over the whole catalogue."""
    metrics = RankingMetrics(event_names)
    n = len(arrays["action"])
    for lo in range(0, n, batch_size):
        idx = np.arange(lo, min(lo + batch_size, n))
        state = torch.from_numpy(np.asarray(arrays["state"][idx], np.int64)).to(device)
        target = torch.from_numpy(np.asarray(arrays["action"][idx], np.int64)).to(device)
        ranks = target_ranks(score_fn(state).float(), target)
        metrics.add(ranks, torch.from_numpy(np.asarray(arrays["event"][idx], np.int64)))
    return metrics.result()


def _item_counts(train_actions: np.ndarray, num_items: int, device: torch.device) -> torch.Tensor:
    """(I,) float32 count of each item as a training target: what both baselines rank by."""
    counts = np.bincount(np.asarray(train_actions), minlength=num_items).astype(np.float32)
    return torch.from_numpy(counts).to(device)


def popularity_scorer(train_actions: np.ndarray, num_items: int, device: torch.device):
    """Scores every state with the item counts of the training split (the papers' popularity baseline)."""
    counts = _item_counts(train_actions, num_items, device)
    return lambda state: counts.expand(state.shape[0], -1)


def recent_scorer(train_actions: np.ndarray, num_items: int, device: torch.device):
    """Scores the window's own items first, newest first, then the rest by training popularity: the
    "show it again" baseline, strong where users return to items they just saw (Taobao's repeat purchases)."""
    counts = _item_counts(train_actions, num_items, device)
    popular = counts / (counts.max() + 1.0)  # (I,) in [0, 1): below any window item

    def score(state: torch.Tensor) -> torch.Tensor:  # (B, T) windows -> (B, I)
        b, t = state.shape
        out = popular.expand(b, -1).clone()  # (B, I)
        recency = (2.0 + torch.arange(t, device=device, dtype=torch.float32)).expand(b, -1)  # (B, T) newest largest
        out.scatter_reduce_(1, state.long(), recency, reduce="amax")  # a repeated item keeps its newest column
        out[:, : OOV + 1] = -1.0  # padding and the out-of-vocabulary id are never recommended
        return out

    return score


def _save(path: Path, payload: dict, info: dict) -> None:
    """Atomic checkpoint: state dicts (loadable with weights_only=True) and a JSON sidecar."""
    tmp = path.with_suffix(".pt.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    side = path.with_suffix(".json.tmp")
    side.write_text(json.dumps(info, indent=2))
    os.replace(side, path.with_suffix(".json"))


def _event_names(manifest: dict) -> tuple[str, ...]:
    return tuple(e["name"] for e in sorted(manifest["event_types"], key=lambda e: e["code"]))


def train(cfg: RunConfig, out: Path, resume: bool = False, progress: bool | None = None) -> dict:
    """Train (or resume) the run in `out`; returns the final validation metrics and the best checkpoint.

    Under torchrun (WORLD_SIZE > 1) every process runs this loop on its rows of each batch, with gradients
    averaged over the processes; train.batch_size is then the global batch (seqrec/distributed.py)."""
    rank = distributed.from_env()
    device = pick_device(cfg.train.device)
    if rank is None:
        return _train(cfg, out, resume, progress, device, None)
    distributed.check_supported(rank, cfg.algorithm, cfg.train.batch_size)
    device = distributed.rank_device(rank, device)
    with distributed.process_group(rank, device):
        return _train(cfg, out, resume, progress, device, rank)


def _open_run_folder(cfg: RunConfig, out: Path, resume: bool) -> None:
    """Check that `out` is new (or resumed with the same config) and write config.json into it."""
    ckpt_dir = out / "checkpoints"
    if not resume and (ckpt_dir / "last.pt").exists():
        raise ConfigError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    saved = out / "config.json"
    # compared as parsed, so a key added to seqrec since the run started (at its default) is no difference
    if resume and saved.exists() and saved_config(out).to_dict() != cfg.to_dict():
        raise ConfigError(f"{out}: --resume with a different config than the run's config.json")
    saved.write_text(json.dumps(cfg.to_dict(), indent=2))


def _last_checkpoint(ckpt_dir: Path, device: torch.device | str) -> dict | None:
    """checkpoints/last.pt (state dicts, step, best), or None before the first checkpoint."""
    if not (ckpt_dir / "last.pt").exists():
        return None
    return torch.load(ckpt_dir / "last.pt", map_location=device, weights_only=True)


def _train(cfg: RunConfig, out: Path, resume: bool, progress: bool | None, device: torch.device,
           rank: distributed.Rank | None) -> dict:
    """The loop of `train`; `rank` None for a single process (no collectives at all), else rank 0 writes."""
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    t_cfg = cfg.train
    main = rank is None or rank.main
    manifest = read_manifest(cfg.data)
    names = _event_names(manifest)
    ckpt_dir = out / "checkpoints"
    distributed.on_main(rank, _open_run_folder, cfg, out, resume)

    torch.manual_seed(t_cfg.seed)  # initialisation
    learner = build_learner(cfg, device)
    start, best, best_step = 0, None, None
    # with ranks, rank 0 reads the checkpoint (on CPU) and sends it to the others
    state = distributed.on_main(rank, _last_checkpoint, ckpt_dir, device if rank is None else "cpu") \
        if resume else None
    if state is not None:
        learner.load_state_dict(state["model"])
        learner.load_optim_state(state["optim"])
        start, best, best_step = int(state["step"]), state["best"], state["best_step"]
    if rank is not None:
        distributed.broadcast_module(learner)  # every rank starts from rank 0's weights
        distributed.sync_gradients(learner.opts, rank.world)  # gradients averaged before each optimiser step

    train_arrays = load_transitions(cfg.data, "train")
    valid_arrays = load_transitions(cfg.data, "valid")
    valid_part = distributed.split_rows(valid_arrays, rank)  # the rows this rank evaluates (all without ranks)
    sampler = EpochSampler(len(train_arrays["action"]), t_cfg.batch_size, t_cfg.seed)
    writer = SummaryWriter(str(out / "tb"), purge_step=start if start else None) if main else distributed.NullWriter()
    if start == 0:
        rows = [f"|{sec}.{k}|{v}|" for sec, d in cfg.to_dict().items() if isinstance(d, dict) for k, v in d.items()]
        rows.insert(0, f"|algorithm|{cfg.algorithm}|")
        writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(rows), 0)
    event, metric = t_cfg.select_metric.split("/")
    amp = t_cfg.amp and device.type == "cuda"
    last_metrics: dict = {}
    t_log, n_log = time.perf_counter(), 0
    bar = tqdm(range(start, t_cfg.max_steps), initial=start, total=t_cfg.max_steps, desc="train",
               disable=(None if progress is None else not progress) if main else True, leave=False)
    for step in bar:
        learner.train()
        batch = to_batch(train_arrays, distributed.shard_rows(sampler.indices(step), rank), device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            stats = learner.update(batch, step, t_cfg.seed)
        n_log += t_cfg.batch_size
        done = step + 1
        if done % t_cfg.log_every == 0:
            if rank is not None:
                stats = distributed.mean_stats(stats, device)  # over the ranks: the global batch's
            for k, v in stats.items():
                writer.add_scalar(k, v, done)
            writer.add_scalar("perf/samples_per_s", n_log / (time.perf_counter() - t_log), done)
            t_log, n_log = time.perf_counter(), 0
        if done % t_cfg.eval_every == 0 or done == t_cfg.max_steps:
            learner.eval()
            last_metrics = distributed.gather_metrics(
                rank, evaluate_arrays(learner.scores, valid_part, names, device, t_cfg.eval_batch_size), names)
            for ev, row in last_metrics.items():
                for m, v in row.items():
                    if m != "count":
                        writer.add_scalar(f"metrics/{ev}_{m}", v, done)
            value = _selected(last_metrics, event, metric)
            payload = {"model": learner.state_dict(), "optim": learner.optim_state(), "step": done}
            if value is not None and (best is None or value > best):
                best, best_step = value, done
                if main:
                    _save(ckpt_dir / "best.pt", {**payload, "best": best, "best_step": best_step},
                          {"step": done, "select_metric": t_cfg.select_metric, "value": value, "valid": last_metrics})
                    if cfg.algorithm != "seqrec":  # d3rlpy's own file too, for d3rlpy_bridge.load_learnable
                        learner.save_d3rlpy(str(ckpt_dir / "best.d3.tmp"))
                        os.replace(ckpt_dir / "best.d3.tmp", ckpt_dir / "best.d3")
            if main:
                _save(ckpt_dir / "last.pt", {**payload, "best": best, "best_step": best_step},
                      {"step": done, "best": best, "best_step": best_step, "valid": last_metrics})
            bar.set_postfix({t_cfg.select_metric: value})
            t_log, n_log = time.perf_counter(), 0  # evaluation time is not training speed
    writer.close()
    result = {"step": t_cfg.max_steps, "valid": last_metrics, "best": best, "best_step": best_step}
    if cfg.retrieval.enabled and main:  # the two-tower candidate generator, into out/retrieval (rank 0 alone)
        from seqrec.two_tower import train_retrieval

        result["retrieval"] = train_retrieval(cfg, out, resume, progress)
    if main:  # the nudge bandit, fitted offline on the training split's logged nudges (seqrec/run_bandit.py)
        from seqrec.run_bandit import fit_run_bandit

        result["bandit"] = fit_run_bandit(cfg.data, out, t_cfg.seed)
    return result


def _selected(metrics: dict, event: str, metric: str) -> float | None:
    """The selection metric; falls back to view events when the data has no events of the named type."""
    row = metrics.get(event) or metrics.get("view")
    return None if row is None else row.get(metric)


def evaluate(run: Path, split: str = "test", protocol: str = "sessions", checkpoint: str = "best",
             pipeline: bool | None = None, index: IndexConfig | None = None) -> dict:
    """Metrics of the run's checkpoint on `split`, with the popularity and recent-items baselines; merged into
    metrics.json.

    With a retrieval model (RUN/retrieval; `pipeline` None = when there is one, True = required, False = skip)
    also "pipeline" (retrieve + re-rank, same protocol), "recall" (candidate recall@K) and "pipeline_info"
    (blend, index, states/s against full ranking), each keyed by split; `index` overrides the run's [index]."""
    cfg = saved_config(run)
    manifest = read_manifest(cfg.data)
    prepared_as = manifest["config"]["split"]
    if (protocol == "loo") != (prepared_as == "loo"):
        raise ConfigError(f"--protocol {protocol} needs data prepared with --split "
                          f"{'loo' if protocol == 'loo' else 'random or temporal'}; {cfg.data} has {prepared_as!r}")
    device = pick_device(cfg.train.device)
    path = run / "checkpoints" / f"{checkpoint}.pt"
    if not path.exists():
        path = run / "checkpoints" / "last.pt"
    if not path.exists():
        raise ConfigError(f"{run}: no checkpoint; train the run first")
    learner = build_learner(cfg, device)
    learner.load_state_dict(torch.load(path, map_location=device, weights_only=True)["model"])
    learner.eval()
    names = _event_names(manifest)
    arrays = load_transitions(cfg.data, split)
    model = evaluate_arrays(learner.scores, arrays, names, device, cfg.train.eval_batch_size)
    train_actions = load_transitions(cfg.data, "train")["action"]
    baselines = {name: evaluate_arrays(make(train_actions, cfg.encoder.num_items, device), arrays, names, device,
                                       cfg.train.eval_batch_size)
                 for name, make in (("popularity", popularity_scorer), ("recent", recent_scorer))}
    has_tower = (run / "retrieval" / "checkpoints" / "last.pt").exists()
    if pipeline and not has_tower:
        raise ConfigError(f"{run}: no retrieval model for --pipeline (train with [retrieval] enabled = true)")
    extra = {}
    if pipeline is not False and has_tower:
        from seqrec.rerank import pipeline_report

        extra = pipeline_report(run, split, learner, cfg, index)
    out_path = run / "metrics.json"
    metrics = json.loads(out_path.read_text()) if out_path.exists() else {}
    metrics[split] = model
    for name, values in baselines.items():
        metrics.setdefault(name, {})[split] = values
    metrics.setdefault("checkpoint", {})[split] = {"path": str(path.relative_to(run)), "protocol": protocol}
    for key, value in extra.items():
        metrics.setdefault(key, {})[split] = value
    out_path.write_text(json.dumps(metrics, indent=2))
    return metrics
