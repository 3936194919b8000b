"""How far a trained repeat-aware mixture's ranking is from its best mixing, measured on one split: the run's
model with its two gate logits shifted (copy gate g by `a`, category gate h by `b`), beside the category rule.

A shift of +inf on g ranks every window item first (the rules' order); +inf on h gives the catalogue's softmax no
share. `--newest-first ALPHA` also replaces the category component's weights by exp(-ALPHA x recency of the
category's newest position) times the training popularity, which at large ALPHA and shifts is the category rule
itself: what is left between the model and the rule is then the learnt parts' share. Validation only (choose on it).

    python experiments/mixture_gates.py --run runs/ni_loo_tb_s0 --split valid
    python experiments/mixture_gates.py --run runs/ni_loo_tb_s0 --split valid --newest-first 10
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from seqrec.datasets.features import item_category_codes
from seqrec.datasets.manifest import event_names, load_transitions, read_manifest

from seqrec.models.repeat import CopyState, mix_all
from seqrec.runs.config import saved_config
from seqrec.runs.learner import trained_learner
from seqrec.training.evaluation import category_scorer, evaluate_arrays, recent_scorer

SHIFTS = (0.0, 2.0, 4.0, 8.0, 20.0)


def shifted(cs: CopyState, a: float, b: float) -> CopyState:
    """The same mixture with logit(g) + a and logit(h) + b (rows with nothing to copy or no category unchanged)."""
    log_not_g = torch.logaddexp(cs.log_rest, cs.log_cat_gate)  # (B,) log (1 - g)
    z_g = cs.log_gate - log_not_g  # (B,) logit g; -inf where nothing is copyable
    z_h = cs.log_cat_gate - cs.log_rest  # (B,) logit h; -inf without a category
    some, has = torch.isfinite(cs.log_gate), torch.isfinite(cs.log_cat_gate)
    log_gate = torch.where(some, F.logsigmoid(z_g + a), cs.log_gate)
    not_g = torch.where(some, F.logsigmoid(-(z_g + a)), log_not_g)
    return replace(cs, log_gate=log_gate,
                   log_cat_gate=torch.where(has, not_g + F.logsigmoid(z_h + b), cs.log_cat_gate),
                   log_rest=torch.where(has, not_g + F.logsigmoid(-(z_h + b)), not_g))


def newest_first(cs: CopyState, alpha: float, log_pop: torch.Tensor, categories: int) -> torch.Tensor:
    """(B, I) log of the category component made the rule's: weight exp(-alpha x recency of the item's category's
    newest window position) x training popularity, over the items of the window's categories."""
    b, t = cs.window.shape
    recency = torch.arange(t - 1, -1, -1, dtype=torch.float32, device=cs.window.device).expand(b, -1)  # (B, T)
    cats = cs.codes[cs.window]  # (B, T)
    ok = cs.copyable & (cats > 0)
    newest = torch.full((b, categories), float(t), device=cs.window.device).scatter_reduce(
        1, cats, torch.where(ok, recency, float(t)), reduce="amin")  # (B, C) t: not in the window
    rc = newest.index_select(1, cs.codes)  # (B, I)
    score = torch.where((rc < t) & (cs.codes > 0), -alpha * rc + log_pop, -torch.inf)  # (B, I)
    return torch.log_softmax(torch.where(torch.isfinite(score).any(1, keepdim=True), score, 0.0), dim=1)


def scorer(learner, a: float, b: float, alpha: float | None, log_pop: torch.Tensor, categories: int):
    """(B, T) windows [, (B, T) events] -> (B, I) the shifted mixture's log-probabilities."""
    def score(items: torch.Tensor, events: torch.Tensor | None = None) -> torch.Tensor:
        cs, logits = learner.mixture_parts(items, events)
        cs = shifted(cs, a, b)
        if alpha is None:
            return mix_all(cs, logits)
        # the category component replaced: (1 - g)(h rule + (1 - h) softmax), window items mixed as in mix_all
        no_cat = replace(cs, log_cat=None, log_cat_gate=None)
        base = mix_all(no_cat, logits)  # (B, I): g copy + (1 - g)(1 - h) softmax
        return torch.logaddexp(base, cs.log_cat_gate.unsqueeze(1) + newest_first(cs, alpha, log_pop, categories))
    return score


def row(name: str, metrics: dict, event: str) -> str:
    m = metrics.get(event) or metrics["view"]
    rep, exp = m.get("repeat", {}), m.get("explore", {})
    return (f"| {name} | {m['hr@10']:.4f} | {m['ndcg@10']:.4f} | {rep.get('hr@10', float('nan')):.4f} | "
            f"{exp.get('hr@10', float('nan')):.4f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="a run trained with [head] copy_category = true")
    ap.add_argument("--split", default="valid", choices=("train", "valid", "test"))
    ap.add_argument("--event", default="view", help="event type whose targets the table reports")
    ap.add_argument("--newest-first", type=float, default=None, metavar="ALPHA",
                    help="replace the category weights by the rule's newest-first order at this sharpness")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = saved_config(args.run)
    dev = torch.device("cpu")
    learner, _ = trained_learner(cfg, args.run, dev)
    names = event_names(read_manifest(cfg.data))
    arrays = load_transitions(cfg.data, args.split, events=learner.uses_events)
    actions = load_transitions(cfg.data, "train")["action"]
    n = cfg.encoder.num_items
    log_pop = torch.from_numpy(np.log1p(np.bincount(actions, minlength=n)).astype(np.float32))  # (I,)
    print(f"{args.run} on {args.split}, {args.event} targets"
          + (f", category weights newest-first (alpha {args.newest_first})" if args.newest_first else ""))
    print("| mixing | HR@10 | NDCG@10 | repeat HR@10 | explore HR@10 |\n|---|---|---|---|---|")
    codes = item_category_codes(cfg.data, n)
    for name, fn in (("recent items", recent_scorer(actions, n, dev)),
                     ("recent_category", category_scorer(actions, n, codes, dev))):
        print(row(name, evaluate_arrays(fn, arrays, names, dev, 1024, split_repeat=True), args.event), flush=True)
    for a in SHIFTS:
        for b in SHIFTS:
            fn = scorer(learner, a, b, args.newest_first, log_pop, cfg.encoder.categories)
            m = evaluate_arrays(fn, arrays, names, dev, 1024, split_repeat=True, events=learner.uses_events)
            print(row(f"g {a:+g}, h {b:+g}", m, args.event), flush=True)


if __name__ == "__main__":
    main()
