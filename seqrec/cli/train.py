"""`seqrec train`: train a run (encoder + head, or a d3rlpy algorithm) from a TOML run file."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    """Add the `train` subcommand to the subparsers `sub`."""
    tr = sub.add_parser("train", help="train an encoder with a supervised or Q-learning head on a prepared dataset",
                        description="Train from a TOML config ([data] dir, [encoder], [head], [train]; or "
                                    "algorithm = \"d3rlpy.dqn|double_dqn|discrete_cql|discrete_bcq\" with a "
                                    "[d3rlpy] table for d3rlpy's algorithms on our encoder); writes config.json, "
                                    "checkpoints/ and TensorBoard logs (tb/) under --out. Under torchrun "
                                    "(torchrun --nproc_per_node=N -m seqrec train ...) it trains data-parallel: "
                                    "train.batch_size is the global batch, rank 0 writes.")
    tr.add_argument("--config", required=True, type=Path, help="TOML run config")
    tr.add_argument("--data", help="prepared-dataset folder (overrides data.dir)")
    tr.add_argument("--out", type=Path, help="run folder (default runs/<config name>)")
    tr.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override any config field, e.g. --set train.max_steps=200 or --set "
                         "algorithm=d3rlpy.discrete_cql (repeatable)")
    tr.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    tr.add_argument("--device", choices=("auto", "cpu", "cuda"), help="shorthand for --set train.device=...")
    tr.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                    help="tqdm's progress bar (default: on a terminal; elsewhere, e.g. a log file, a plain "
                         "progress line on stderr every 10 s); --no-progress: neither")
    tr.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """seqrec train: run with parsed arguments; the exit status."""
    from seqrec.models.device import retain_heap
    from seqrec.runs.config import load_run_config
    from seqrec.runs.train import train
    from seqrec.training.distributed import from_env

    retain_heap()
    overrides = list(args.set) + ([f"train.device={args.device!r}".replace("'", '"')] if args.device else [])
    cfg = load_run_config(args.config, overrides, args.data)
    out = args.out or Path("runs") / args.config.stem
    result = train(cfg, out, resume=args.resume, progress=args.progress)
    rank = from_env()
    if rank is not None and not rank.main:  # under torchrun only rank 0 reports
        return 0
    best = result["best"]
    print(f"trained {out} to step {result['step']}: best {cfg.train.select_metric} = "
          f"{best if best is None else round(best, 4)} at step {result['best_step']}")
    if "calibration" in result:  # [head] copy_calibrate
        cal, value = result["calibration"], result["calibration"]["metric"]
        print(f"  gates calibrated on validation: offsets (copy, category) = {tuple(cal['chosen'])}, "
              f"{cfg.train.select_metric} = {value if value is None else round(value, 4)} "
              f"(every pair in {out / 'calibration.json'})")
    print(f"  checkpoints: {out / 'checkpoints'}   TensorBoard: tensorboard --logdir {out / 'tb'}")
    return 0
