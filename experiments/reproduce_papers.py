"""Reproduce PAPERS.md's RC15 or RetailRocket rows with one command: prepare, train over seeds, compare.

    python experiments/reproduce_papers.py --dataset rc15 --input yoochoose-clicks.dat yoochoose-buys.dat
    python experiments/reproduce_papers.py --dataset retailrocket --input events.csv

1. `seqrec prepare --config experiments/configs/<dataset>_prepare.toml` into --data (default data/<dataset>;
   re-used when the input bytes and the config are unchanged);
2. experiments/train_table.py with the <dataset>_<model>.toml configs over --seeds (the papers average 5 runs)
   into --out (default runs/papers-<dataset>); finished runs are re-used and interrupted ones resume;
3. OUT/papers.md: the prepared data beside the papers' statistics, and the test metrics (mean ± sd over
   seeds) beside the published rows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "experiments" / "configs"
TRAIN_TABLE = ROOT / "experiments" / "train_table.py"
DATASETS = ("rc15", "retailrocket")
MODELS = ("sasrec", "sasrec_sqn", "sasrec_sac", "sasrec_snqn", "sasrec_sa2c")  # gru4rec also has configs
LABELS = {"sasrec": "SASRec", "sasrec_sqn": "SASRec-SQN", "sasrec_sac": "SASRec-SAC", "sasrec_snqn": "SASRec-SNQN",
          "sasrec_sa2c": "SASRec-SA2C", "gru4rec": "GRU4Rec"}
COLUMNS = (("purchase", "hr@10"), ("purchase", "ndcg@10"), ("view", "hr@10"), ("view", "ndcg@10"))

# PAPERS.md section 3 (data) and section 4 (purchase HR@10, NDCG@10, click HR@10, NDCG@10 on test)
PAPER_DATA = {"rc15": {"sessions": 200_000, "items": 26_702, "clicks": 1_110_965, "purchases": 43_946},
              "retailrocket": {"sessions": 195_523, "items": 70_852, "clicks": 1_176_680, "purchases": 57_269}}
PAPER_ROWS = {
    "rc15": {"sasrec": (0.5418, 0.3326, 0.4164, 0.2515), "sasrec_sqn": (0.5505, 0.3435, 0.4255, 0.2580),
             "sasrec_sac": (0.5701, 0.3623, 0.4114, 0.2480), "sasrec_sa2c": (0.5756, 0.3728, 0.4402, 0.2719)},
    "retailrocket": {"sasrec": (0.5916, 0.4510, 0.3085, 0.2107), "sasrec_sqn": (0.6203, 0.4806, 0.3302, 0.2279),
                     "sasrec_sac": (0.6127, 0.4844, 0.3208, 0.2230),
                     "sasrec_sa2c": (0.6437, 0.5246, 0.3409, 0.2416)},
}


def prepare(dataset: str, inputs: list[Path], data: Path, max_sessions: int | None) -> None:
    """The papers' preprocessing through `seqrec prepare` (one clear line and exit 2 on bad input)."""
    from seqrec.cli.main import main

    argv = ["prepare", "--config", str(CONFIGS / f"{dataset}_prepare.toml"), "--input", *map(str, inputs),
            "--out", str(data)]
    if max_sessions is not None:
        argv += ["--max-sessions", str(max_sessions)]
    rc = main(argv)
    if rc:
        raise SystemExit(rc)


def data_stats(data: Path) -> dict[str, int]:
    """Sessions, items, clicks and purchases of a prepared folder, counted as the papers count them."""
    m = json.loads((data / "manifest.json").read_text())
    types = pq.read_table(data / "events.parquet", columns=["event_type"]).column("event_type")
    counts = {d["values"]: d["counts"] for d in types.cast(pa.string()).value_counts().to_pylist()}
    return {"sessions": sum(s["sessions"] for s in m["splits"].values()), "items": m["items"],
            "clicks": counts.get("view", 0), "purchases": counts.get("purchase", 0)}


def cell(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def comparison(dataset: str, data: Path, out: Path, models: list[str], seeds: list[int]) -> str:
    """Markdown: the prepared data and the test metrics of each model beside PAPERS.md's numbers."""
    ours, paper = data_stats(data), PAPER_DATA[dataset]
    lines = ["| data | sessions | items | clicks | purchases |", "|---|---|---|---|---|",
             "| prepared | " + " | ".join(f"{ours[k]:,}" for k in paper) + " |",
             "| papers | " + " | ".join(f"{paper[k]:,}" for k in paper) + " |", "",
             "| model (test) | purchase HR@10 | purchase NDCG@10 | click HR@10 | click NDCG@10 |",
             "|---|---|---|---|---|"]
    for model in models:
        runs = [out / f"{dataset}_{model}-seed{s}" / "metrics.json" for s in seeds]
        metrics = [m["test"] for m in (json.loads(p.read_text()) for p in runs if p.exists()) if "test" in m]
        cells = [cell([r[ev][k] for r in metrics if ev in r]) for ev, k in COLUMNS]
        label = LABELS.get(model, model)
        lines.append(f"| {label} (seqrec, seeds: {len(metrics)}) | " + " | ".join(cells) + " |")
        published = PAPER_ROWS[dataset].get(model)
        if published:
            lines.append(f"| {label} (paper) | " + " | ".join(f"{v:.4f}" for v in published) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True, choices=DATASETS)
    ap.add_argument("--input", required=True, nargs="+", type=Path, metavar="FILE",
                    help="rc15: yoochoose-clicks.dat yoochoose-buys.dat; retailrocket: events.csv")
    ap.add_argument("--data", type=Path, help="prepared-dataset folder (default data/<dataset>)")
    ap.add_argument("--out", type=Path,
                    help="folder of the runs, table.md and papers.md (default runs/papers-<dataset>)")
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(LABELS)}")
    ap.add_argument("--seeds", default="0,1,2,3,4", help="training seeds (default 0-4: the papers average 5 runs)")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override every training config, e.g. --set train.device=cuda (repeatable)")
    ap.add_argument("--max-sessions", type=int, help="override the prepare config's session sample (a quick run)")
    args = ap.parse_args(argv)
    data = args.data or Path("data") / args.dataset
    out = args.out or Path("runs") / f"papers-{args.dataset}"
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    missing = [m for m in models if not (CONFIGS / f"{args.dataset}_{m}.toml").exists()]
    if missing:
        ap.error(f"no config experiments/configs/{args.dataset}_{missing[0]}.toml; models: {', '.join(LABELS)}")
    seeds = [int(s) for s in args.seeds.split(",")]

    prepare(args.dataset, args.input, data, args.max_sessions)
    cmd = [sys.executable, str(TRAIN_TABLE), "--data", str(data), "--out", str(out),
           "--models", ",".join(f"{args.dataset}_{m}" for m in models), "--seeds", ",".join(map(str, seeds))]
    for s in args.set:
        cmd += ["--set", s]
    rc = subprocess.run(cmd).returncode
    if rc:
        return rc
    text = comparison(args.dataset, data, out, models, seeds)
    (out / "papers.md").write_text(text)
    print(f"\n{text}\nwritten to {out / 'papers.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
