"""Train every model config over several seeds on one prepared dataset and write a markdown results table.

Each (model, seed) is a run under OUT/<model>-seed<k> (config.json, checkpoints, TensorBoard); the table
gives mean and standard deviation over seeds of HR@10 and NDCG@10 for purchases and views on the test
split (the papers' protocol), with the popularity and recent-items baselines as the first rows; a second table
gives the same on repeat targets (the target is in the input window) and explore targets (it is not).

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
GROUPS = ("repeat", "explore")  # the keys of metrics.json's split of each event type's targets


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


def cell(values: list[float | None]) -> str:
    """mean ± sd of the values that exist ("-" when none: no targets of that kind)."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def group_value(row: dict, event: str, group: str, metric: str) -> float | None:
    """One split's metric on the repeat or explore targets of an event type; None where absent."""
    return row.get(event, {}).get(group, {}).get(metric)


def markdown(rows: list[tuple[str, list[dict]]], header: list[str], value) -> list[str]:
    """A markdown table: one line per (label, metrics of each seed), a cell per header column by `value(row, i)`."""
    lines = ["| model | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    for label, runs in rows:
        lines.append(f"| {label} | " + " | ".join(cell([value(r, i) for r in runs]) for i in range(len(header)))
                     + " |")
    return lines


def repeat_shares(row: dict) -> str:
    """How many test targets of each event type are repeats: the same for every model (a property of the data)."""
    parts = [f"{ev} {row[ev]['repeat']['count']:,} of {row[ev]['count']:,} "
             f"({row[ev]['repeat']['count'] / row[ev]['count']:.1%})"
             for ev in dict.fromkeys(ev for ev, _ in COLUMNS) if "repeat" in row.get(ev, {})]
    return "repeat targets (in the input window): " + (", ".join(parts) or "none")


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
            baselines = {name: metrics[name]["test"] for name in ("popularity", "recent", "recent_category")
                         if name in metrics}
            print(f"{model} seed {seed}: " + ", ".join(
                f"{ev} {m} {metrics['test'].get(ev, {}).get(m, float('nan')):.4f}" for ev, m in COLUMNS), flush=True)
    labels = (("popularity", "popularity"), ("recent", "recent items (the window again, newest first)"),
              ("recent_category", "recent items, then the window's categories' popular items"))
    # the category rule only where the runs have categories; the other two always (empty on old metrics.json)
    rows = [(label, [baselines.get(name, {})]) for name, label in labels
            if name != "recent_category" or name in baselines] + list(results.items())
    overall = markdown(rows, [f"{ev} {m.upper()}" for ev, m in COLUMNS],
                       lambda r, i: r.get(COLUMNS[i][0], {}).get(COLUMNS[i][1]))
    events = dict.fromkeys(ev for ev, _ in COLUMNS)  # purchase, view
    split_cols = [(ev, g, m) for ev in events for g in GROUPS for m in ("hr@10", "ndcg@10")]
    by_kind = markdown(rows, [f"{ev} {g} {m.upper()}" for ev, g, m in split_cols],
                       lambda r, i: group_value(r, *split_cols[i]))
    first = next(iter(results.values()))[0] if results else {}
    table = "\n".join(overall) + "\n\n" + "\n".join(by_kind) + "\n\n" + repeat_shares(first)
    note = (f"\n\n{len(seeds)} seeds ({args.seeds}); data {args.data}; overrides {args.set or 'none'}; "
            f"{args.checkpoint} checkpoint\n")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / ("table.md" if args.checkpoint == "best" else "table_last.md")).write_text(table + note)
    print(table + note)


if __name__ == "__main__":
    main()
