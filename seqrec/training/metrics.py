"""Ranking metrics of the papers' protocol: HR@k and NDCG@k over the whole catalogue, per event type.

Every target is ranked against every item (no sampled negatives, seen items not masked). Index 0
(padding) and 1 (out of vocabulary) are never recommended; a target outside the vocabulary is a miss.
Rank = number of items scored strictly higher than the target (ties in the target's favour).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from seqrec.datasets.schema import FIRST_ITEM

KS: tuple[int, ...] = (5, 10, 20)
RESERVED = FIRST_ITEM  # indices 0 (padding) and 1 (OOV) are never recommended


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based rank of each target among all items. scores: (B, I); targets: (B,) -> (B,) long.

    Reserved indices are excluded from the ranking; a reserved target gets rank I (a miss at every k).
    """
    target_score = scores.gather(1, targets.unsqueeze(1))  # (B, 1)
    # items above the target, less the reserved ones among them (no (B, I) copy to mask them out)
    ranks = (scores > target_score).sum(dim=1) - (scores[:, :RESERVED] > target_score).sum(dim=1)  # (B,)
    return torch.where(targets < RESERVED, torch.full_like(ranks, scores.shape[1]), ranks)


def hits_and_gains(ranks: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per target: 1 if ranked in the top k, and the NDCG gain 1 / log2(rank + 2) of such a hit."""
    hit = (ranks < k).float()
    gain = hit / torch.log2(ranks.float() + 2.0)
    return hit, gain


@dataclass
class RankingMetrics:
    """Accumulates HR@k and NDCG@k per event type over batches; `result()` gives the metrics dict."""

    event_names: tuple[str, ...]
    ks: tuple[int, ...] = KS
    _count: dict[str, int] = field(default_factory=dict)
    _sums: dict[tuple[str, str], float] = field(default_factory=dict)

    def add(self, ranks: torch.Tensor, events: torch.Tensor) -> None:
        """ranks: (B,) from target_ranks; events: (B,) event type codes of the targets."""
        ranks, events = ranks.cpu(), events.cpu().long()
        for code in torch.unique(events).tolist():
            name = self.event_names[code]
            r = ranks[events == code]
            self._count[name] = self._count.get(name, 0) + len(r)
            for k in self.ks:
                hit, gain = hits_and_gains(r, k)
                for metric, value in ((f"hr@{k}", hit.sum().item()), (f"ndcg@{k}", gain.sum().item())):
                    self._sums[(name, metric)] = self._sums.get((name, metric), 0.0) + value

    def result(self) -> dict[str, dict[str, float]]:
        """{event_type: {"hr@10": ..., "ndcg@10": ..., "count": n}} for every event type with targets."""
        out: dict[str, dict[str, float]] = {}
        for name in self.event_names:
            n = self._count.get(name, 0)
            if not n:
                continue
            row = {m: self._sums[(name, m)] / n for m in (f"{x}@{k}" for k in self.ks for x in ("hr", "ndcg"))}
            out[name] = {**row, "count": n}
        return out
