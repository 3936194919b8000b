"""The two-tower network as a purchase / no-purchase classifier on UCI Bank Marketing, and a logistic baseline:
the check of Kristiana et al.'s 91.25% test accuracy (PAPERS.md section 5) on real bank data.

Data: `bank-additional-full.csv` (41,188 contacts, 11.3% subscribed a term deposit). `duration` (the call's
length) is never read: it is only known after the call and all but gives the label away. Only FEATURE_COLUMNS
and the label are parsed from the file.

Split (seeded, stratified by the label): train / valid / test; the natural test set keeps the file's rate, the
balanced test set is all test positives plus as many test negatives drawn without replacement (the majority
undersampled, like the paper's 745 / 735 test users). Encodings are fitted on train only (tower_features:
categorical vocabularies with an unknown code 0, numeric mean / std).

Two-tower (`BankTwoTower`): score = user . item + b -> sigmoid. The user tower is the customer (demographics,
loans, response to earlier campaigns); the item tower is the offer: with item = "campaign", the term deposit as
this campaign presents it (channel, month, weekday, contacts so far, and the economy of the moment, whose
euribor rate is the deposit's price); with item = "product", the one product as a learned vector, every column
then going to the user tower. Each tower: per-column embeddings and the standardised numbers, concatenated,
through a small MLP. Class weighting: positives weigh n_neg / n_pos in the cross-entropy (each class half the
loss). Early stopping on validation AUC, keeping the best epoch.

Logistic regression: one-hot categories plus standardised numbers, the same class weights and a small ridge,
fitted by Newton's method (convex: no early stopping).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pcsv
import torch
import torch.nn.functional as F
from torch import nn

from seqrec.campaign.binary_metrics import auc
from seqrec.retrieval.features import Features, FeatureSpec
from seqrec.training.loop import Evaluation, Hooks, Schedule, fit

LABEL = "y"
LEAKING_COLUMNS: tuple[str, ...] = ("duration",)  # known only after the call: never read
CUSTOMER_CATEGORICAL: tuple[str, ...] = ("job", "marital", "education", "default", "housing", "loan", "poutcome")
CUSTOMER_NUMERIC: tuple[str, ...] = ("age", "pdays", "previous")
CAMPAIGN_CATEGORICAL: tuple[str, ...] = ("contact", "month", "day_of_week")
CAMPAIGN_NUMERIC: tuple[str, ...] = ("campaign", "emp.var.rate", "cons.price.idx", "cons.conf.idx", "euribor3m",
                                     "nr.employed")
CATEGORICAL = CUSTOMER_CATEGORICAL + CAMPAIGN_CATEGORICAL
NUMERIC = CUSTOMER_NUMERIC + CAMPAIGN_NUMERIC
FEATURE_COLUMNS: tuple[str, ...] = CATEGORICAL + NUMERIC
ITEM_KINDS = ("campaign", "product")


# ------------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class BankData:
    """The file's rows: FEATURE_COLUMNS (text or float) and the label."""

    frame: pd.DataFrame  # (N, len(FEATURE_COLUMNS))
    label: np.ndarray    # (N,) bool: subscribed a term deposit
    path: str


