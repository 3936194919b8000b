"""Ranking metrics of the papers' protocol: HR@k and NDCG@k over the whole catalogue, per event type.

Every target is ranked against every item (no sampled negatives, seen items not masked). Index 0
(padding) and 1 (out of vocabulary) are never recommended; a target outside the vocabulary is a miss.
Rank = number of items scored strictly higher than the target (ties in the target's favour).
With a repeat mask, every metric is also given for repeat targets (the target is in the input window) and
explore targets (it is not): repetition is an easy shortcut that hides how little a model explores.
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


def repeat_targets(state: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B,) bool: the target is among the items of its input window. state: (B, T); targets: (B,).

    Padding is no item; a reserved target (padding or out of vocabulary: no known item) is never a repeat."""
    in_window = (state == targets.unsqueeze(1)).any(dim=1)  # (B,)
    return in_window & (targets >= RESERVED)


GROUPS: tuple[str, ...] = ("repeat", "explore")  # the two parts of a split by repeat mask, in this order


@dataclass
class RankingMetrics:
    """Accumulates HR@k and NDCG@k per event type over batches; `result()` gives the metrics dict. Batches added
    with a repeat mask also fill the "repeat" and "explore" parts of each event type's row."""

    event_names: tuple[str, ...]
    ks: tuple[int, ...] = KS
    _count: dict[tuple[str, str], int] = field(default_factory=dict)  # (event, group) -> targets
    _sums: dict[tuple[str, str, str], float] = field(default_factory=dict)  # (event, group, metric) -> sum
    _split: bool = False  # whether any batch came with a repeat mask

    def add(self, ranks: torch.Tensor, events: torch.Tensor, repeat: torch.Tensor | None = None) -> None:
        """ranks: (B,) from target_ranks; events: (B,) event type codes of the targets; repeat: (B,) bool, True
        where the target is in its input window (see `repeat_targets`), or None not to split."""
        ranks, events = ranks.cpu(), events.cpu().long()
        if repeat is not None:
            self._split = True
            repeat = repeat.cpu().bool()
        for code in torch.unique(events).tolist():
            name = self.event_names[code]
            of_event = events == code  # (B,)
            self._accumulate(name, "all", ranks[of_event])
            if repeat is not None:
                self._accumulate(name, "repeat", ranks[of_event & repeat])
                self._accumulate(name, "explore", ranks[of_event & ~repeat])

    def _accumulate(self, name: str, group: str, r: torch.Tensor) -> None:
        """Adds the hits and gains of ranks `r` (one event type, one group) to the running sums."""
        self._count[(name, group)] = self._count.get((name, group), 0) + len(r)
        for k in self.ks:
            hit, gain = hits_and_gains(r, k)
            for metric, value in ((f"hr@{k}", hit.sum().item()), (f"ndcg@{k}", gain.sum().item())):
                key = (name, group, metric)
                self._sums[key] = self._sums.get(key, 0.0) + value

    def _row(self, name: str, group: str) -> dict[str, float | int | None]:
        """{"hr@5", ..., "count": n} of one event type and group; the metrics are None where n is 0."""
        n = self._count.get((name, group), 0)
        names = (f"{x}@{k}" for k in self.ks for x in ("hr", "ndcg"))
        return {**{m: self._sums[(name, group, m)] / n if n else None for m in names}, "count": n}

    def result(self) -> dict[str, dict]:
        """{event_type: {"hr@10": ..., "ndcg@10": ..., "count": n}} for every event type with targets; with repeat
        masks each row also has "repeat" and "explore": {"hr@10": ..., "count": n}, the counts summing to n."""
        out: dict[str, dict] = {}
        for name in self.event_names:
            if not self._count.get((name, "all"), 0):
                continue
            out[name] = self._row(name, "all")
            if self._split:
                out[name].update({group: self._row(name, group) for group in GROUPS})
        return out
