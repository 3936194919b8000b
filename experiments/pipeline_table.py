"""Candidate generation and re-ranking against full-catalogue ranking: recall@K, HR/NDCG@10 and states/s.

Trains (or resumes) one run of a retrieval config on a prepared dataset (the learner, then the two-tower model),
then on the held-out split measures, in one process and over the same states:
- full catalogue: the learner's supervised scores over every item (what `seqrec evaluate` ranks), top 10;
- retrieve + re-rank: the two-tower's top K from each index (exact; faiss when installed), re-ranked by the
  config's blend, for each K; and at the largest K, each blend of `--blends` with the exact index.
Writes OUT/table.md (markdown) and prints it.

    python experiments/pipeline_table.py --data data/yc --out runs/pipeline_yc --steps 1500 --retrieval-steps 1000
    python experiments/pipeline_table.py --data data/taobao --out runs/pipeline_tb --index exact,faiss \\
        --set 'retrieval.item_categorical=["item_category"]'
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from seqrec.datasets.manifest import event_names, load_transitions, read_manifest
from seqrec.datasets.schema import FIRST_ITEM

from seqrec.core.config import ConfigError
from seqrec.models.device import retain_heap
from seqrec.retrieval.config import IndexConfig, RerankConfig
from seqrec.retrieval.rerank import build_pipeline, evaluate_pipeline, rerank_batch, split_users, states_per_s
from seqrec.retrieval.two_tower import load_two_tower
from seqrec.runs.config import load_run_config
from seqrec.runs.learner import build_learner
from seqrec.runs.train import train
from seqrec.training.checkpoints import load_checkpoint
from seqrec.training.evaluation import evaluate_arrays

CONFIG = Path(__file__).resolve().parent / "configs" / "sasrec_sqn_retrieval.toml"
TOP = 10


def parse_blend(text: str) -> RerankConfig:
    """'sup=1,q=0.5' -> RerankConfig(w_sup=1, w_q=0.5, w_tt=0); keys tt, sup, q."""
    weights = {"tt": 0.0, "sup": 0.0, "q": 0.0}
    for part in text.split(","):
        key, value = part.split("=")
        if key.strip() not in weights:
            raise SystemExit(f"--blends: unknown weight {key!r}; use tt, sup, q")
        weights[key.strip()] = float(value)
    return RerankConfig(w_tt=weights["tt"], w_sup=weights["sup"], w_q=weights["q"])


def blend_name(r: RerankConfig) -> str:
    return ", ".join(f"{k}={w:g}" for k, w in (("tt", r.w_tt), ("sup", r.w_sup), ("q", r.w_q)) if w)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="prepared-dataset folder")
    ap.add_argument("--out", type=Path, required=True, help="folder for the run and table.md")
    ap.add_argument("--config", type=Path, default=CONFIG, help="run config with [retrieval] (default: %(default)s)")
    ap.add_argument("--steps", type=int, help="learner steps (train.max_steps)")
    ap.add_argument("--retrieval-steps", type=int, help="two-tower steps (retrieval.max_steps)")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="config override")
    ap.add_argument("--split", default="test", choices=("valid", "test"))
    ap.add_argument("--candidates", default="50,100,200", help="K values (comma-separated)")
    ap.add_argument("--index", default="exact,faiss", help="indexes: exact and/or faiss (skipped if not installed)")
    ap.add_argument("--timing", default="cpu", choices=("cpu", "wall"),
                    help="cpu: states per CPU-second of one thread (steady on a busy machine); wall: wall clock")
    ap.add_argument("--blends", default="sup=1;sup=1,q=0.5;tt=1;tt=0.5,sup=1,q=0.5",
                    help="re-ranking blends tried at the largest K, ';'-separated")
    args = ap.parse_args()

    retain_heap()
    sets = list(args.set) + ["retrieval.enabled=true"]
    if args.steps:
        sets += [f"train.max_steps={args.steps}", f"train.eval_every={max(1, args.steps // 4)}"]
    if args.retrieval_steps:
        sets += [f"retrieval.max_steps={args.retrieval_steps}",
                 f"retrieval.eval_every={max(1, args.retrieval_steps // 4)}"]
    cfg = load_run_config(args.config, sets, args.data)
    run = args.out / "run"
    train(cfg, run, resume=(run / "checkpoints" / "last.pt").exists())

    device = torch.device("cpu")
    learner = build_learner(cfg, device)
    learner.load_state_dict(load_checkpoint(run / "checkpoints" / "best.pt", device)["model"])
    learner.eval()
    tower = load_two_tower(run / "retrieval")
    manifest = read_manifest(cfg.data)
    names = event_names(manifest)
    arrays = load_transitions(cfg.data, args.split)
    users = split_users(tower, cfg.data, arrays)
    full = evaluate_arrays(learner.scores, arrays, names, device, cfg.train.eval_batch_size)
    event = "purchase" if "purchase" in full else "view"
    threads = torch.get_num_threads()
    timing = {"clock": time.thread_time if args.timing == "cpu" else time.perf_counter}

    def rate(fn) -> float:
        """states/s of fn: CPU time of 1 thread (--timing cpu), or wall time with the default threads."""
        faiss = sys.modules.get("faiss")  # its OpenMP threads too: thread_time counts the calling thread only
        omp = faiss.omp_get_max_threads() if faiss else 0
        if args.timing == "cpu":
            torch.set_num_threads(1)
            if faiss:
                faiss.omp_set_num_threads(1)
        try:
            return states_per_s(fn, arrays, device, **timing)
        finally:
            torch.set_num_threads(threads)
            if faiss:
                faiss.omp_set_num_threads(omp)

    with torch.no_grad():
        full_rate = rate(lambda x, i: torch.topk(learner.scores(x), TOP, dim=1))
    items = manifest["catalogue_size"] - FIRST_ITEM
    rows = [("full catalogue", f"{items:,}", "supervised", 1.0, full[event], full_rate)]

    ks = [int(k) for k in args.candidates.split(",")]
    indexes = [IndexConfig()] if "exact" in args.index else []
    if "faiss" in args.index:
        if importlib.util.find_spec("faiss") is None:
            print("faiss is not installed (pip install 'seqrec[ann]'): faiss rows skipped")
        else:
            indexes.append(replace(cfg.index, kind="faiss"))
    blends = [(k, idx, cfg.rerank) for idx in indexes for k in ks]
    blends += [(max(ks), IndexConfig(), parse_blend(b)) for b in args.blends.split(";")]
    blends = list(dict.fromkeys(blends))  # the config's own blend is often among --blends
    for k, idx, rerank_cfg in blends:
        try:
            p = build_pipeline(tower, learner, replace(rerank_cfg, candidates=k), idx)
        except ConfigError:  # a Q weight with a learner that has no Q head
            continue
        res = evaluate_pipeline(p, arrays, users, names, cfg.train.eval_batch_size, recall_ks=(k,))
        speed = rate(lambda x, i, p=p: rerank_batch(p, x, users.rows(i) if users is not None else None, TOP))
        label = "exact" if idx.kind == "exact" else f"faiss {idx.faiss_type}"
        rows.append((label, str(k), blend_name(rerank_cfg), res["recall"]["all"][f"recall@{k}"],
                     res["pipeline"][event], speed))

    recall = json.loads((run / "retrieval" / "checkpoints" / "best.json").read_text())["valid"]["all"]
    lines = [f"{args.split} split of {cfg.data}, {event} targets ({full[event]['count']:,}); top {TOP}; "
             + ("states/s = per CPU-second of 1 thread" if args.timing == "cpu" else f"states/s: wall clock, "
                f"{threads} threads") + "; two-tower valid recall@50/100/200 = "
             + "/".join(f"{recall[f'recall@{k}']:.4f}" for k in (50, 100, 200)), "",
             "| ranking | K | blend | recall@K | HR@10 | NDCG@10 | states/s |", "|---" * 7 + "|"]
    for label, k, blend, rec, m, speed in rows:
        lines.append(f"| {label} | {k} | {blend} | {rec:.4f} | {m['hr@10']:.4f} | {m['ndcg@10']:.4f} | {speed:,.0f} |")
    table = "\n".join(lines) + "\n"
    (args.out / "table.md").write_text(table)
    print(table, end="")


if __name__ == "__main__":
    main()
