"""Train every model config over several seeds on one prepared dataset and write a markdown results table.

Each (model, seed) is a run under OUT/<model>-seed<k> (config.json, checkpoints, TensorBoard); the table
gives mean and standard deviation over seeds of HR@10 and NDCG@10 for purchases and views on the test
split (the papers' protocol), with the popularity and recent-items baselines as the first rows.

    python experiments/train_table.py --data data/taobao --out runs/taobao --seeds 0,1,2
    python experiments/train_table.py --data data/yc --models sasrec,sasrec_sqn --set train.max_steps=1000
    python experiments/train_table.py --data data/yc --models sasrec_sqn,d3rlpy_dqn,d3rlpy_discrete_cql

The d3rlpy_* configs train d3rlpy's algorithms on the same encoder, ranked by their Q values (README).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from seqrec.runs.config import load_run_config
from seqrec.runs.evaluate import evaluate_run
from seqrec.runs.train import train

CONFIGS = Path(__file__).resolve().parent / "configs"
MODELS = ("sasrec", "sasrec_sqn", "sasrec_sac", "sasrec_snqn", "sasrec_sa2c", "gru4rec", "gru4rec_sqn",
          "d3rlpy_dqn", "d3rlpy_double_dqn", "d3rlpy_discrete_cql", "d3rlpy_discrete_bcq")
COLUMNS = (("purchase", "hr@10"), ("purchase", "ndcg@10"), ("view", "hr@10"), ("view", "ndcg@10"))


def run_one(model: str, seed: int, data: str, out: Path, overrides: list[str], checkpoint: str = "best") -> dict:
    """Train (or resume, or re-use) one model with one seed and return its test metrics at `checkpoint`."""
    run = out / f"{model}-seed{seed}"
    cfg = load_run_config(CONFIGS / f"{model}.toml", [*overrides, f"train.seed={seed}"], data)
    done = run / "checkpoints" / "last.json"
    finished = done.exists() and json.loads(done.read_text())["step"] >= cfg.train.max_steps
    if not finished:
        train(cfg, run, resume=(run / "checkpoints" / "last.pt").exists())
    loo = json.loads((Path(data) / "manifest.json").read_text())["config"]["split"] == "loo"
    return evaluate_run(run, "test", "loo" if loo else "sessions", checkpoint)


def cell(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="prepared-dataset folder")
    ap.add_argument("--out", type=Path, required=True, help="folder for the runs and table.md")
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated config names in experiments/configs")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override every config")
    ap.add_argument("--checkpoint", choices=("best", "last"), default="best",
                    help="the checkpoint to evaluate: best on validation (default) or the last one, to see what "
                         "selection hides; 'last' writes table_last.md")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict[str, list[dict]] = {}
    baselines: dict[str, dict] = {}
    for model in args.models.split(","):
        for seed in seeds:
            metrics = run_one(model, seed, args.data, args.out, args.set, args.checkpoint)
            results.setdefault(model, []).append(metrics["test"])
            baselines = {name: metrics[name]["test"] for name in ("popularity", "recent") if name in metrics}
            print(f"{model} seed {seed}: " + ", ".join(
                f"{ev} {m} {metrics['test'].get(ev, {}).get(m, float('nan')):.4f}" for ev, m in COLUMNS), flush=True)
    header = "| model | " + " | ".join(f"{ev} {m.upper()}" for ev, m in COLUMNS) + " |"
    lines = [header, "|---" * (len(COLUMNS) + 1) + "|"]
    for name, label in (("popularity", "popularity"), ("recent", "recent items (the window again, newest first)")):
        base = baselines.get(name, {})
        lines.append(f"| {label} | " + " | ".join(cell([base[ev][m]] if ev in base else []) for ev, m in COLUMNS)
                     + " |")
    for model, runs in results.items():
        cells = (cell([r[ev][m] for r in runs if ev in r]) for ev, m in COLUMNS)
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    note = (f"\n\n{len(seeds)} seeds ({args.seeds}); data {args.data}; overrides {args.set or 'none'}; "
            f"{args.checkpoint} checkpoint\n")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / ("table.md" if args.checkpoint == "best" else "table_last.md")).write_text(table + note)
    print(table + note)


if __name__ == "__main__":
    main()
