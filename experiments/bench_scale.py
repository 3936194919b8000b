"""Scale-out benchmark (issue 8), in one run: training samples per second for 1 process and for 2 DDP ranks
on this machine (section `train`), and scoring sessions per second for the local and the Ray engine on the
same sessions (section `score`): `--sections train,score`.

Training section. One synthetic log (`--events`, `--items`) is prepared once under `--work`; then `seqrec
train` runs as a fresh process per configuration, all with the same config (`--config`, default
sasrec_sqn.toml: SASRec-SQN, width 64) and the same global batch (`--batch`, 256):

  1 process x T threads         python -m seqrec train ...                 (OMP_NUM_THREADS=T)
  2 ranks x T threads each       torchrun --standalone --nproc_per_node=2 -m seqrec train ...  (gloo)
  1 process x 2T threads         the same cores as the 2 ranks, used by one process instead (--same-cores)

T is `--threads` (1). A distributed run's batch is global (seqrec/distributed.py): each of the 2 ranks
trains on batch / 2 rows a step and they average gradients, so "samples/s" counts the same samples in every
row and the rows compare directly. Figures come from the runs' own TensorBoard logs: samples/s is the
median of `perf/samples_per_s` over the log windows after the first (the first holds warm-up); start-up is
the time from launching the command to the first training step (the hyper-parameter table is written just
before it: interpreter, imports, process group, model and data); wall is the whole command, start-up and
the one validation at the end included. `--repeats R` runs every configuration R times in rotation (the
machine is shared, so absolute figures move) and reports the median.

    python experiments/bench_scale.py                                   # defaults: 300 steps, 26,702 items
    python experiments/bench_scale.py --events 20000 --items 500 --steps 6 --log-every 2 --batch 32   # smoke

Scoring section. A run and a scoring log are built once under `--work`/score the way bench_score.py builds
them (SASRec-SQN width 64 with the two-tower candidate generator, `--score-train-steps` steps each, trained on
`--score-train-users` generated users plus one view of every item; a log of about `--score-sessions`
sessions from the same generator). Then `seqrec score` runs as a fresh process per engine on that log, same
settings (exact index, 200 candidates, top 10, batches of `--score-batch`):

  local   seqrec score ... --workers C                      (C = this machine's cores, one torch thread each)
  ray     seqrec score ... --engine ray                     (a local Ray of C CPUs started by the command,
                                                             or --ray-address's cluster: as many actors as
                                                             --workers, 1/2 CPU and one torch thread each)

From each process's wall time and its manifest's timings: start-up = interpreter and imports, the run loaded,
and for Ray `ray.init` plus the actor pool (pipeline start to the last actor's run loaded); read = reading,
validating and scattering the input (pass 1, the same code in both); scoring = the rest of the work
(duplicates, sessions, scoring, writing; for Ray the driver's session cut plus the pipeline after the actors
were ready). sessions/s is given over scoring alone and over the whole wall time.

    python experiments/bench_scale.py --sections train,score            # both halves, defaults
    python experiments/bench_scale.py --sections score --score-sessions 2000 --items 500 --score-train-users 300 \
        --score-train-steps 2 --events 3000 --work /tmp/b                  # smoke

Adding a section: write `section_NAME(args, data) -> Table` and add it to SECTIONS; it gets the same prepared
dataset (`prepared_dataset`; the scoring section builds its own, as above) and prints with the same table
code; `--sections train,NAME` picks sections, and `--json` collects every section's rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Table:
    """One section's result: a title, column names, rows (one value per column), notes under the table, and
    the raw figures for --json."""

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[object, ...], ...]
    notes: tuple[str, ...] = ()
    raw: dict = field(default_factory=dict)

    def markdown(self) -> str:
        head = "| " + " | ".join(self.columns) + " |\n" + "|---" * len(self.columns) + "|"
        body = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in self.rows]
        return "\n".join([f"### {self.title}", "", head, *body, "", *self.notes])

    def as_json(self) -> dict:
        return {"rows": [dict(zip(self.columns, row)) for row in self.rows], "notes": list(self.notes), **self.raw}


def _cell(v: object) -> str:
    """Rates as whole numbers with separators, other floats with 2 decimals."""
    if isinstance(v, float):
        return f"{v:,.0f}" if v >= 100 else f"{v:.2f}"
    return str(v)


@dataclass(frozen=True)
class TrainRun:
    """One training configuration: how many processes, threads each, and how it is launched."""

    name: str
    processes: int
    threads: int

    def command(self, args: list[str]) -> list[str]:
        if self.processes == 1:
            return [sys.executable, "-m", "seqrec", *args]
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={self.processes}",
                "-m", "seqrec", *args]


@dataclass(frozen=True)
class TrainResult:
    """What one run of a TrainRun measured (seconds; samples per second of the global batch)."""

    samples_per_s: float
    startup_s: float
    wall_s: float
    windows: tuple[float, ...] = field(default=())


def prepared_dataset(args: argparse.Namespace) -> Path:
    """The synthetic log of --events events over --items items, prepared under --work (re-used when there)."""
    from seqrec.datasets.adapters import source_spec
    from seqrec.datasets.prepare import PrepareConfig, prepare
    from seqrec.datasets.synthetic import config_for_events, write_events

    work = Path(args.work)
    events = work / f"events-{args.events}-items{args.items}.parquet"
    data = work / f"data-{args.events}-items{args.items}"
    if not events.exists():
        work.mkdir(parents=True, exist_ok=True)
        write_events(config_for_events(args.events, seed=0, items=args.items), events)
    prepare([events], lambda p: source_spec("events", p), PrepareConfig(), data)
    return data


def _read_run(out: Path, launched: float) -> tuple[tuple[float, ...], float]:
    """(perf/samples_per_s of every log window, unix time of the first step) from the run's TensorBoard log."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tb"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    windows = tuple(e.value for e in acc.Scalars("perf/samples_per_s"))
    first_step = min(e.wall_time for e in acc.Tensors("hyperparameters/text_summary"))
    return windows, first_step - launched