def read_bank(path: str | Path) -> BankData:
    """FEATURE_COLUMNS and `y` of a UCI Bank Marketing CSV (';'-separated); no other column is parsed."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: UCI Bank Marketing file not found (bank-additional-full.csv)")
    with open(p, encoding="utf-8-sig") as f:
        header = [h.strip().strip('"') for h in f.readline().rstrip("\r\n").split(";")]
    wanted = [*FEATURE_COLUMNS, LABEL]
    assert not set(wanted) & set(LEAKING_COLUMNS), "a leaking column is listed as a feature"
    missing = [c for c in wanted if c not in header]
    if missing:
        raise ValueError(f"{p}: lacks column(s) {', '.join(missing)}; has: {', '.join(header)}")
    types = {c: pa.float64() for c in NUMERIC} | {c: pa.string() for c in (*CATEGORICAL, LABEL)}
    table = pcsv.read_csv(p, parse_options=pcsv.ParseOptions(delimiter=";"),
                          convert_options=pcsv.ConvertOptions(include_columns=wanted, column_types=types))
    frame = table.to_pandas()
    y = frame.pop(LABEL).to_numpy(object)
    bad = ~np.isin(y, ["yes", "no"])
    if bad.any():
        raise ValueError(f"{p}: column {LABEL!r} must be yes/no; row {int(np.argmax(bad)) + 2} has {y[bad][0]!r}")
    return BankData(frame[list(FEATURE_COLUMNS)], y == "yes", str(p))


@dataclass(frozen=True)
class SplitConfig:
    """Shares of each class held out for validation and test (default: a balanced test set of about 1,480
    contacts on the full file, the size of the paper's)."""

    valid_fraction: float = 0.16
    test_fraction: float = 0.16

    def __post_init__(self) -> None:
        if not (0 < self.valid_fraction and 0 < self.test_fraction and self.valid_fraction + self.test_fraction < 1):
            raise ValueError("valid_fraction and test_fraction must be > 0 and sum to less than 1")


@dataclass(frozen=True)
class BankSplit:
    """Row indices (sorted) of each part; test_balanced is a subset of test."""

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    test_balanced: np.ndarray


def split_bank(label: np.ndarray, cfg: SplitConfig, seed: int) -> BankSplit:
    """Stratified train / valid / test, then the balanced test set: every test row of the rarer class and an
    equal number of the other class's test rows, drawn without replacement."""
    rng = np.random.default_rng(seed)
    y = np.asarray(label, bool)
    parts: dict[str, list[np.ndarray]] = {"train": [], "valid": [], "test": []}
    for cls in (False, True):
        rows = rng.permutation(np.flatnonzero(y == cls))
        n_test, n_valid = round(len(rows) * cfg.test_fraction), round(len(rows) * cfg.valid_fraction)
        parts["test"].append(rows[:n_test])
        parts["valid"].append(rows[n_test:n_test + n_valid])
        parts["train"].append(rows[n_test + n_valid:])
    neg, pos = parts["test"]
    n = min(len(neg), len(pos))
    balanced = np.concatenate([rng.choice(neg, n, replace=False), rng.choice(pos, n, replace=False)])
    return BankSplit(*(np.sort(np.concatenate(parts[k])) for k in ("train", "valid", "test")), np.sort(balanced))


@dataclass(frozen=True)
class TowerColumns:
    """Which columns feed which tower."""

    user_categorical: tuple[str, ...]
    user_numeric: tuple[str, ...]
    item_categorical: tuple[str, ...] = ()
    item_numeric: tuple[str, ...] = ()


def tower_columns(item: str) -> TowerColumns:
    """"campaign": customer columns | campaign columns; "product": every column in the user tower."""
    if item == "campaign":
        return TowerColumns(CUSTOMER_CATEGORICAL, CUSTOMER_NUMERIC, CAMPAIGN_CATEGORICAL, CAMPAIGN_NUMERIC)
    if item == "product":
        return TowerColumns(CATEGORICAL, NUMERIC)
    raise ValueError(f"item must be one of {ITEM_KINDS}, not {item!r}")


@dataclass(frozen=True)
class TowerEncoders:
    """Both towers' encodings, fitted on the training rows."""

    user: FeatureSpec
    item: FeatureSpec

    @classmethod
    def fit(cls, train: pd.DataFrame, cols: TowerColumns) -> TowerEncoders:
        return cls(FeatureSpec.fit(train, cols.user_categorical, cols.user_numeric),
                   FeatureSpec.fit(train, cols.item_categorical, cols.item_numeric))

    def encode(self, frame: pd.DataFrame) -> tuple[Features, Features]:
        """(user Features, item Features) of the frame's N rows."""
        return self.user.encode(frame), self.item.encode(frame)


# --------------------------------------------------------------------------------------------- two-tower


@dataclass(frozen=True)
class TwoTowerClassifierConfig:
    """The two-tower classifier and its training."""

    item: str = "campaign"     # what the item tower sees: "campaign" or "product" (see tower_columns)
    dim: int = 32              # D, the width of both towers' outputs
    embedding_dim: int = 8     # per categorical column
    hidden: int = 64           # each tower's hidden layer
    dropout: float = 0.1
    lr: float = 3e-3
    weight_decay: float = 1e-5
    batch_size: int = 512
    max_epochs: int = 40
    patience: int = 5          # epochs without a better validation AUC before stopping

    def __post_init__(self) -> None:
        tower_columns(self.item)
        if min(self.dim, self.embedding_dim, self.hidden, self.batch_size, self.max_epochs, self.patience) < 1:
            raise ValueError("dim, embedding_dim, hidden, batch_size, max_epochs and patience must be >= 1")
        if not 0 <= self.dropout < 1 or self.lr <= 0 or self.weight_decay < 0:
            raise ValueError("need 0 <= dropout < 1, lr > 0, weight_decay >= 0")


class FeatureTower(nn.Module):
    """Features of B rows -> (B, D): each categorical code embedded, concatenated with the numbers, an MLP."""

    def __init__(self, cardinalities: Sequence[int], n_numeric: int, cfg: TwoTowerClassifierConfig) -> None:
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(n, cfg.embedding_dim) for n in cardinalities)
        width = cfg.embedding_dim * len(cardinalities) + n_numeric
        self.mlp = nn.Sequential(nn.Linear(width, cfg.hidden), nn.ReLU(), nn.Dropout(cfg.dropout),
                                 nn.Linear(cfg.hidden, cfg.dim))

    def forward(self, f: Features) -> torch.Tensor:
        parts = [emb(f.categorical[:, j]) for j, emb in enumerate(self.embeddings)]  # C x (B, E)
        return self.mlp(torch.cat([*parts, f.numeric], dim=1))  # (B, C E + M) -> (B, D)


