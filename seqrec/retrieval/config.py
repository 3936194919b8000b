"""Configs of candidate generation and re-ranking: the `[retrieval]`, `[index]` and `[rerank]` tables of a run.

Kept apart from the models (seqrec/two_tower.py, seqrec/index.py, seqrec/rerank.py) and free of torch, so
that seqrec/train.py can compose them into its RunConfig without importing the models (which import the
training helpers back).
"""

from __future__ import annotations

from dataclasses import dataclass

from seqrec.core.config import check_int

INITS = ("learner", "random")
FAISS_TYPES = ("flat", "hnsw", "ivf")
INDEX_KINDS = ("exact", "faiss")
EXACT_BACKENDS = ("auto", "faiss", "torch")
NORMALIZE = ("zscore", "raw")
RECALL_KS: tuple[int, ...] = (50, 100, 200)  # candidate recall@K reported on the held-out split



def _check_names(name: str, value: object) -> None:
    if not isinstance(value, tuple) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{name} must be a list of column names, got {value!r}")


@dataclass(frozen=True)
class TwoTowerConfig:
    """The two-tower retrieval model and its training (`[retrieval]`); `seqrec train` trains it after the
    learner when `enabled`, into RUN/retrieval/.

    User tower: its own sequence encoder of the run's `[encoder]` architecture (width `dim`), plus the user
    feature columns; item tower: an item id embedding plus the item feature columns. Loss: in-batch sampled
    softmax over the batch's positives (and `random_negatives` uniform items), logits divided by
    `temperature`, with the log-Q correction when `logq_correction` (see seqrec/two_tower.py).
    """

    enabled: bool = False
    init: str = "learner"           # learner: start from the trained learner's encoder and item table; random
    dim: int = 0                    # tower width D; 0 = the [encoder] width (init = "learner" needs that width)
    temperature: float = 1.0        # logits = user . item / temperature
    logq_correction: bool = True    # subtract log(expected count of the item among a batch's candidates)
    random_negatives: int = 0       # uniform real items per batch, shared by its rows (0 = in-batch only)
    lr: float = 0.001
    max_steps: int = 1000
    batch_size: int = 256
    eval_every: int = 250           # recall@K on the valid split (and checkpoints) every N steps, and at the end
    log_every: int = 50             # TensorBoard scalars every N steps
    seed: int = 0
    user_categorical: tuple[str, ...] = ()   # event-table columns: per session, the value of its first event
    user_numeric: tuple[str, ...] = ()
    item_categorical: tuple[str, ...] = ()   # event-table columns: per item, its most frequent value
    item_numeric: tuple[str, ...] = ()       # per item, the mean over its events (e.g. price)

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool) or not isinstance(self.logq_correction, bool):
            raise ValueError("enabled and logq_correction must be true or false")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        check_int("dim", self.dim, 0)
        check_int("random_negatives", self.random_negatives, 0)
        for name in ("max_steps", "batch_size", "eval_every", "log_every"):
            check_int(name, getattr(self, name), 1)
        check_int("seed", self.seed, 0)
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        for name in ("user_categorical", "user_numeric", "item_categorical", "item_numeric"):
            _check_names(name, getattr(self, name))
        cols = [*self.user_categorical, *self.user_numeric, *self.item_categorical, *self.item_numeric]
        user = [*self.user_categorical, *self.user_numeric]
        item = [*self.item_categorical, *self.item_numeric]
        if len(set(user)) < len(user) or len(set(item)) < len(item):
            raise ValueError(f"a feature column is listed twice in one tower: {cols}")


@dataclass(frozen=True)
class IndexConfig:
    """Which index serves the item tower's table (`[index]`): exact or faiss (approximate); seqrec/index.py."""

    kind: str = "exact"             # exact | faiss (the optional extra seqrec[ann])
    faiss_type: str = "ivf"         # flat (exact) | hnsw | ivf
    hnsw_m: int = 32                # HNSW graph degree
    ef_search: int = 256            # HNSW: candidates explored per query (recall/speed knob; >= k)
    nlist: int = 0                  # IVF: number of clusters; 0 = 1.5 sqrt(items)
    nprobe: int = 32                # IVF: clusters searched per query (recall/speed knob; nlist = exact)
    chunk_mib: int = 256            # exact, torch back-end: size of the (chunk, I) float32 score buffer (memory)
    exact_backend: str = "auto"     # exact: auto (faiss's flat search on CPU if installed, else torch) | faiss | torch

    def __post_init__(self) -> None:
        if self.kind not in INDEX_KINDS:
            raise ValueError(f"kind must be one of {', '.join(INDEX_KINDS)}, got {self.kind!r}")
        if self.faiss_type not in FAISS_TYPES:
            raise ValueError(f"faiss_type must be one of {', '.join(FAISS_TYPES)}, got {self.faiss_type!r}")
        if self.exact_backend not in EXACT_BACKENDS:
            raise ValueError(f"exact_backend must be one of {', '.join(EXACT_BACKENDS)}, got {self.exact_backend!r}")
        for name in ("hnsw_m", "ef_search", "nprobe", "chunk_mib"):
            check_int(name, getattr(self, name), 1)
        check_int("nlist", self.nlist, 0)


@dataclass(frozen=True)
class RerankConfig:
    """How the K retrieved candidates are re-ranked (`[rerank]`):
    final = w_tt * two_tower + w_sup * supervised + w_q * Q, each score z-scored over the row's candidates
    (`normalize = "zscore"`: the three live on different scales, so weights are then relative importances)
    or used as it is (`"raw"`)."""

    candidates: int = 200           # K, candidates retrieved per state
    w_tt: float = 0.0               # two-tower score (user . item / temperature)
    w_sup: float = 1.0              # the learner's supervised score (what `seqrec evaluate` ranks by)
    w_q: float = 0.0                # the learner's Q value (needs a Q head: variants other than ce)
    normalize: str = "zscore"       # zscore | raw

    def __post_init__(self) -> None:
        check_int("candidates", self.candidates, 1)
        if self.normalize not in NORMALIZE:
            raise ValueError(f"normalize must be one of {', '.join(NORMALIZE)}, got {self.normalize!r}")
        for name in ("w_tt", "w_sup", "w_q"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"{name} must be a number, got {v!r}")


def check_retrieval(algorithm: str, variant: str, encoder_dim: int, retrieval: TwoTowerConfig,
                    rerank: RerankConfig) -> None:
    """Reject, before any training, the combinations that could only fail after it (ConfigError)."""
    from seqrec.core.config import ConfigError

    if not retrieval.enabled:
        return
    if retrieval.init == "learner" and algorithm != "seqrec":
        raise ConfigError(f'retrieval.init = "learner" needs our own learner (algorithm = "seqrec"); with '
                          f'{algorithm!r} use retrieval.init = "random"')
    if retrieval.init == "learner" and retrieval.dim not in (0, encoder_dim):
        raise ConfigError(f'retrieval.init = "learner" starts from the learner\'s encoder of width {encoder_dim}; '
                          f"retrieval.dim = {retrieval.dim} differs (use 0 or init = \"random\")")
    if rerank.w_q and algorithm == "seqrec" and variant == "ce":
        raise ConfigError("rerank.w_q needs a Q head, but head.variant = 'ce' has none")
