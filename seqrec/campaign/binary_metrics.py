"""Metrics of a yes/no classifier, written out by hand (no scikit-learn): AUC, confusion matrix, and what
follows from it, plus the decision threshold picked on a validation set.

AUC is the rank statistic (Mann-Whitney): the probability that a random positive scores above a random
negative, ties counting one half, computed from mid-ranks so tied scores get the mean of their ranks.
A row is predicted positive when its score is >= the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of scores (N,) for bool labels (N,); NaN when a class is absent."""
    s = np.asarray(scores, np.float64)
    y = np.asarray(labels, bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    # mid-rank of each distinct value (1-based): ranks before it, plus the mean of its own (1 + count) / 2
    mid = np.cumsum(counts) - counts + (counts + 1) / 2.0  # (U,)
    rank_sum = float(mid[inverse][y].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


@dataclass(frozen=True)
class Confusion:
    """Counts of a thresholded prediction: true/false negatives and positives."""

    tn: int
    fp: int
    fn: int
    tp: int

    @classmethod
    def of(cls, predicted: np.ndarray, labels: np.ndarray) -> Confusion:
        """From bool predictions (N,) and bool labels (N,)."""
        p, y = np.asarray(predicted, bool), np.asarray(labels, bool)
        return cls(int((~p & ~y).sum()), int((p & ~y).sum()), int((~p & y).sum()), int((p & y).sum()))

    @property
    def n(self) -> int:
        return self.tn + self.fp + self.fn + self.tp

    @property
    def accuracy(self) -> float:
        return _ratio(self.tp + self.tn, self.n)

    @property
    def precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        """True-positive rate (sensitivity)."""
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def specificity(self) -> float:
        """True-negative rate."""
        return _ratio(self.tn, self.tn + self.fp)

    @property
    def balanced_accuracy(self) -> float:
        """Mean of the two classes' recalls: the accuracy the same rule would have on a balanced set."""
        return (self.recall + self.specificity) / 2.0

    @property
    def f1(self) -> float:
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)


def _ratio(a: int, b: int) -> float:
    """a / b, 0.0 when b is 0 (e.g. precision with no positive prediction)."""
    return a / b if b else 0.0


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The score threshold (predict positive when score >= it) with the highest balanced accuracy on these rows
    (Youden's J); among equal ones the highest threshold. Needs both classes."""
    s = np.asarray(scores, np.float64)
    y = np.asarray(labels, bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("best_threshold needs both classes")
    values, inverse = np.unique(s, return_inverse=True)  # ascending
    pos_at = np.bincount(inverse, weights=y.astype(np.float64), minlength=len(values))  # (U,) positives at each value
    neg_at = np.bincount(inverse, weights=(~y).astype(np.float64), minlength=len(values))
    # threshold = values[u]: predicted positive = every row with a value >= values[u]
    tpr = np.cumsum(pos_at[::-1])[::-1] / n_pos  # (U,)
    tnr = 1.0 - np.cumsum(neg_at[::-1])[::-1] / n_neg
    j = tpr + tnr
    best = int(np.flatnonzero(j == j.max())[-1])
    return float(values[best])


def report(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """accuracy, balanced_accuracy, auc, precision, recall, f1 and the tn/fp/fn/tp counts at `threshold`."""
    c = Confusion.of(np.asarray(scores) >= threshold, labels)
    return {"accuracy": c.accuracy, "balanced_accuracy": c.balanced_accuracy, "auc": auc(scores, labels),
            "precision": c.precision, "recall": c.recall, "f1": c.f1,
            "tn": c.tn, "fp": c.fp, "fn": c.fn, "tp": c.tp}