class BankTwoTower(nn.Module):
    """(user Features, item Features) of B rows -> (B,) logits user . item + bias."""

    def __init__(self, enc: TowerEncoders, cfg: TwoTowerClassifierConfig) -> None:
        super().__init__()
        self.user_tower = FeatureTower(enc.user.cardinalities, len(enc.user.numeric), cfg)
        has_item = bool(enc.item.columns)
        self.item_tower = FeatureTower(enc.item.cardinalities, len(enc.item.numeric), cfg) if has_item else None
        self.product = None if has_item else nn.Parameter(torch.randn(cfg.dim) / cfg.dim ** 0.5)  # (D,)
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, user: Features, item: Features) -> torch.Tensor:
        u = self.user_tower(user)  # (B, D)
        v = self.item_tower(item) if self.item_tower is not None else self.product.expand_as(u)  # (B, D)
        return (u * v).sum(dim=1) + self.bias  # (B,)


@torch.no_grad()
def predict_two_tower(model: BankTwoTower, user: Features, item: Features) -> np.ndarray:
    """(N,) purchase probabilities."""
    model.eval()
    return torch.sigmoid(model(user, item)).numpy().astype(np.float64)


def train_bank_classifier(cfg: TwoTowerClassifierConfig, enc: TowerEncoders, train: pd.DataFrame,
                          y_train: np.ndarray, valid: pd.DataFrame, y_valid: np.ndarray,
                          seed: int) -> tuple[BankTwoTower, dict[str, float]]:
    """Adam on class-weighted cross-entropy, shuffled minibatches, early stopping on validation AUC (one step of
    seqrec.training.loop.fit per epoch, nothing on disk); returns the best epoch's model and {"best_epoch",
    "epochs", "valid_auc"}. The seed fixes initialisation, order, dropout."""
    tu, ti = enc.encode(train)
    vu, vi = enc.encode(valid)
    y = torch.as_tensor(np.asarray(y_train, np.float32))  # (N,)
    pos_weight = torch.tensor(float((y == 0).sum() / max(float(y.sum()), 1.0)))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BankTwoTower(enc, cfg)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        order = torch.Generator().manual_seed(seed)
        best_state: dict[str, torch.Tensor] | None = None

        def epoch(step: int) -> None:
            model.train()
            for idx in torch.randperm(len(y), generator=order).split(cfg.batch_size):
                loss = F.binary_cross_entropy_with_logits(model(tu.rows(idx), ti.rows(idx)), y[idx],
                                                          pos_weight=pos_weight)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

        def evaluate() -> Evaluation:
            score = auc(predict_two_tower(model, vu, vi), y_valid)
            return Evaluation({"auc": score}, None if math.isnan(score) else score, {})

        def keep_best(step: int) -> None:
            nonlocal best_state
            best_state = {k: v.clone() for k, v in model.state_dict().items()}

        result = fit(epoch, evaluate, Schedule(cfg.max_epochs, eval_every=1, patience=cfg.patience),
                     hooks=Hooks(on_best=keep_best))
    if best_state is None:
        raise ValueError("validation AUC is undefined: the validation rows need both classes")
    model.load_state_dict(best_state)
    return model.eval(), {"best_epoch": result.best_step, "epochs": result.step, "valid_auc": result.best}


