"""The simulator's customers: UCI Bank Marketing rows, a base-response model fitted on them, and the population.

Calibration (why it reproduces UCI's rates): the base response is an additive logistic model, one log-odds per
level of each response feature (default: age band, job, previous outcome, contact month) plus an intercept,
fitted by Newton's method. At the maximum of the likelihood the fitted probabilities of every level's rows sum
to that level's positives (the score equation of its indicator), so the model reproduces the overall rate and
every per-level rate of those features on the file (up to the small ridge). Customers are rows of the same file
(drawn without replacement while the file has enough rows), so the simulated population reproduces them too, up
to the draw.

Customers also get a taste: an independent N(0, taste_sd^2) log-odds per product, which browsing reveals. So
that tastes do not move the calibrated rates, each customer's logit gets an offset solving
E_z[sigmoid(x + offset + taste_sd z)] = sigmoid(x) (Gauss-Hermite quadrature, Newton).

Only `READ_COLUMNS` are ever read from the file: `duration` (call length, which leaks the label) never is.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv

from seqrec.campaign.config import CUSTOMER_COLUMNS, LABEL_COLUMN, SimConfig

UCI_FILE = Path("uci_bank_marketing") / "bank-additional-full.csv"
READ_COLUMNS: tuple[str, ...] = (*CUSTOMER_COLUMNS, LABEL_COLUMN)   # everything read from the file
NUMERIC_COLUMNS: tuple[str, ...] = ("age", "pdays", "previous")
MONTHS: tuple[str, ...] = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")


class CalibrationError(ValueError):
    """The calibration file is absent or unusable: the message names the file and what is wrong."""


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function, stable for large |x|."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))


def default_calibration_path() -> Path:
    """$SEQREC_SHARED_DATA (else <repo>/../shared/data) / uci_bank_marketing/bank-additional-full.csv."""
    env = os.environ.get("SEQREC_SHARED_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "data"
    return root / UCI_FILE


def calibration_path(cfg: SimConfig, override: str | Path | None = None) -> Path:
    """The file to calibrate on: `override`, else [population] calibration (relative to the TOML's folder),
    else the default shared-data path."""
    if override:
        return Path(override)
    if cfg.population.calibration:
        p = Path(cfg.population.calibration)
        return p if p.is_absolute() else Path(cfg.base_dir) / p
    return default_calibration_path()


@dataclass(frozen=True)
class UciData:
    """The calibration rows: customer columns (text, or int for NUMERIC_COLUMNS) and the label y as bool."""

    columns: Mapping[str, np.ndarray]   # name -> (N,) for every name in CUSTOMER_COLUMNS
    label: np.ndarray                   # (N,) bool: subscribed a term deposit
    path: str

    @property
    def rows(self) -> int:
        return len(self.label)


def read_uci(path: str | Path) -> UciData:
    """Read READ_COLUMNS of a UCI Bank Marketing CSV (';'-separated, quoted text); no other column is parsed."""
    p = Path(path)
    if not p.is_file():
        raise CalibrationError(
            f"{p}: calibration file not found (UCI Bank Marketing bank-additional-full.csv). Put it there, set "
            "[population] calibration in the simulator config, pass --calibration, or set SEQREC_SHARED_DATA")
    with open(p, encoding="utf-8-sig") as f:
        header = [h.strip().strip('"') for h in f.readline().rstrip("\r\n").split(";")]
    missing = [c for c in READ_COLUMNS if c not in header]
    if missing:
        raise CalibrationError(f"{p}: lacks column(s) {', '.join(missing)}; has: {', '.join(header)}")
    types = {c: (pa.int64() if c in NUMERIC_COLUMNS else pa.string()) for c in READ_COLUMNS}
    try:
        table = pcsv.read_csv(p, parse_options=pcsv.ParseOptions(delimiter=";"),
                              convert_options=pcsv.ConvertOptions(include_columns=list(READ_COLUMNS),
                                                                  column_types=types))
    except (pa.ArrowInvalid, UnicodeDecodeError) as e:
        raise CalibrationError(f"{p}: cannot be read as UCI Bank Marketing CSV ({e})") from None
    if table.num_rows == 0:
        raise CalibrationError(f"{p}: has no rows")
    cols: dict[str, np.ndarray] = {}
    for c in CUSTOMER_COLUMNS:
        arr = table.column(c)
        if arr.null_count:
            raise CalibrationError(f"{p}: column {c!r} has {arr.null_count} empty value(s)")
        cols[c] = arr.to_numpy() if c in NUMERIC_COLUMNS else np.asarray(arr.to_pylist(), dtype=object)
    y = np.asarray(table.column(LABEL_COLUMN).to_pylist(), dtype=object)
    bad = ~np.isin(y, ["yes", "no"])
    if bad.any():
        raise CalibrationError(f"{p}: column {LABEL_COLUMN!r} must be yes/no; row {int(np.argmax(bad)) + 2} has "
                               f"{y[bad][0]!r}")
    months = ~np.isin(cols["month"], MONTHS)
    if months.any():
        raise CalibrationError(f"{p}: column 'month' must be jan..dec; row {int(np.argmax(months)) + 2} has "
                               f"{cols['month'][months][0]!r}")
    return UciData(MappingProxyType(cols), y == "yes", str(p))


def age_band_labels(edges: Sequence[int]) -> tuple[str, ...]:
    """Band names for edges (25, 35, 65): '<25', '25-34', '35-64', '65+'."""
    inner = [f"{lo}-{hi - 1}" for lo, hi in zip(edges, edges[1:])]
    return (f"<{edges[0]}", *inner, f"{edges[-1]}+")


def age_bands(age: np.ndarray, edges: Sequence[int]) -> np.ndarray:
    """(N,) band name of each age."""
    return np.asarray(age_band_labels(edges), dtype=object)[np.searchsorted(np.asarray(edges), age, side="right")]


def feature_columns(uci: UciData, edges: Sequence[int]) -> dict[str, np.ndarray]:
    """The customer columns plus the derived 'age_band'."""
    return {**uci.columns, "age_band": age_bands(uci.columns["age"], edges)}


# ----------------------------------------------------------------------------------- base-response model


@dataclass(frozen=True)
class ResponseModel:
    """Additive logistic model: logit = intercept + sum over features of the effect of the row's level."""

    features: tuple[str, ...]
    levels: tuple[tuple[str, ...], ...]      # per feature, its levels (sorted)
    intercept: float
    effects: tuple[tuple[float, ...], ...]   # per feature, log-odds of each level

    def logit(self, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        """(N,) log-odds of rows given as columns (ValueError naming an unseen level)."""
        n = len(next(iter(columns.values())))
        out = np.full(n, self.intercept)
        for f, lv, ef in zip(self.features, self.levels, self.effects):
            values = np.asarray(columns[f], dtype=object)
            idx = np.searchsorted(np.asarray(lv, dtype=object), values)
            idx = np.minimum(idx, len(lv) - 1)
            unseen = np.asarray(lv, dtype=object)[idx] != values
            if unseen.any():
                raise ValueError(f"{f} level {values[unseen][0]!r} was not in the calibration data; levels: {lv}")
            out += np.asarray(ef)[idx]
        return out


def fit_response_model(columns: Mapping[str, np.ndarray], label: np.ndarray, features: Sequence[str],
                       ridge: float = 1.0, max_iter: int = 100) -> ResponseModel:
    """Maximum penalised likelihood by Newton's method: one indicator per level, ridge on the level effects only.

    Rows sharing every feature level share one probability, so the fit runs on the distinct level combinations
    weighted by their row and positive counts: the same estimate as on the rows, in milliseconds.
    """
    codes, levels = [], []
    for f in features:
        lv, code = np.unique(np.asarray(columns[f]).astype(str), return_inverse=True)
        levels.append(tuple(lv.tolist()))
        codes.append(code.astype(np.int64))
    sizes = [len(lv) for lv in levels]
    starts = np.concatenate([[1], 1 + np.cumsum(sizes)[:-1]]).astype(np.int64)
    combos, group = np.unique(np.stack(codes, axis=1), axis=0, return_inverse=True)     # (G, features), (N,)
    group = group.reshape(-1)
    count = np.bincount(group, minlength=len(combos)).astype(np.float64)               # (G,) rows
    positives = np.bincount(group, weights=np.asarray(label, dtype=np.float64), minlength=len(combos))
    k = 1 + sum(sizes)
    x = np.zeros((len(combos), k))                                                      # (G, 1 + levels)
    x[:, 0] = 1.0
    for j, s in enumerate(starts):
        x[np.arange(len(combos)), s + combos[:, j]] = 1.0
    penalty = np.full(k, float(ridge))
    penalty[0] = 0.0
    rate = min(max(positives.sum() / count.sum(), 1e-6), 1 - 1e-6)
    beta = np.zeros(k)
    beta[0] = np.log(rate / (1 - rate))

    def objective(b: np.ndarray) -> float:
        """Penalised log-likelihood."""
        eta = x @ b
        return float(positives @ eta - count @ np.logaddexp(0.0, eta) - 0.5 * penalty @ (b * b))

    current = objective(beta)
    for _ in range(max_iter):
        p = sigmoid(x @ beta)
        grad = x.T @ (positives - count * p) - penalty * beta
        hess = (x * (count * p * (1 - p))[:, None]).T @ x + np.diag(penalty) + 1e-9 * np.eye(k)
        step = np.linalg.solve(hess, grad)
        scale = 1.0
        while objective(beta + scale * step) < current - 1e-12 and scale > 1e-6:   # damped Newton: never go downhill
            scale *= 0.5
        beta = beta + scale * step
        current = objective(beta)
        if np.abs(scale * step).max() < 1e-10:
            break
    if not np.isfinite(beta).all():
        raise ValueError("the base-response fit did not converge (non-finite coefficients)")
    effects = tuple(tuple(beta[s:s + m].tolist()) for s, m in zip(starts, sizes))
    return ResponseModel(tuple(features), tuple(levels), float(beta[0]), effects)


def taste_offset(logit: np.ndarray, sd: float, nodes: int = 40) -> np.ndarray:
    """(N,) offsets d with E_z[sigmoid(logit + d + sd z)] = sigmoid(logit), z ~ N(0, 1) (Gauss-Hermite, Newton)."""
    if sd == 0:
        return np.zeros(len(logit))
    values, inverse = np.unique(np.asarray(logit, dtype=np.float64), return_inverse=True)
    z, w = np.polynomial.hermite_e.hermegauss(nodes)
    w = w / w.sum()
    target = sigmoid(values)
    d = np.zeros(len(values))
    for _ in range(100):
        s = sigmoid(values[:, None] + d[:, None] + sd * z[None, :])   # (U, nodes)
        step = (s @ w - target) / ((s * (1 - s)) @ w)
        d -= step
        if np.abs(step).max() < 1e-12:
            break
    return d[inverse]


# ------------------------------------------------------------------------------------------ the population


@dataclass(frozen=True)
class Population:
    """C customers (rows of the calibration file), their segment, calibrated base response and tastes."""

    columns: Mapping[str, np.ndarray]   # name -> (C,): CUSTOMER_COLUMNS plus 'age_band'
    segment: np.ndarray                 # (C,) int64 index into SimConfig.segment_names
    base_logit: np.ndarray              # (C,) fitted log-odds of buying the reference product (no nudge, first contact)
    offset: np.ndarray                  # (C,) taste correction (see taste_offset)
    taste: np.ndarray                   # (C, P) the customer's own log-odds for each product
    held: np.ndarray                    # (C, P) bool: products held before the campaign
    month: np.ndarray                   # (C,) int64 1..12: the UCI contact month, when the customer is contacted
    uci_row: np.ndarray                 # (C,) int64: 0-based data row of the file the customer was drawn from

    @property
    def size(self) -> int:
        return len(self.segment)


def assign_segments(cfg: SimConfig, job: np.ndarray, age: np.ndarray) -> np.ndarray:
    """(N,) segment index from the ordered [[segments]] rules (first match; the last rule matches everyone)."""
    names = cfg.segment_names
    out = np.full(len(job), -1, dtype=np.int64)
    for rule in cfg.segments:
        match = (out < 0) & (age >= rule.min_age) & (age <= rule.max_age)
        if rule.jobs:
            match &= np.isin(job, list(rule.jobs))
        out[match] = names.index(rule.name)
    return out


def draw_population(cfg: SimConfig, uci: UciData, model: ResponseModel) -> Population:
    """Draw `population.size` customers from the file's rows (without replacement while there are enough), seeded."""
    pc = cfg.population
    rng = np.random.default_rng(np.random.SeedSequence(pc.seed, spawn_key=(7,)))
    rows = rng.choice(uci.rows, size=pc.size, replace=pc.size > uci.rows).astype(np.int64)
    cols = {k: v[rows] for k, v in feature_columns(uci, pc.age_bands).items()}
    logit = model.logit(cols)
    taste = pc.taste_sd * rng.standard_normal((pc.size, len(cfg.products)))
    held = np.zeros((pc.size, len(cfg.products)), dtype=bool)
    for j, prod in enumerate(cfg.products):
        if prod.held_if:
            held[:, j] = cols[prod.held_if] == "yes"
    month = np.array([MONTHS.index(m) + 1 for m in cols["month"]], dtype=np.int64)
    return Population(
        columns=MappingProxyType(cols), segment=assign_segments(cfg, cols["job"], cols["age"]),
        base_logit=logit, offset=taste_offset(logit, pc.taste_sd), taste=taste, held=held, month=month,
        uci_row=rows)


# ------------------------------------------------------------------------------------------- calibration


@dataclass(frozen=True)
class CalibrationRow:
    """One group's response rate in the file, under the fitted model, and in the simulated population."""

    feature: str
    level: str
    uci_rows: int
    uci_rate: float          # observed share of y = yes in the file
    model_rate: float        # mean fitted probability over the file's rows of the group
    customers: int
    simulated_rate: float    # mean exact base purchase probability (reference product, no nudge) of the customers


def calibration_rows(uci: UciData, model: ResponseModel, population: Population, base_probability: np.ndarray,
                     edges: Sequence[int]) -> list[CalibrationRow]:
    """Overall and per-level rates of every response feature: file, model, simulated customers."""
    file_cols = feature_columns(uci, edges)
    fitted = sigmoid(model.logit(file_cols))
    out = [CalibrationRow("overall", "all", uci.rows, float(uci.label.mean()), float(fitted.mean()),
                          population.size, float(base_probability.mean()))]
    for f, levels in zip(model.features, model.levels):
        ufile, usim = np.asarray(file_cols[f]).astype(str), np.asarray(population.columns[f]).astype(str)
        natural = {"month": MONTHS, "age_band": age_band_labels(edges)}.get(f)
        order = levels if natural is None else tuple(m for m in natural if m in levels)
        for lv in order:
            a, b = ufile == lv, usim == lv
            out.append(CalibrationRow(f, lv, int(a.sum()), float(uci.label[a].mean()), float(fitted[a].mean()),
                                      int(b.sum()), float(base_probability[b].mean()) if b.any() else float("nan")))
    return out


def calibration_markdown(rows: Sequence[CalibrationRow]) -> str:
    """The calibration table as markdown (rates in percent)."""
    lines = ["| feature | level | UCI rows | UCI rate | model on UCI rows | customers | simulated rate |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.feature} | {r.level} | {r.uci_rows:,} | {100 * r.uci_rate:.2f}% | "
                     f"{100 * r.model_rate:.2f}% | {r.customers:,} | {100 * r.simulated_rate:.2f}% |")
    return "\n".join(lines)
