"""From an offer Q network to decisions: Q of every allowed (product, nudge) pair, the decision layer's joint
probabilities over them, and the greedy policy's off-policy value on a logged set of offers.

Shapes: B customers, W history, C profile columns, P products, A nudges (in the vocabulary's order: product p is
item code FIRST_ITEM + p, nudge a is nudge code FIRST_NUDGE + a).
"""

from __future__ import annotations

import numpy as np
import torch
from seqrec.datasets.offers import FIRST_NUDGE, OfferRows
from seqrec.datasets.schema import FIRST_ITEM, PURCHASE
from seqrec.rl.bandits.joint import JointConfig, joint_probabilities
from seqrec.rl.offers.model import OfferEnsemble, OfferQNet
from seqrec.rl.ope.data import LoggedBandit
from seqrec.rl.ope.estimators import DR, SNIPS, Estimate, OpeConfig
from seqrec.rl.ope.models import Predictions

PURCHASE_CODE = 1 + PURCHASE   # event code of a purchase in datasets/offers.py's event vocabulary


def grid(n_items: int, n_nudges: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(P,) item codes and (A,) nudge codes of every real product and nudge."""
    return torch.arange(FIRST_ITEM, n_items), torch.arange(FIRST_NUDGE, n_nudges)


def bought_before(history: np.ndarray, n_products: int) -> np.ndarray:
    """(B, P) whether the history shows a purchase of each product (a product held: never offered again)."""
    item, etype = history[..., 0], history[..., 1]
    out = np.zeros((len(history), n_products), bool)
    rows, cols = np.nonzero((etype == PURCHASE_CODE) & (item >= FIRST_ITEM))
    out[rows, item[rows, cols] - FIRST_ITEM] = True
    return out


def allowed_pairs(held: np.ndarray, nudge_mask: np.ndarray) -> np.ndarray:
    """(B, P, A) pairs that may be offered: products not held (all, for a customer holding every one) with the
    nudges allowed with the product (nudge_mask (P, A))."""
    open_ = ~held
    open_ = np.where(open_.any(axis=1, keepdims=True), open_, True)
    return open_[:, :, None] & nudge_mask[None]


@torch.no_grad()
def q_values(model: OfferQNet | OfferEnsemble, history: np.ndarray, profile: np.ndarray,
             batch: int = 512) -> np.ndarray:
    """(B, P, A) Q value of every (product, nudge) pair for each customer."""
    model.eval()
    items, nudges = grid(model.n_items, model.n_nudges)
    out = []
    for lo in range(0, len(history), batch):
        h = torch.from_numpy(history[lo:lo + batch])
        p = torch.from_numpy(profile[lo:lo + batch])
        out.append(model.values(model.all_logits(h, p, items, nudges)).numpy())
    p, a = len(items), len(nudges)
    return np.concatenate(out).astype(np.float64) if out else np.zeros((0, p, a))


def offer_probabilities(values: np.ndarray, allowed: np.ndarray, cfg: JointConfig,
                        rng: np.random.Generator | None = None) -> np.ndarray:
    """(B, P, A) joint probabilities of the decision layer over the allowed pairs (rl/bandits/joint.py)."""
    return joint_probabilities(values, allowed, cfg, rng=rng)


def in_grid(rows: OfferRows, n_products: int, n_nudges: int) -> np.ndarray:
    """(N,) whether each logged offer is a pair of the P x A grid (not an unknown item or nudge)."""
    p, a = rows.item - FIRST_ITEM, rows.nudge - FIRST_NUDGE
    return (p >= 0) & (p < n_products) & (a >= 0) & (a < n_nudges)


def logged_bandit(rows: OfferRows, n_products: int, n_nudges: int) -> LoggedBandit:
    """Logged offers as a bandit log over P * A joint actions (rows whose offer lies outside the grid dropped)."""
    p, a = rows.item - FIRST_ITEM, rows.nudge - FIRST_NUDGE
    ok = in_grid(rows, n_products, n_nudges)
    return LoggedBandit(p[ok] * n_nudges + a[ok], rows.reward[ok], rows.propensity[ok],
                        n_actions=n_products * n_nudges, source="offers")


def evaluable(rows: OfferRows, allowed: np.ndarray) -> np.ndarray:
    """(N, P, A) the pairs a policy is valued over on logged offers: all allowed pairs when the logger chose the
    product; else (the customer chose it) the allowed nudges of the logged product only."""
    if rows.product_chosen:
        return allowed
    same = (np.arange(allowed.shape[1])[None] == (rows.item - FIRST_ITEM)[:, None])            # (N, P)
    out = allowed & same[:, :, None]
    return np.where(out.any(axis=(1, 2), keepdims=True), out, allowed)


def policy_value(rows: OfferRows, values: np.ndarray, allowed: np.ndarray, cfg: JointConfig,
                 estimator: str = "snips", resamples: int = 0, level: float = 0.95, seed: int = 0) -> Estimate:
    """Off-policy value of the decision policy (cfg over `values` (N, P, A), over the `evaluable` pairs) on logged
    offers, by SNIPS or DR (DR's reward model: the values themselves, so only with gamma 0 is it one)."""
    n, p, a = values.shape
    pi = offer_probabilities(values, evaluable(rows, allowed), cfg, np.random.default_rng(seed)).reshape(n, p * a)
    keep = in_grid(rows, p, a)
    log = logged_bandit(rows, p, a)
    config = OpeConfig(resamples=resamples, level=level, seed=seed, min_ess=0.0, min_ess_fraction=0.0)
    if estimator == "snips":
        est = SNIPS(config)
    elif estimator == "dr":
        est = DR(Predictions(values.reshape(n, p * a)[keep]), None, config)
    else:
        raise ValueError(f"estimator must be snips or dr; got {estimator!r}")
    return est.estimate_from_probabilities(log, pi[keep])