def train_once(run: TrainRun, args: argparse.Namespace, data: Path, out: Path) -> TrainResult:
    """Launch one training run (fresh processes, threads pinned by OMP_NUM_THREADS) and read its figures."""
    train_args = ["train", "--config", str(args.config), "--data", str(data), "--out", str(out),
                  "--set", f"train.batch_size={args.batch}", "--set", f"train.max_steps={args.steps}",
                  "--set", f"train.eval_every={args.steps}", "--set", f"train.log_every={args.log_every}",
                  "--set", 'train.device="cpu"']
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env |= {"OMP_NUM_THREADS": str(run.threads), "MKL_NUM_THREADS": str(run.threads)}
    launched = time.time()
    t = time.perf_counter()
    try:
        proc = subprocess.run(run.command(train_args), env=env, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"{run.name} ran past --timeout {args.timeout} s") from None
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{run.name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    windows, startup = _read_run(out, launched)
    steady = windows[1:] or windows  # the first window holds the warm-up
    return TrainResult(statistics.median(steady), startup, wall, windows)


def _cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or "unknown CPU"
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "unknown CPU")


def section_train(args: argparse.Namespace, data: Path) -> Table:
    """Training samples/s: 1 process, 2 DDP ranks, and (--same-cores) 1 process on the ranks' cores."""
    t = args.threads
    runs = [TrainRun(f"1 process x {t} thread{'s' if t > 1 else ''}", 1, t),
            TrainRun(f"2 ranks x {t} thread{'s' if t > 1 else ''} (gloo)", 2, t)]
    if args.same_cores:
        runs.append(TrainRun(f"1 process x {2 * t} threads", 1, 2 * t))
    results: dict[str, list[TrainResult]] = {r.name: [] for r in runs}
    for rep in range(args.repeats):
        for i, run in enumerate(runs):
            out = Path(args.work) / "runs" / f"train-{i}-rep{rep}-{time.time_ns()}"
            results[run.name].append(train_once(run, args, data, out))
            print(f"  {run.name}, repeat {rep + 1}: {results[run.name][-1].samples_per_s:,.0f} samples/s",
                  file=sys.stderr)
    base = statistics.median(r.samples_per_s for r in results[runs[0].name])
    rows = []
    for run in runs:
        rs = results[run.name]
        rate = statistics.median(r.samples_per_s for r in rs)
        rows.append((run.name, run.processes * run.threads, rate, rate / base,
                     statistics.median(r.startup_s for r in rs), statistics.median(r.wall_s for r in rs)))
    manifest = json.loads((data / "manifest.json").read_text())
    notes = (f"config {Path(args.config).name}, global batch {args.batch}, {args.steps} steps (samples/s: median of "
             f"the log windows of {args.log_every} steps after the first; median of {args.repeats} repeat(s)), "
             f"catalogue {manifest['catalogue_size']:,}, {manifest['splits']['train']['events']:,} training events; "
             f"{os.cpu_count()} CPUs ({_cpu_model()}), load average before {os.getloadavg()[0]:.1f}",)
    return Table("Training: 1 process against 2 DDP ranks (CPU)",
                 ("run", "threads in all", "samples/s", "vs 1 process", "start-up s", "wall s"), tuple(rows), notes,
                 {"runs": {k: [asdict(r) for r in v] for k, v in results.items()}})