# ------------------------------------------------------------------------------------- logistic regression


@dataclass(frozen=True)
class LogisticConfig:
    """Ridge penalty (on the weights, not the intercept; in units of weighted rows) and Newton's stopping rule."""

    l2: float = 1.0
    max_iter: int = 100
    tol: float = 1e-10

    def __post_init__(self) -> None:
        if self.l2 < 0 or self.max_iter < 1 or self.tol <= 0:
            raise ValueError("need l2 >= 0, max_iter >= 1, tol > 0")


@dataclass(frozen=True)
class LogisticModel:
    """p = sigmoid(x . weights + intercept) over `design_matrix` columns."""

    weights: np.ndarray  # (P,)
    intercept: float

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(N, P) -> (N,) purchase probabilities."""
        return 1.0 / (1.0 + np.exp(-(x @ self.weights + self.intercept)))


def design_matrix(spec: FeatureSpec, frame: pd.DataFrame) -> np.ndarray:
    """(N, P): one indicator per categorical code (the unknown code included) then the standardised numbers."""
    f = spec.encode(frame)
    cat = f.categorical.numpy()
    blocks = [np.eye(n)[cat[:, j]] for j, n in enumerate(spec.cardinalities)]  # (N, n) each
    return np.concatenate([*blocks, f.numeric.numpy().astype(np.float64)], axis=1)


def fit_logistic(x: np.ndarray, y: np.ndarray, cfg: LogisticConfig = LogisticConfig()) -> LogisticModel:
    """Class-weighted (each class half the total weight), ridge-penalised logistic regression by Newton's method."""
    y = np.asarray(y, np.float64)
    n, n_pos = len(y), y.sum()
    w_row = np.where(y > 0, n / (2 * max(n_pos, 1)), n / (2 * max(n - n_pos, 1)))  # (N,)
    xb = np.concatenate([x, np.ones((n, 1))], axis=1)  # (N, P + 1), intercept last
    ridge = np.full(xb.shape[1], cfg.l2)
    ridge[-1] = 0.0
    beta = np.zeros(xb.shape[1])
    for _ in range(cfg.max_iter):
        p = 1.0 / (1.0 + np.exp(-(xb @ beta)))
        grad = xb.T @ (w_row * (p - y)) + ridge * beta
        hess = (xb * (w_row * p * (1 - p))[:, None]).T @ xb + np.diag(ridge) + 1e-9 * np.eye(len(beta))
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.abs(step).max() < cfg.tol ** 0.5:
            break
    return LogisticModel(beta[:-1], float(beta[-1]))
