"""Retrieve then re-rank: the decision pipeline from a window of items to a ranked shortlist, and its evaluation.

`rerank_batch(pipeline, items (B, T), users) -> Candidates`: the user tower encodes each window, the index
returns K candidates by two-tower score, the learner scores just those K (supervised score and Q value, by
gathering K rows: no catalogue-wide product for our learner), and the blend

    final = w_tt * two_tower + w_sup * supervised + w_q * Q

orders them. normalize = "zscore" (default) standardises each of the three over the row's candidates before
weighting: they live on unrelated scales (logits over a temperature, CE logits, discounted rewards), and
after z-scoring a weight is the relative importance of a score whatever its scale; "raw" blends them as
they are. A pure function of its inputs in no-grad mode: batch scoring calls it on bounded chunks.

Evaluation (`evaluate_pipeline`) uses the protocol of `seqrec evaluate` (seqrec/metrics.py) on the pipeline's
ranking: a target outside the K candidates is a miss at every k; inside, its rank is the number of
candidates with a strictly higher final score. Candidate recall@K is the share of targets among the
two-tower's first K (K = 50, 100, 200), per event type.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from seqrec.core.config import ConfigError
from seqrec.datasets.schema import FIRST_ITEM
from seqrec.retrieval.config import RECALL_KS, IndexConfig, RerankConfig
from seqrec.retrieval.features import Features, read_event_columns, session_rows
from seqrec.retrieval.index import Index, build_index
from seqrec.retrieval.two_tower import RecallMetrics, TwoTower, session_features
from seqrec.training.metrics import RankingMetrics, repeat_targets

# (B, T) windows, (B, K) candidate ids -> (B, K) supervised scores, (B, K) Q values or None (no Q head)
CandidateScorer = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


class Candidates(NamedTuple):
    """A ranked shortlist per window, best final score first; all (B, K)."""

    ids: torch.Tensor         # item ids (catalogue indices); 0 where an approximate index found fewer than K
    two_tower: torch.Tensor   # user . item / temperature
    supervised: torch.Tensor  # the learner's supervised score
    q: torch.Tensor           # the learner's Q value; NaN when it has no Q head
    final: torch.Tensor       # the blend; -inf for padding candidates


@dataclass
class Pipeline:
    """What rerank_batch needs: the user/item towers, an index over the item tower's table, the learner's
    candidate scorer and the blend."""

    tower: TwoTower
    index: Index
    scorer: CandidateScorer
    rerank: RerankConfig


def learner_scorer(learner: torch.nn.Module) -> CandidateScorer:
    """The learner's CandidateScorer: its `candidate_scores` (ours gathers just the K candidates' rows where that
    is cheaper; d3rlpy's gathers its full (B, I) scores and Q values)."""
    return learner.candidate_scores


