"""Off-policy evaluation against a real logged policy: the Open Bandit Dataset (OBD) sample.

ZOZOTOWN ran two policies side by side on the same campaigns: uniform random and Bernoulli Thompson sampling
(TS). From the uniform-random log we estimate the TS policy's click rate with IPS, SNIPS, DM and DR
(seqrec.rl.ope.estimators) and compare with the rate the TS log actually observed (its own on-policy clicks).

Positions. A recommendation shows three items in three slots; each CSV row is one (item, slot) with
`propensity_score` = the logging policy's probability of that item *in that slot*. As in the Open Bandit
Pipeline, a row is one decision, the target policy has one distribution over items per slot (an (A, 3) table),
the row's slot picks the column, and a value is clicks per slot-impression.

The TS policy's (item, slot) probabilities, two ways:

- `log`: from the propensity column of the TS log itself. The live policy was updated in batches during the
  week, so each row's propensity is the policy of that moment; the target here is the time-averaged policy.
  Rows where an item was chosen over-represent the moments it was likely (a plain mean of its propensities is
  biased upwards: those means sum to 2-3.7 per slot), so we take, per (item, slot), the number of rows over
  the sum of 1 / propensity (the harmonic mean: a Horvitz-Thompson estimate of the slot's rows that corrects
  the size bias), then normalise each slot to sum to 1 (before normalising the sums are 1.03-1.13: a check).
  Items the TS log never showed in a slot get 0.
- `prior`: simulated from the Beta(alpha, beta) prior per item that the Open Bandit Pipeline publishes for
  this policy (`experiments/obd_prior_bts.json`, from OBP's `prior_bts.yaml`): draw one value per item, rank
  them, the i-th largest goes to slot i; the share of `--n-sim` draws gives each (item, slot) probability.
  This is the policy at the start of the data collection, not its later updates.

    python experiments/ope_obd.py --data ../shared/data [--bootstrap 1000] [--seed 0] [--n-sim 100000]

Default data folder: $SEQREC_SHARED_DATA, else <repo>/../shared/data (the OBD sample is its
`open_bandit_dataset_sample/` folder; the path may also point at that folder directly).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from seqrec.rl.ope.estimators import (
    Estimate,
    FixedPolicy,
    LoggedBandit,
    OpeConfig,
    estimate_policy,
    estimators_from_names,
)

ROOT = Path(__file__).resolve().parents[1]
OBD_FOLDER = "open_bandit_dataset_sample"
PRIOR_FILE = Path(__file__).with_name("obd_prior_bts.json")
CAMPAIGNS = ("all", "men", "women")
POSITIONS = 3            # left, centre, right
Z95 = 1.959963984540054  # standard normal quantile for 95% intervals


def default_data() -> Path:
    """$SEQREC_SHARED_DATA, else <repo>/../shared/data."""
    env = os.environ.get("SEQREC_SHARED_DATA")
    return Path(env) if env else ROOT.parent / "shared" / "data"


def obd_folder(data: Path) -> Path:
    """The OBD sample folder inside `data` (or `data` itself when it is that folder)."""
    data = Path(data)
    return data if (data / "random").is_dir() else data / OBD_FOLDER


def load_obd(data: Path, behavior: str, campaign: str) -> LoggedBandit:
    """One OBD log as decisions: action = item_id, position = slot - 1 (0-2), reward = click,
    propensity = propensity_score; n_actions from the campaign's item_context.csv; row_ids = the CSV index."""
    folder = obd_folder(data) / behavior / campaign
    path = folder / f"{campaign}.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file (OBD sample folder {obd_folder(data)})")
    df = pd.read_csv(path, index_col=0, usecols=[0, 2, 3, 4, 5])
    n_items = len(pd.read_csv(folder / "item_context.csv", usecols=[1]))
    return LoggedBandit(df["item_id"].to_numpy(), df["click"].to_numpy(np.float64),
                        df["propensity_score"].to_numpy(np.float64), n_items,
                        position=df["position"].to_numpy() - 1, n_positions=POSITIONS,
                        row_ids=df.index.to_numpy(), source=str(path))


def ts_policy_from_log(bts: LoggedBandit) -> tuple[np.ndarray, np.ndarray]:
    """((A, K) time-averaged TS probabilities from the TS log's own propensities, (K,) their sums before
    normalising): per (item, slot) rows / sum(1 / propensity), each slot normalised to 1."""
    a, k = bts.n_actions, bts.n_positions
    cell = bts.position * a + bts.action
    rows = np.bincount(cell, minlength=a * k)
    inverse = np.bincount(cell, 1.0 / bts.propensity, minlength=a * k)
    table = np.where(rows > 0, rows / np.where(inverse > 0, inverse, 1.0), 0.0).reshape(k, a).T
    sums = table.sum(axis=0)
    return table / sums, sums


def load_prior(path: Path = PRIOR_FILE) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """campaign -> (alpha, beta) of the published TS prior."""
    raw = json.loads(Path(path).read_text())
    return {c: (np.asarray(raw[c]["alpha"], np.float64), np.asarray(raw[c]["beta"], np.float64))
            for c in CAMPAIGNS if c in raw}


