"""A run's offer learner (`[offers]` in the run file): fitted by `seqrec train` after the next-item learner, into
RUN/offers, when the prepared log carries offers (events with a nudge and its propensity); a log of browsing
alone keeps the next-item heads only, and the run's metrics say why no offer learner was trained."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from seqrec.datasets.manifest import read_manifest
from seqrec.datasets.offers import OfferError, OfferVocab, offer_rows
from seqrec.nudging.catalogue import load_catalogue
from seqrec.runs.config import RunConfig
from seqrec.training.offer_store import save_offers
from seqrec.training.offers import fit_offer_q

CATEGORY_COLUMNS = ("item_category", "product_category")   # item feature columns the catalogue's rules read


def train_run_offers(cfg: RunConfig, run: Path) -> dict:
    """Fit and save the run's offer learner; {"trained": False, "reason": ...} when the log has no offers."""
    assert cfg.offers is not None
    table = pq.read_table(Path(cfg.data) / "events.parquet")
    manifest = read_manifest(cfg.data)
    rewards = {t["name"]: float(t["reward"]) for t in manifest["event_types"]}
    offer_cfg = dataclasses.replace(cfg.offers, seed=cfg.train.seed)
    try:
        vocab = OfferVocab.fit(table, offer_cfg.profile)
        rows = offer_rows(table, vocab, offer_cfg.spec(rewards))
    except OfferError as e:
        return {"trained": False, "reason": str(e)}
    mask, family = catalogue_masks(table, vocab)
    max_reward = max(max(rewards.values()), 1e-12)
    fitted = fit_offer_q(rows, vocab, offer_cfg, mask, family, max_reward)
    save_offers(run / "offers", fitted, mask, family, max_reward, rewards)
    return {"trained": True, "offers": len(rows), "reward_mean": float(rows.reward.mean()), **fitted.info}


def catalogue_masks(table, vocab: OfferVocab) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(P, A) nudges the shipped catalogue allows with each item (by its id and category column, when the log has
    one) and (A,) each nudge's family; (None, None) when the log's nudges are not the catalogue's arms."""
    catalogue = load_catalogue(None)
    if not set(vocab.nudges) <= set(catalogue.ids):
        return None, None
    arms = [catalogue.ids.index(a) for a in vocab.nudges]
    category = {}
    col = next((c for c in CATEGORY_COLUMNS if c in table.column_names), None)
    if col is not None:
        ids = table.column("item_id").to_numpy(zero_copy_only=False).astype(str)
        cats = table.column(col).to_numpy(zero_copy_only=False)
        category = dict(zip(ids, cats))
    mask = np.stack([catalogue.mask(item, category.get(item))[arms] for item in vocab.items])
    mask[~mask.any(axis=1)] = True   # an item the catalogue leaves without a nudge: no restriction
    families = sorted({catalogue.family_of(a) for a in vocab.nudges})
    return mask, np.array([families.index(catalogue.family_of(a)) for a in vocab.nudges])
