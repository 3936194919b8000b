"""Two-tower candidate generation: a user tower (sequence encoder + user features) and an item tower (id
embedding + item features) whose dot product retrieves candidates from the whole catalogue.

The user tower is its own encoder of the run's architecture, started (init = "learner", the default) from the
trained learner's first network: its encoder, and its scoring table as the item tower's id embedding. Why:
that encoder has already learned the sequences with a full-catalogue loss, so at step 0 the two-tower ranks
exactly as the learner's supervised head does and a short sampled-softmax run only has to add the features and
the popularity correction; and the weights are a copy, so retrieval training never changes the model that
re-ranks (what `seqrec evaluate` measured stays what the pipeline uses). Feature embeddings and projections
start at zero, so adding features does not disturb that start. init = "random" trains from scratch (the
choice for d3rlpy runs, whose encoder sits inside d3rlpy's Q function).

Loss (`in_batch_softmax_loss`): each row's positive against the other rows' positives and `random_negatives`
uniform real items shared by the batch, logits = user . item / temperature. Log-Q correction: every column's
logit, the positive's included (Yi et al. 2019), loses log E[count of its item among a row's sampled
negatives] = log((B - 1) q(item) + M / (I - 2)), where q is the item's share of training actions, i.e. the
probability that a batch positive, drawn uniformly from the training transitions, is that item. With in-batch
negatives only this is log q(item) plus a constant, the usual correction; with both kinds of negatives it is
the balance heuristic of multiple importance sampling. Collisions: a column holding the row's own positive
item (another row with the same item, or a random negative that drew it) is masked out (-inf): it is not a
negative. Repeats of some other item stay, as sampling with replacement expects.

Training (features, the step, recall evaluation, the loop) is in seqrec/retrieval/tower_training.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from seqrec.core.config import ConfigError, from_dict
from seqrec.datasets.schema import FIRST_ITEM
from seqrec.models.encoders import EncoderConfig, build_encoder
from seqrec.retrieval.config import RECALL_KS, TwoTowerConfig
from seqrec.retrieval.features import Features, FeatureSpec
from seqrec.training.checkpoints import load_checkpoint


class TwoTower(nn.Module):
    """users (B, T) windows + Features -> (B, D); items (...) ids -> (..., D); `item_table()` -> (I, D)."""

    def __init__(self, enc: EncoderConfig, user_spec: FeatureSpec, item_spec: FeatureSpec,
                 item_features: Features | None = None, temperature: float = 1.0) -> None:
        super().__init__()
        self.enc, self.user_spec, self.item_spec, self.temperature = enc, user_spec, item_spec, temperature
        self.encoder = build_encoder(enc)  # its output_weight is the item tower's id embedding
        d = enc.dim
        self.user_cat = nn.ModuleList(_zero(nn.Embedding(n, d)) for n in user_spec.cardinalities)
        self.user_num = _zero(nn.Linear(len(user_spec.numeric), d, bias=False)) if user_spec.numeric else None
        self.item_cat = nn.ModuleList(_zero(nn.Embedding(n, d)) for n in item_spec.cardinalities)
        self.item_num = _zero(nn.Linear(len(item_spec.numeric), d, bias=False)) if item_spec.numeric else None
        if item_features is None:  # unknown everywhere; a checkpoint's buffers overwrite these
            item_features = Features(torch.zeros(enc.num_items, len(item_spec.categorical), dtype=torch.long),
                                     torch.zeros(enc.num_items, len(item_spec.numeric)))
        self.register_buffer("item_cat_codes", item_features.categorical.clone())  # (I, Ci)
        self.register_buffer("item_num_values", item_features.numeric.clone())  # (I, Mi)

    @staticmethod
    def _features(cat: torch.Tensor, num: torch.Tensor, embs: nn.ModuleList,
                  proj: nn.Module | None) -> torch.Tensor | float:
        """Sum of a tower's feature embeddings and numeric projection, (..., D); 0.0 without features."""
        out: torch.Tensor | float = 0.0
        for j, emb in enumerate(embs):
            out = out + emb(cat[..., j])  # (..., D)
        if proj is not None:
            out = out + proj(num)  # (..., D)
        return out

    def user(self, items: torch.Tensor, features: Features | None = None) -> torch.Tensor:
        """(B, T) windows and optional user Features of B rows -> (B, D) user vectors. Without features the
        user-feature part is that of an unknown user (0)."""
        state = self.encoder.encode(items)  # (B, D)
        if features is None or not (self.user_cat or self.user_num is not None):
            return state
        f = features.to(state.device)
        return state + self._features(f.categorical, f.numeric, self.user_cat, self.user_num)

    def item(self, ids: torch.Tensor) -> torch.Tensor:
        """(...) item ids -> (..., D) item vectors: id embedding plus item features."""
        v = F.embedding(ids, self.encoder.output_weight)  # (..., D)
        return v + self._features(self.item_cat_codes[ids], self.item_num_values[ids], self.item_cat, self.item_num)

    @torch.no_grad()
    def item_table(self) -> torch.Tensor:
        """(I, D) every item's vector (padding and OOV rows included; the index drops them)."""
        return self.item(torch.arange(self.enc.num_items, device=self.item_cat_codes.device))

    def score(self, user: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """(B, D) user vectors, (B, K) ids -> (B, K) two-tower logits user . item / temperature."""
        return torch.einsum("bkd,bd->bk", self.item(ids), user) / self.temperature


def _zero(m: nn.Module) -> nn.Module:
    """A feature embedding or projection starting at zero: features do not move the initial scores."""
    nn.init.zeros_(m.weight)
    return m


def log_q(ids: torch.Tensor, item_prob: torch.Tensor, batch_size: int, random_negatives: int) -> torch.Tensor:
    """log E[count of each item `ids` among one row's sampled negatives]: (B - 1) in-batch draws from
    `item_prob` (I,) and M uniform draws over the I - 2 real items. (...) -> (...)"""
    uniform = random_negatives / (item_prob.shape[0] - FIRST_ITEM)
    return torch.log((batch_size - 1) * item_prob[ids] + uniform).clamp_min(-1e4)


def in_batch_softmax_loss(user: torch.Tensor, pos: torch.Tensor, pos_ids: torch.Tensor, temperature: float = 1.0,
                          pos_log_q: torch.Tensor | None = None, neg: torch.Tensor | None = None,
                          neg_ids: torch.Tensor | None = None, neg_log_q: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy of each row's positive among all the batch's candidates.

    user (B, D), pos (B, D) positive item vectors with ids (B,); optional shared negatives neg (M, D) with ids
    (M,); log-Q terms (B,) and (M,) are subtracted from their columns' logits when given. Columns holding the
    row's own positive item, other than its own, are masked. -> scalar
    """
    cand = pos if neg is None else torch.cat([pos, neg])  # (B + M, D)
    ids = pos_ids if neg_ids is None else torch.cat([pos_ids, neg_ids])  # (B + M,)
    logits = user @ cand.T / temperature  # (B, B + M)
    if pos_log_q is not None:
        logits = logits - (pos_log_q if neg_log_q is None else torch.cat([pos_log_q, neg_log_q]))  # (B, B + M)
    rows = torch.arange(user.shape[0], device=user.device)
    same = ids.unsqueeze(0) == pos_ids.unsqueeze(1)  # (B, B + M)
    same[rows, rows] = False  # the row's own positive stays
    logits = logits.masked_fill(same, -torch.inf)  # (B, B + M)
    return F.cross_entropy(logits, rows)


class RecallMetrics:
    """Share of targets among the first k candidates, per event type and over all ("all")."""

    def __init__(self, event_names: tuple[str, ...], ks: tuple[int, ...] = RECALL_KS) -> None:
        self.names, self.ks = event_names, ks
        self.hits: dict[tuple[str, int], int] = {}
        self.count: dict[str, int] = {}

    def add(self, ids: torch.Tensor, targets: torch.Tensor, events: torch.Tensor) -> None:
        """ids (B, K) candidates best first, targets (B,), events (B,) codes."""
        pos = ids == targets.unsqueeze(1)  # (B, K)
        first = torch.where(pos.any(1), pos.float().argmax(1), ids.shape[1])  # (B,) position of the target or K
        for name, mask in [("all", torch.ones_like(events, dtype=torch.bool))] + [
                (self.names[c], events == c) for c in torch.unique(events).tolist()]:
            self.count[name] = self.count.get(name, 0) + int(mask.sum())
            for k in self.ks:
                self.hits[(name, k)] = self.hits.get((name, k), 0) + int((first[mask] < k).sum())

    def result(self) -> dict[str, dict[str, float]]:
        """{event or "all": {"recall@50": ..., "count": n}}."""
        return {name: {**{f"recall@{k}": self.hits[(name, k)] / n for k in self.ks}, "count": n}
                for name, n in self.count.items() if n}


def session_features(spec: FeatureSpec, sessions: pd.DataFrame, session_ids: np.ndarray) -> Features:
    """Per-transition user Features (N, ...) from one row per session (`sessions`, indexed by session number,
    as `tower_features.session_rows` gives) and the transitions' session numbers (N,)."""
    rows = sessions.reindex(np.asarray(session_ids, np.int64))  # (N, columns); unknown sessions all missing
    return spec.encode(rows)


def load_two_tower(folder: Path, checkpoint: str = "best", device: str | torch.device = "cpu") -> TwoTower:
    """The trained two-tower model of RUN/retrieval (eval mode), from its config, features and checkpoint."""
    try:
        saved = json.loads((folder / "config.json").read_text())
        feats = json.loads((folder / "features.json").read_text())
    except FileNotFoundError:
        raise ConfigError(f"{folder}: no retrieval model (train with [retrieval] enabled = true)") from None
    path = folder / "checkpoints" / f"{checkpoint}.pt"
    if not path.exists():
        path = folder / "checkpoints" / "last.pt"
    if not path.exists():
        raise ConfigError(f"{folder}: the retrieval model has no checkpoint yet")
    cfg = from_dict(TwoTowerConfig, saved["retrieval"], "retrieval")
    model = TwoTower(from_dict(EncoderConfig, saved["encoder"], "encoder"), FeatureSpec.from_dict(feats["user"]),
                     FeatureSpec.from_dict(feats["item"]), temperature=cfg.temperature)
    model.load_state_dict(load_checkpoint(path, device)["model"])
    return model.to(device).eval()