def ts_policy_from_prior(alpha: np.ndarray, beta: np.ndarray, n_sim: int = 100_000, seed: int = 0,
                         positions: int = POSITIONS, chunk: int = 20_000) -> np.ndarray:
    """(A, K) probability that Thompson sampling from Beta(alpha, beta) puts each item in each slot (the i-th
    largest draw in slot i), estimated from n_sim joint draws."""
    rng = np.random.default_rng(seed)
    a = len(alpha)
    counts = np.zeros((a, positions))
    for start in range(0, n_sim, chunk):
        theta = rng.beta(alpha, beta, size=(min(chunk, n_sim - start), a))
        top = np.argpartition(-theta, positions - 1, axis=1)[:, :positions]
        ranked = np.take_along_axis(top, np.argsort(-np.take_along_axis(theta, top, axis=1), axis=1), axis=1)
        for j in range(positions):
            counts[:, j] += np.bincount(ranked[:, j], minlength=a)
    return counts / n_sim


def observed_rate(log: LoggedBandit) -> tuple[float, float, float]:
    """On-policy click rate of a log and its 95% Wilson interval (clicks are 0/1 per row)."""
    n, p = log.n, float(log.reward.mean())
    centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / (1 + Z95**2 / n)
    return p, centre - half, centre + half


@dataclass(frozen=True)
class Row:
    """One line of the result table."""

    campaign: str
    source: str            # how the TS probabilities were obtained: "log" or "prior"
    observed: tuple[float, float, float]
    estimate: Estimate

    @property
    def relative_error(self) -> float:
        return (self.estimate.value - self.observed[0]) / self.observed[0]


def run(data: Path, campaigns: tuple[str, ...] = CAMPAIGNS, config: OpeConfig | None = None,
        n_sim: int = 100_000) -> tuple[list[Row], dict[str, dict[str, float]]]:
    """Every estimator, campaign and TS-probability source; plus per campaign the checks on the two tables."""
    config = config or OpeConfig()
    prior = load_prior()
    rows, checks = [], {}
    for campaign in campaigns:
        random_log, bts_log = load_obd(data, "random", campaign), load_obd(data, "bts", campaign)
        observed = observed_rate(bts_log)
        from_log, sums = ts_policy_from_log(bts_log)
        tables = {"log": from_log}
        if campaign in prior:
            tables["prior"] = ts_policy_from_prior(*prior[campaign], n_sim=n_sim, seed=config.seed)
        checks[campaign] = {"log_sums_min": float(sums.min()), "log_sums_max": float(sums.max())}
        if "prior" in tables:  # total-variation distance between the two, averaged over slots
            checks[campaign]["tv_distance"] = float(0.5 * np.abs(tables["log"] - tables["prior"]).sum(0).mean())
        for source, table in tables.items():
            for est in estimate_policy(random_log, FixedPolicy(table), estimators=estimators_from_names(config=config)):
                rows.append(Row(campaign, source, observed, est))
    return rows, checks


def markdown(rows: list[Row], checks: dict[str, dict[str, float]]) -> str:
    """The README table, then the shift between the two TS-probability sources per campaign and estimator."""
    level = f"{rows[0].estimate.level:.0%}" if rows else "95%"
    out = [f"| campaign | observed TS click rate ({level} CI) | TS probabilities | estimator | estimate | "
           f"{level} interval | relative error | ESS |", "|---" * 8 + "|"]
    for r in rows:
        e, (p, lo, hi) = r.estimate, r.observed
        out.append(f"| {r.campaign} | {p:.4f} [{lo:.4f}, {hi:.4f}] | {r.source} | {e.estimator.upper()} | "
                   f"{e.value:.5f} | [{e.low:.5f}, {e.high:.5f}] | {r.relative_error:+.1%} | {e.ess:,.0f} |")
    by = {(r.campaign, r.source, r.estimate.estimator): r.estimate.value for r in rows}
    shift = ["", "| campaign | TV distance log vs prior | " + " | ".join(
        f"{n.upper()} prior vs log" for n in ("ips", "snips", "dm", "dr")) + " |", "|---" * 6 + "|"]
    for c, chk in checks.items():
        if "tv_distance" not in chk:
            continue
        cells = [f"{(by[(c, 'prior', n)] - by[(c, 'log', n)]) / by[(c, 'log', n)]:+.1%}"
                 for n in ("ips", "snips", "dm", "dr")]
        shift.append(f"| {c} | {chk['tv_distance']:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(out + (shift if len(shift) > 3 else []))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=default_data(), help="shared data folder or the OBD sample folder")
    ap.add_argument("--campaigns", default=",".join(CAMPAIGNS), help="comma-separated subset of all,men,women")
    ap.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default 1000)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the resampling and the prior simulation")
    ap.add_argument("--n-sim", type=int, default=100_000, help="Thompson draws for the prior-simulated policy")
    ap.add_argument("--out", type=Path, help="also write the markdown tables to this file")
    args = ap.parse_args(argv)
    campaigns = tuple(c.strip() for c in args.campaigns.split(",") if c.strip())
    bad = [c for c in campaigns if c not in CAMPAIGNS]
    if bad or not campaigns:
        ap.error(f"unknown campaign(s) {bad}; choose from {', '.join(CAMPAIGNS)}")
    if not obd_folder(args.data).is_dir():
        print(f"ope_obd: no OBD sample at {obd_folder(args.data)} (give --data or set SEQREC_SHARED_DATA)",
              file=sys.stderr)
        return 2
    start = time.perf_counter()
    rows, checks = run(args.data, campaigns, OpeConfig(resamples=args.bootstrap, seed=args.seed), args.n_sim)
    text = markdown(rows, checks)
    print(text)
    for c, chk in checks.items():
        print(f"{c}: log-estimated TS probabilities summed to {chk['log_sums_min']:.3f}-{chk['log_sums_max']:.3f} "
              "per slot before normalising")
    print(f"({time.perf_counter() - start:.1f} s; {args.bootstrap} resamples, seed {args.seed}, "
          f"{args.n_sim:,} prior draws)")
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