def gather_scorer(scores: Callable[[torch.Tensor], torch.Tensor],
                  q_values: Callable[[torch.Tensor], torch.Tensor] | None = None) -> CandidateScorer:
    """A CandidateScorer from full-catalogue functions (B, T) -> (B, I), e.g. a d3rlpy learner's."""

    def score(items: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        sup = scores(items).gather(1, ids)  # (B, K)
        return sup, (q_values(items).gather(1, ids) if q_values is not None else None)

    return score


def _zscore(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, K) standardised over each row's valid entries (a constant row becomes 0)."""
    n = valid.sum(1, keepdim=True).clamp_min(1)  # (B, 1)
    xv = torch.where(valid, x, 0.0)
    mean = xv.sum(1, keepdim=True) / n  # (B, 1)
    var = (torch.where(valid, x - mean, 0.0) ** 2).sum(1, keepdim=True) / n  # (B, 1)
    std = var.sqrt()
    return (x - mean) / torch.where(std > 0, std, 1.0)


def blend(two_tower: torch.Tensor, supervised: torch.Tensor, q: torch.Tensor | None, cfg: RerankConfig,
          valid: torch.Tensor) -> torch.Tensor:
    """(B, K) scores and (B, K) bool mask of real candidates -> (B, K) final scores (-inf where not valid)."""
    final = torch.zeros_like(two_tower)
    for w, x in ((cfg.w_tt, two_tower), (cfg.w_sup, supervised), (cfg.w_q, q)):
        if w and x is not None:
            final = final + w * (_zscore(x, valid) if cfg.normalize == "zscore" else x)
    return final.masked_fill(~valid, -torch.inf)


def top_order(final: torch.Tensor, top: int | None = None) -> torch.Tensor:
    """(B, K) scores -> (B, top) column indices of each row's `top` best (all K if None), best first, ties in
    column order: exactly a stable descending sort's first `top`.

    A top-(top + 1) selection (3x cheaper than the sort at K = 200, top = 10) settles a row when its top + 1
    values are distinct (then both its members and their order are unique); rows with a tie or a NaN there
    fall back to the stable sort.
    """
    k = final.shape[1]
    if top is None or top >= k:
        return torch.sort(final, dim=1, descending=True, stable=True).indices[:, :top]
    values, order = torch.topk(final, top + 1, dim=1)  # (B, top + 1) each, sorted
    unsettled = (values[:, 1:] == values[:, :-1]).any(1) | values.isnan().any(1)  # (B,)
    order = order[:, :top]
    if unsettled.any():
        rows = unsettled.nonzero().squeeze(1)
        order[rows] = torch.sort(final[rows], dim=1, descending=True, stable=True).indices[:, :top]
    return order


def rerank(pipeline: Pipeline, items: torch.Tensor, ids: torch.Tensor, two_tower: torch.Tensor,
           top: int | None = None) -> Candidates:
    """Score the candidates `ids` (B, K) of windows `items` (B, T), blend, and keep the best `top` (all K if
    None), best first; ties keep the index's order."""
    valid = ids >= FIRST_ITEM  # (B, K)
    sup, q = pipeline.scorer(items, ids)  # (B, K), (B, K) or None
    final = blend(two_tower, sup, q, pipeline.rerank, valid)  # (B, K)
    order = top_order(final, top)  # (B, top)
    q = torch.full_like(sup, torch.nan) if q is None else q
    return Candidates(*(x.gather(1, order) for x in (ids, two_tower, sup, q, final)))


@torch.no_grad()
def rerank_batch(pipeline: Pipeline, items: torch.Tensor, users: Features | None = None, top: int | None = None,
                candidates: int | None = None) -> Candidates:
    """Windows (B, T) (+ user Features of B rows) -> the `top` best of `candidates` (default: the config's K)
    retrieved items per window, with two-tower score, supervised score, Q value and final score, each (B, top).

    Memory: the index's chunk buffer plus (B, K) tensors; call it on chunks of windows for bounded memory.
    """
    k = candidates or pipeline.rerank.candidates
    user = pipeline.tower.user(items, users)  # (B, D)
    tt, ids = pipeline.index.search(user, k)  # (B, K) raw dot products, (B, K)
    return rerank(pipeline, items, ids, tt / pipeline.tower.temperature, top)


def pipeline_ranks(c: Candidates, targets: torch.Tensor, num_items: int) -> torch.Tensor:
    """0-based rank of each target (B,) in the re-ranked candidates, as seqrec.training.metrics.target_ranks counts it
    (strictly higher final scores; ties in the target's favour); a target not among them gets `num_items`."""
    hit = c.ids == targets.unsqueeze(1)  # (B, K)
    target_final = torch.where(hit, c.final, -torch.inf).amax(1, keepdim=True)  # (B, 1)
    ranks = (c.final > target_final).sum(1)  # (B,)
    found = hit.any(1) & (targets >= FIRST_ITEM)
    return torch.where(found, ranks, torch.full_like(ranks, num_items))


@torch.no_grad()
def evaluate_pipeline(pipeline: Pipeline, arrays: dict[str, np.ndarray], users: Features | None,
                      event_names: tuple[str, ...], batch_size: int = 1024,
                      recall_ks: tuple[int, ...] = RECALL_KS) -> dict[str, dict]:
    """{"pipeline": HR/NDCG per event type of retrieve-then-re-rank (also on its "repeat" and "explore" targets,
    like `seqrec evaluate`'s model rows), "recall": candidate recall@k per event type for k in `recall_ks`
    (default 50, 100, 200)}."""
    device = next(pipeline.tower.parameters()).device
    num_items = pipeline.tower.enc.num_items
    k = pipeline.rerank.candidates
    ranking, recall = RankingMetrics(event_names), RecallMetrics(event_names, recall_ks)
    n = len(arrays["action"])
    for lo in range(0, n, batch_size):
        idx = np.arange(lo, min(lo + batch_size, n))
        items = torch.from_numpy(np.asarray(arrays["state"][idx], np.int64)).to(device)  # (B, T)
        targets = torch.from_numpy(np.asarray(arrays["action"][idx], np.int64)).to(device)  # (B,)
        events = torch.from_numpy(np.asarray(arrays["event"][idx], np.int64))  # (B,)
        user = pipeline.tower.user(items, users.rows(idx) if users is not None else None)  # (B, D)
        tt, ids = pipeline.index.search(user, max(k, *recall_ks))  # one search serves recall and re-ranking
        recall.add(ids.cpu(), targets.cpu(), events)
        c = rerank(pipeline, items, ids[:, :k], tt[:, :k] / pipeline.tower.temperature)
        ranking.add(pipeline_ranks(c, targets, num_items), events, repeat_targets(items, targets))
    return {"pipeline": ranking.result(), "recall": recall.result()}


@torch.no_grad()
def states_per_s(fn: Callable[[torch.Tensor, np.ndarray], object], arrays: dict[str, np.ndarray],
                 device: torch.device, batch_size: int = 1024, repeats: int = 3,
                 clock: Callable[[], float] = time.perf_counter) -> float:
    """Rate at which `fn(windows (B, T), row indices (B,))` gets through the split's states: the fastest of
    `repeats` passes after a warm-up batch (on a shared machine the fastest pass is the least disturbed one).
    Batches are read before the clock starts, so only `fn` is timed. `clock`: wall time by default;
    time.thread_time with torch.set_num_threads(1) gives CPU time, which other processes disturb far less."""
    n = len(arrays["action"])
    batches = [(torch.from_numpy(np.asarray(arrays["state"][lo:lo + batch_size], np.int64)).to(device),
                np.arange(lo, min(lo + batch_size, n))) for lo in range(0, n, batch_size)]
    if batches:
        fn(*batches[0])
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = clock()
        for x, idx in batches:
            fn(x, idx)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, clock() - t0)
    return n / max(best, 1e-9)


def split_users(tower: TwoTower, data: str | Path, arrays: dict[str, np.ndarray]) -> Features | None:
    """Per-transition user Features of a split, or None when the tower has no user features."""
    cols = tower.user_spec.columns
    if not cols:
        return None
    return session_features(tower.user_spec, session_rows(read_event_columns(data, cols), cols), arrays["session"])


def build_pipeline(tower: TwoTower, learner: torch.nn.Module, rerank_cfg: RerankConfig,
                   index_cfg: IndexConfig) -> Pipeline:
    """Compose a pipeline; a Q weight needs a learner with a Q head."""
    if rerank_cfg.w_q and not learner.has_q_head:
        raise ConfigError("rerank.w_q is set but the learner has no Q head (head.variant = 'ce')")
    return Pipeline(tower, build_index(tower.item_table(), index_cfg), learner_scorer(learner), rerank_cfg)


