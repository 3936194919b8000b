"""A fitted offer learner on disk: FOLDER/model.pt and FOLDER/offers.json, written by `seqrec train`, the abtest
and `fit_offer_q`'s callers, read by the gate and batch scoring. Apart from the fitting (seqrec/training/offers.py)
so that loading a learner for scoring never imports the training loop."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from seqrec.core.io import atomic_write_json
from seqrec.datasets.offers import OfferVocab
from seqrec.rl.bandits.joint import JointConfig
from seqrec.rl.offers.config import OfferConfig
from seqrec.rl.offers.model import OfferEnsemble, OfferQNet
from seqrec.training.checkpoints import load_checkpoint, save_checkpoint


@dataclass
class FittedOffers:
    """A fitted offer Q network with its vocabulary and what selection saw."""

    model: OfferQNet | OfferEnsemble
    vocab: OfferVocab
    config: OfferConfig
    info: dict = field(default_factory=dict)
    held_out: np.ndarray = field(default_factory=lambda: np.zeros(0))   # customers selection held out (as logged)
    gate_model: OfferQNet | OfferEnsemble | None = None   # with refit: the network before it (never saw held_out)
    decision: JointConfig | None = None   # the decision layer chosen by held-out value (None: none was chosen)


def save_offers(folder: Path, fitted: FittedOffers, nudge_mask: np.ndarray | None = None,
                nudge_family: np.ndarray | None = None, max_reward: float = 1.0,
                rewards: Mapping[str, float] | None = None) -> None:
    """FOLDER/model.pt (weights only, atomic, with a JSON sidecar) and FOLDER/offers.json (vocabulary, config,
    masks, what selection saw): everything `load_offers` needs."""
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(folder / "model.pt", {"model": fitted.model.state_dict()}, {"info": fitted.info})
    atomic_write_json(folder / "offers.json", {
        "vocab": fitted.vocab.to_dict(), "config": fitted.config.to_dict(), "info": fitted.info,
        "nudge_mask": None if nudge_mask is None else np.asarray(nudge_mask, bool).tolist(),
        "nudge_family": None if nudge_family is None else np.asarray(nudge_family, int).tolist(),
        "max_reward": float(max_reward), "rewards": None if rewards is None else dict(rewards),
        "held_out": [] if fitted.config.refit else np.asarray(fitted.held_out).tolist(),
        "decision": None if fitted.decision is None else dataclasses.asdict(fitted.decision)})


def load_offers(folder: Path) -> tuple[FittedOffers, np.ndarray]:
    """A saved offer learner and its (P, A) nudge mask (all True when none was saved)."""
    note = json.loads((folder / "offers.json").read_text())
    vocab = OfferVocab.from_dict(note["vocab"])
    raw = dict(note["config"])
    raw["profile"], raw["cross"] = tuple(raw["profile"]), tuple(raw.get("cross", ()))
    raw["grid_cross"] = tuple(tuple(c) for c in raw.get("grid_cross", ()))
    cfg = OfferConfig(**raw)
    family = note.get("nudge_family")
    net = saved_network(vocab, cfg, None if family is None else np.asarray(family),
                         note["max_reward"] / (1 - cfg.gamma))
    net.load_state_dict(load_checkpoint(folder / "model.pt", "cpu")["model"])
    mask = note.get("nudge_mask")
    p, a = len(vocab.items), len(vocab.nudges)
    chosen = note.get("decision")
    fitted = FittedOffers(net.eval(), vocab, cfg, note["info"], np.asarray(note.get("held_out") or []),
                          decision=None if chosen is None else JointConfig(**chosen))
    return fitted, np.ones((p, a), bool) if mask is None else np.asarray(mask, bool)


def offer_network(vocab: OfferVocab, cfg: OfferConfig, nudge_family: np.ndarray | None, scale: float) -> OfferQNet:
    """A fresh offer Q network for a vocabulary (nudge families: padding and unknown in families of their own)."""
    family = None if nudge_family is None else torch.as_tensor(np.r_[[-2, -1], np.asarray(nudge_family, np.int64)])
    names = [name for name, _ in vocab.profile]
    cross = tuple(names.index(c) for c in cfg.cross) if cfg.cross else None
    return OfferQNet(vocab.n_items, vocab.n_events, vocab.n_nudges, tuple(len(v) for _, v in vocab.profile),
                     cfg.history, cfg, family, scale, cross)


def saved_network(vocab: OfferVocab, cfg: OfferConfig, nudge_family: np.ndarray | None,
                  scale: float) -> OfferQNet | OfferEnsemble:
    """The module a saved learner's weights load into: one network, or the ensemble of cfg.ensemble."""
    if cfg.ensemble == 1:
        return offer_network(vocab, cfg, nudge_family, scale)
    return OfferEnsemble([offer_network(vocab, cfg, nudge_family, scale) for _ in range(cfg.ensemble)])