@dataclass(frozen=True)
class ScoreResult:
    """What one `seqrec score` process measured (seconds), split as the section's docstring says."""

    sessions: int
    wall_s: float
    startup_s: float
    read_s: float
    scoring_s: float
    timings: dict = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """Sessions per second of scoring alone."""
        return self.sessions / max(self.scoring_s, 1e-9)

    @property
    def end_to_end(self) -> float:
        """Sessions per second of the whole process."""
        return self.sessions / max(self.wall_s, 1e-9)


def score_once(engine: str, run: Path, log: Path, out: Path, args: argparse.Namespace) -> ScoreResult:
    """One `seqrec score` in a fresh process with the engine; its figures from the wall clock and manifest."""
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    cores = os.cpu_count() or 1
    cmd = [sys.executable, "-m", "seqrec", "score", "--run", str(run), "--input", str(log), "--out", str(out),
           "--index", "exact", "--top", "10", "--candidates", "200", "--batch-size", str(args.score_batch),
           "--workers", str(cores), "--engine", engine, "--no-progress"]
    if engine == "ray" and args.ray_address:
        cmd += ["--ray-address", args.ray_address]
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)} | {"OMP_NUM_THREADS": "1"}
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"seqrec score --engine {engine} ran past --timeout {args.timeout} s") from None
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"seqrec score --engine {engine} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    m = json.loads((out / "manifest.json").read_text())
    tm = m["timings"]
    outside = wall - tm["total_s"]  # interpreter, imports, argument parsing, the summary
    if engine == "ray":
        startup = outside + tm["load_s"] + tm.get("ray_init_s", 0.0) + tm.get("actors_ready_s", 0.0)
        scoring = tm["batch_s"] + tm.get("pipeline_s", 0.0) - tm.get("actors_ready_s", 0.0)
    else:
        startup, scoring = outside + tm["load_s"], tm["score_s"]
    return ScoreResult(m["sessions"]["scored"], wall, startup, tm["read_validate_s"], scoring,
                       {**tm, "ray": m.get("ray"), "workers": m["workers"]})


