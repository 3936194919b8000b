"""A run's model against a rule on the same targets, paired: per target, hit@10 for each, the discordant counts
(model hits where the rule misses, and the reverse) and the exact two-sided sign test on them (McNemar's), and the
mean NDCG@10 difference with a paired bootstrap interval. Tells whether a small lead over a rule is more than chance.

    python experiments/paired_rule.py --run runs/ni_loo_tb_s0 --protocol loo --rule recent_category
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
from seqrec.datasets.features import item_category_codes
from seqrec.datasets.manifest import load_transitions

from seqrec.runs.config import saved_config
from seqrec.runs.learner import trained_learner
from seqrec.training.evaluation import category_scorer, popularity_scorer, recent_scorer
from seqrec.training.metrics import target_ranks

K = 10


def ranks_of(score_fn, arrays: dict, events: bool, batch: int = 1024) -> np.ndarray:
    """(N,) 0-based rank of every target of `arrays` under `score_fn` (the whole catalogue)."""
    out = []
    n = len(arrays["action"])
    with torch.no_grad():
        for lo in range(0, n, batch):
            idx = np.arange(lo, min(lo + batch, n))
            state = torch.from_numpy(np.asarray(arrays["state"][idx], np.int64))
            target = torch.from_numpy(np.asarray(arrays["action"][idx], np.int64))
            scores = (score_fn(state, torch.from_numpy(np.asarray(arrays["state_event"][idx], np.int64)))
                      if events else score_fn(state))
            out.append(target_ranks(scores.float(), target).numpy())
    return np.concatenate(out)


def sign_test(a: int, b: int) -> float:
    """Exact two-sided binomial p-value of a successes against b under p = 1/2 (McNemar's exact test)."""
    n, k = a + b, min(a, b)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--split", default="test", choices=("valid", "test"))
    ap.add_argument("--rule", default="recent_category", choices=("recent_category", "recent", "popularity"))
    ap.add_argument("--boot", type=int, default=2000, help="bootstrap resamples of the NDCG difference")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = saved_config(args.run)
    dev = torch.device("cpu")
    learner, _ = trained_learner(cfg, args.run, dev)
    arrays = load_transitions(cfg.data, args.split, events=learner.uses_events)
    actions = load_transitions(cfg.data, "train")["action"]
    n_items = cfg.encoder.num_items
    if args.rule == "recent_category":
        rule = category_scorer(actions, n_items, item_category_codes(cfg.data, n_items), dev)
    else:
        rule = (recent_scorer if args.rule == "recent" else popularity_scorer)(actions, n_items, dev)
    model_r, rule_r = ranks_of(learner.scores, arrays, learner.uses_events), ranks_of(rule, arrays, False)
    hit_m, hit_r = model_r < K, rule_r < K
    gain = lambda r: np.where(r < K, 1.0 / np.log2(r + 2.0), 0.0)  # noqa: E731
    diff = gain(model_r) - gain(rule_r)  # (N,)
    rng = np.random.default_rng(args.seed)
    boots = np.array([diff[rng.integers(0, len(diff), len(diff))].mean() for _ in range(args.boot)])
    only_m, only_r = int((hit_m & ~hit_r).sum()), int((hit_r & ~hit_m).sum())
    print(f"{args.run} against {args.rule}, {args.split} ({len(diff):,} targets, every event type)")
    print(f"HR@{K}: model {hit_m.mean():.4f}, rule {hit_r.mean():.4f}; model alone hits {only_m}, rule alone "
          f"{only_r}: sign test p = {sign_test(only_m, only_r):.3g}")
    print(f"NDCG@{K}: model {gain(model_r).mean():.4f}, rule {gain(rule_r).mean():.4f}; difference "
          f"{diff.mean():+.4f}, 95% bootstrap interval [{np.quantile(boots, 0.025):+.4f}, "
          f"{np.quantile(boots, 0.975):+.4f}]")


if __name__ == "__main__":
    main()
