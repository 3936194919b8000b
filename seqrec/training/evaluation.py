"""Full-catalogue ranking metrics of a scorer over transition arrays, and the two simple baselines beside it."""

from __future__ import annotations

import numpy as np
import torch

from seqrec.datasets.schema import OOV
from seqrec.training.metrics import RankingMetrics, repeat_targets, target_ranks


@torch.no_grad()
def evaluate_arrays(score_fn, arrays: dict[str, np.ndarray], event_names: tuple[str, ...], device: torch.device,
                    batch_size: int = 1024, split_repeat: bool = False, events: bool = False) -> dict[str, dict]:
    """HR/NDCG@k per event type: every transition's action is a target ranked over the whole catalogue.

    split_repeat: each event type's row also gets "repeat" and "explore" (targets in their window or not);
    events: score_fn takes the windows' (B, T) event codes + 1 too (arrays["state_event"]; [encoder] events)."""
    metrics = RankingMetrics(event_names)
    n = len(arrays["action"])
    for lo in range(0, n, batch_size):
        idx = np.arange(lo, min(lo + batch_size, n))
        state = torch.from_numpy(np.asarray(arrays["state"][idx], np.int64)).to(device)
        target = torch.from_numpy(np.asarray(arrays["action"][idx], np.int64)).to(device)
        if events:
            state_event = torch.from_numpy(np.asarray(arrays["state_event"][idx], np.int64)).to(device)  # (B, T)
            scores = score_fn(state, state_event)  # (B, I)
        else:
            scores = score_fn(state)  # (B, I)
        ranks = target_ranks(scores.float(), target)
        repeat = repeat_targets(state, target) if split_repeat else None  # (B,) bool
        metrics.add(ranks, torch.from_numpy(np.asarray(arrays["event"][idx], np.int64)), repeat)
    return metrics.result()


def item_counts(train_actions: np.ndarray, num_items: int, device: torch.device) -> torch.Tensor:
    """(I,) float32 count of each item as a training target: what both baselines rank by."""
    counts = np.bincount(np.asarray(train_actions), minlength=num_items).astype(np.float32)
    return torch.from_numpy(counts).to(device)


def popularity_scorer(train_actions: np.ndarray, num_items: int, device: torch.device):
    """Scores every state with the item counts of the training split (the papers' popularity baseline)."""
    counts = item_counts(train_actions, num_items, device)
    return lambda state: counts.expand(state.shape[0], -1)


def recent_scorer(train_actions: np.ndarray, num_items: int, device: torch.device):
    """Scores the window's own items first, newest first, then the rest by training popularity: the
    "show it again" baseline, strong where users return to items they just saw (Taobao's repeat purchases)."""
    counts = item_counts(train_actions, num_items, device)
    popular = counts / (counts.max() + 1.0)  # (I,) in [0, 1): below any window item

    def score(state: torch.Tensor) -> torch.Tensor:  # (B, T) windows -> (B, I)
        b, t = state.shape
        out = popular.expand(b, -1).clone()  # (B, I)
        recency = (2.0 + torch.arange(t, device=device, dtype=torch.float32)).expand(b, -1)  # (B, T) newest largest
        out.scatter_reduce_(1, state.long(), recency, reduce="amax")  # a repeated item keeps its newest column
        out[:, : OOV + 1] = -1.0  # padding and the out-of-vocabulary id are never recommended
        return out

    return score


def category_scorer(train_actions: np.ndarray, num_items: int, codes: np.ndarray, device: torch.device):
    """The recent-items rule, then the items of the window's categories (the newest category first, each by
    training popularity), then the rest by popularity: the rule a category-aware model must beat. `codes` (I,)
    each item's category code, 0 none (datasets.features.item_category_codes)."""
    counts = item_counts(train_actions, num_items, device)
    popular = counts / (counts.max() + 1.0)  # (I,) in [0, 1)
    cats = torch.from_numpy(np.asarray(codes, np.int64)).to(device)  # (I,)
    n_cats = int(cats.max()) + 1

    def score(state: torch.Tensor) -> torch.Tensor:  # (B, T) windows -> (B, I)
        b, t = state.shape
        state = state.long()
        recency = (1.0 + torch.arange(t, device=device, dtype=torch.float32)).expand(b, -1)  # (B, T) newest largest
        pos_cats = cats[state]  # (B, T)
        seen = torch.zeros(b, n_cats, device=device).scatter_reduce_(1, pos_cats, recency * (pos_cats > 0),
                                                                     reduce="amax")  # (B, C) 0: not in window
        cat_rank = seen.index_select(1, cats)  # (B, I) the item's category's recency, 0 if not browsed
        out = torch.where(cat_rank > 0, 1.0 + cat_rank + popular, popular)  # (B, I) browsed categories above
        out.scatter_reduce_(1, state, t + 2.0 + recency, reduce="amax")  # the window's items above all, newest first
        out[:, : OOV + 1] = -1.0
        return out

    return score


def selected_metric(metrics: dict, event: str, metric: str) -> float | None:
    """The selection metric; falls back to view events when the data has no events of the named type."""
    row = metrics.get(event) or metrics.get("view")
    return None if row is None else row.get(metric)