def section_score(args: argparse.Namespace, data: Path) -> Table:
    """Scoring sessions/s: the local engine against the Ray engine on the same sessions, start-up apart."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_score import build  # the run and the log bench_score.py builds (cached under --work/score)

    spec = argparse.Namespace(items=args.items, train_users=args.score_train_users, seed=0,
                              train_steps=args.score_train_steps, sessions=args.score_sessions, candidates=200,
                              work=Path(args.work) / "score")
    run, log = build(spec)
    load = os.getloadavg()[0]
    engines = ("local", "ray")
    results: dict[str, list[ScoreResult]] = {e: [] for e in engines}
    for rep in range(args.repeats):
        for engine in engines:
            r = score_once(engine, run, log, Path(args.work) / "score" / f"scored-{engine}", args)
            results[engine].append(r)
            print(f"  score --engine {engine}, repeat {rep + 1}: {r.sessions:,} sessions, {r.rate:,.0f}/s scoring, "
                  f"start-up {r.startup_s:.1f} s, wall {r.wall_s:.1f} s; {r.timings}", file=sys.stderr)

    def med(engine: str, f: Callable[[ScoreResult], float]) -> float:
        return statistics.median(f(r) for r in results[engine])

    base, base_e2e = med("local", lambda r: r.rate), med("local", lambda r: r.end_to_end)
    cores = os.cpu_count() or 1
    ray_info = results["ray"][0].timings["ray"] or {}
    where = f"Ray at {args.ray_address}" if args.ray_address else "local Ray"
    names = {"local": f"local, {cores} workers", "ray": f"ray, {where} of {ray_info.get('cpus', 0):.0f} CPUs, "
                                                        f"{ray_info.get('actors', 0)} actors x "
                                                        f"{ray_info.get('cpus_per_actor', 0):g} CPU"}
    rows = tuple((names[e], results[e][0].sessions, med(e, lambda r: r.startup_s), med(e, lambda r: r.read_s),
                  med(e, lambda r: r.scoring_s), med(e, lambda r: r.rate), med(e, lambda r: r.rate) / base,
                  med(e, lambda r: r.wall_s), med(e, lambda r: r.end_to_end), med(e, lambda r: r.end_to_end) / base_e2e)
                 for e in engines)
    ray_t = results["ray"][0].timings
    events = json.loads((Path(args.work) / "score" / "scored-local" / "manifest.json").read_text())["rows_read"]
    notes = (f"{results['local'][0].sessions:,} sessions ({events:,} events), catalogue {args.items:,}, exact index, "
             f"200 candidates, top 10, batches of {args.score_batch}; run: SASRec-SQN width 64 + two-tower, "
             f"{args.score_train_steps} steps; median of {args.repeats} repeat(s); Ray start-up of the first repeat: "
             f"ray.init {ray_t.get('ray_init_s', 0):.1f} s, actors ready {ray_t.get('actors_ready_s', 0):.1f} s after "
             f"the pipeline started (ray.shutdown {ray_t.get('ray_shutdown_s', 0):.1f} s more, in the wall time only); "
             f"{cores} CPUs ({_cpu_model()}), load average before {load:.1f}, after "
             f"{os.getloadavg()[0]:.1f}",)
    return Table("Scoring: local engine against Ray Data (CPU)",
                 ("engine", "sessions", "start-up s", "read s", "scoring s", "sessions/s (scoring)", "vs local",
                  "wall s", "sessions/s (wall)", "vs local (wall)"), rows, notes,
                 {"runs": {k: [asdict(r) for r in v] for k, v in results.items()}})


SECTIONS: dict[str, Callable[[argparse.Namespace, Path], Table]] = {"train": section_train, "score": section_score}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sections", default="train", help=f"comma list of {', '.join(SECTIONS)} (default train)")
    p.add_argument("--work", default=str(ROOT / "runs" / "bench_scale"), help="dataset and run folders")
    p.add_argument("--events", type=int, default=300_000, help="synthetic events to generate (300000)")
    p.add_argument("--items", type=int, default=26_702, help="items in the synthetic catalogue (26702, RC15's)")
    p.add_argument("--config", type=Path, default=ROOT / "experiments" / "configs" / "sasrec_sqn.toml")
    p.add_argument("--batch", type=int, default=256, help="global batch (256); must divide by 2")
    p.add_argument("--steps", type=int, default=300, help="training steps per run (300)")
    p.add_argument("--log-every", type=int, default=25, help="steps per samples/s window (25)")
    p.add_argument("--threads", type=int, default=1, help="threads per process (1)")
    p.add_argument("--same-cores", action=argparse.BooleanOptionalAction, default=True,
                   help="also 1 process with the 2 ranks' threads together (default on)")
    p.add_argument("--repeats", type=int, default=1, help="runs per configuration, in rotation (1)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds one run may take (3600)")
    p.add_argument("--score-sessions", type=int, default=500_000, help="sessions in the scoring log (500000)")
    p.add_argument("--score-train-users", type=int, default=5_000, help="users of the scoring run's log (5000)")
    p.add_argument("--score-train-steps", type=int, default=100, help="the scoring run's training steps (100)")
    p.add_argument("--score-batch", type=int, default=4096, help="sessions per scored batch (4096)")
    p.add_argument("--ray-address", help="score section: a running Ray cluster for the ray engine (default: "
                                          "seqrec score starts a local Ray of this machine's cores)")
    p.add_argument("--json", type=Path, help="write every section's figures here too")
    args = p.parse_args(argv)
    names = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in names if s not in SECTIONS]
    if unknown or args.batch % 2:
        p.error(f"unknown section {unknown[0]!r}" if unknown else "--batch must divide by 2 (2 ranks)")
    data = prepared_dataset(args)
    tables = {}
    for name in names:
        tables[name] = SECTIONS[name](args, data)
        print(tables[name].markdown(), flush=True)
    if args.json:
        args.json.write_text(json.dumps({k: t.as_json() for k, t in tables.items()}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
