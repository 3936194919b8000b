"""The one training loop of seqrec (the learner, the two-tower model, the bank classifier): steps, logging,
evaluation, the best checkpoint by a metric, atomic best/last checkpoints and resuming from the last one.

A trainer supplies what differs: `step_fn(step)` (one batch, or one epoch; its randomness its own business,
e.g. drawn from (seed, step)), `evaluate_fn()`, the model's states for checkpoints, and hooks for extras.
The loop itself draws no randomness, so a trainer's results do not depend on it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seqrec.training.checkpoints import save_checkpoint
from seqrec.training.distributed import NullWriter


@dataclass(frozen=True)
class Schedule:
    """When things happen, counted in steps (a step is one call of `step_fn`)."""

    max_steps: int
    eval_every: int                       # evaluate (and checkpoint) every this many steps, and at the end
    log_every: int = 0                    # log step statistics every this many steps; 0: never
    samples_per_step: int = 0             # rows per step, for the speed scalar
    speed_tag: str = "perf/samples_per_s"
    evaluate_first: bool = False          # a fresh run evaluates once at step 0: logged only (no checkpoint, no best)
    patience: int = 0                     # stop once this many steps passed since the best without a new one; 0: never


@dataclass(frozen=True)
class Evaluation:
    """What one evaluation gives the loop."""

    metrics: dict                 # kept in the checkpoints' sidecars and returned as "valid"
    value: float | None           # the selected metric, higher is better; None when it is not available
    scalars: Mapping[str, float]  # TensorBoard tag -> value, logged at the evaluation's step


@dataclass(frozen=True)
class Start:
    """Where the loop starts: step 0, or a resumed run's last checkpoint."""

    step: int = 0
    best: float | None = None
    best_step: int | None = None


@dataclass(frozen=True)
class Checkpoints:
    """checkpoints/{best,last}.pt (+ .json sidecars) in `directory`."""

    directory: Path
    states: Callable[[], dict]  # {"model": state dict, "optim": optimiser state(s)} as they are now
    select_metric: str          # the metric's name in best.json


@dataclass(frozen=True)
class Hooks:
    """Extras around the loop."""

    on_best: Callable[[int], None] | None = None  # after a new best (and best.pt), on the writing process
    reduce_stats: Callable[[dict], dict] | None = None  # step statistics before logging (e.g. the mean over ranks)


@dataclass(frozen=True)
class Bar:
    """The tqdm progress bar: its label, the selected metric's name on it, and whether to show it (None:
    tqdm's default, i.e. on a terminal). With None and `stream` not a terminal (CI logs, `> log 2>&1`) the loop
    prints a plain progress line every `every_s` seconds of `clock` instead; False prints nothing."""

    desc: str
    label: str
    show: bool | None = None
    every_s: float = 10.0
    clock: Callable[[], float] = time.monotonic
    stream: Any = None  # None: sys.stderr at the time fit runs


@dataclass(frozen=True)
class FitResult:
    """How training ended: the last step, the last evaluation's metrics and the best value and its step."""

    step: int
    valid: dict
    best: float | None
    best_step: int | None
    scalars: Mapping[str, float] = field(default_factory=dict)  # the last evaluation's TensorBoard scalars

    def as_dict(self) -> dict:
        """{"step", "valid", "best", "best_step"}: what the trainers return (and metrics.json holds)."""
        return {"step": self.step, "valid": self.valid, "best": self.best, "best_step": self.best_step}


def resume_point(state: dict | None, restore: Callable[[dict], None]) -> Start:
    """A last checkpoint's payload (None: a fresh run) -> the Start; `restore(state)` loads its model and
    optimiser states first."""
    if state is None:
        return Start()
    restore(state)
    return Start(int(state["step"]), state["best"], state["best_step"])


def open_writer(tb_dir: Path, start: Start, hparams: str | None = None, enabled: bool = True) -> Any:
    """TensorBoard's SummaryWriter on `tb_dir` (events after a resumed step purged), with the hyperparameter
    table at step 0 of a fresh run; a NullWriter where this process writes nothing (ranks other than 0)."""
    if not enabled:
        return NullWriter()
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tb_dir), purge_step=start.step if start.step else None)
    if start.step == 0 and hparams is not None:
        writer.add_text("hyperparameters", hparams, 0)
    return writer


def flat_hparams(tables: Mapping[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """A config's tables -> {"section.key": value} for TensorBoard's HParams dashboard: numbers, booleans and
    strings as they are, nested tables flattened with dots, anything else (lists, tuples, None) as its str."""
    flat: dict[str, bool | int | float | str] = {}
    for key, value in tables.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flat_hparams(value, f"{name}."))
        else:
            flat[name] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return flat


def write_hparams(writer: Any, hparams: Mapping[str, bool | int | float | str], result: FitResult) -> None:
    """The run's hyper-parameters for TensorBoard's HParams dashboard, in the writer's own folder
    (SummaryWriter.add_hparams would open a subfolder: one run would be two rows), and the best value and step
    as scalars best/value, best/step at the last step. The dashboard's metric columns are the runs' scalar tags
    at their last values (metrics/... of the last evaluation, best/...). Only the session start and end
    summaries: no experiment summary, which TensorBoard would take from one run for all (hiding the keys and
    tags of runs with other tables), so it computes the columns from every run. Nothing where this process
    evaluated nothing (a finished run resumed: its first entry stays) or writes nothing (a NullWriter)."""
    file_writer = getattr(writer, "file_writer", None)
    if file_writer is None or not result.scalars:
        return
    from torch.utils.tensorboard.summary import hparams as hparams_summaries

    if result.best is not None:
        _log(writer, {"best/value": result.best, "best/step": result.best_step or 0}, result.step)
    _, session_start, session_end = hparams_summaries(dict(hparams), dict(result.scalars))
    file_writer.add_summary(session_start)
    file_writer.add_summary(session_end)
    writer.flush()


def fit(step_fn: Callable[[int], Mapping[str, Any] | None], evaluate_fn: Callable[[], Evaluation],
        schedule: Schedule, start: Start = Start(), writer: Any = None, checkpoints: Checkpoints | None = None,
        hooks: Hooks = Hooks(), bar: Bar = Bar("train", "value", False), writes: bool = True) -> FitResult:
    """Run steps start.step .. schedule.max_steps - 1; log, evaluate, keep the best and checkpoint as the
    schedule says. `writes`: whether this process writes checkpoints and runs `on_best` (rank 0, or the only
    process). `checkpoints` None keeps nothing on disk (best-state bookkeeping is then the hook's)."""
    from tqdm import tqdm

    writer = writer if writer is not None else NullWriter()
    best, best_step = start.best, start.best_step
    last: dict = {}
    scalars: Mapping[str, float] = {}
    value = None  # the last evaluation's selected metric, for the progress lines
    if schedule.evaluate_first and start.step == 0:  # where training starts from
        first = evaluate_fn()
        _log(writer, first.scalars, 0)
        value = first.value
    t_log, n_log = time.perf_counter(), 0
    stream = bar.stream if bar.stream is not None else sys.stderr
    lines = _Lines(bar, stream, schedule) if writes and bar.show is None and not _is_terminal(stream) else None
    progress = tqdm(range(start.step, schedule.max_steps), initial=start.step, total=schedule.max_steps,
                    desc=bar.desc, disable=(None if bar.show is None else not bar.show) if writes else True,
                    leave=False, file=stream)
    for step in progress:
        stats = step_fn(step)
        n_log += schedule.samples_per_step
        done = step + 1
        if schedule.log_every and done % schedule.log_every == 0:
            if hooks.reduce_stats is not None:
                stats = hooks.reduce_stats(stats)
            _log(writer, stats or {}, done)
            writer.add_scalar(schedule.speed_tag, n_log / (time.perf_counter() - t_log), done)
            t_log, n_log = time.perf_counter(), 0
        if done % schedule.eval_every == 0 or done == schedule.max_steps:
            ev = evaluate_fn()
            last, scalars, value = ev.metrics, ev.scalars, ev.value
            _log(writer, ev.scalars, done)
            improved = ev.value is not None and (best is None or ev.value > best)
            if improved:
                best, best_step = ev.value, done
            if writes:
                _save(checkpoints, hooks, done, ev, best, best_step, improved)
            progress.set_postfix({bar.label: ev.value})
            t_log, n_log = time.perf_counter(), 0  # evaluation time is not training speed
            if schedule.patience and not improved and done - (best_step or 0) >= schedule.patience:
                return FitResult(done, last, best, best_step, scalars)  # early stop
        if lines is not None:
            lines.after(done, value)
    return FitResult(schedule.max_steps, last, best, best_step, scalars)


def _is_terminal(stream: Any) -> bool:
    """Whether `stream` is a terminal (tqdm's own test for showing its bar)."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty())


class _Lines:
    """Plain progress lines for logs: `desc: step N/M (P%), S samples/s, label V` once `bar.every_s` seconds of
    `bar.clock` passed since the last line (the speed is over that interval, evaluations included)."""

    def __init__(self, bar: Bar, stream: Any, schedule: Schedule) -> None:
        self.bar, self.stream, self.schedule = bar, stream, schedule
        self.t, self.n = bar.clock(), 0

    def after(self, done: int, value: float | None) -> None:
        """Count the step just done (`done` steps in all); print a line when the interval has passed."""
        self.n += self.schedule.samples_per_step
        now = self.bar.clock()
        if now - self.t < self.bar.every_s:
            return
        total = self.schedule.max_steps
        parts = [f"{self.bar.desc}: step {done}/{total} ({100 * done // total}%)"]
        if self.schedule.samples_per_step and now > self.t:
            parts.append(f"{self.n / (now - self.t):.0f} samples/s")
        if value is not None:
            parts.append(f"{self.bar.label} {value:.4f}")
        print(", ".join(parts), file=self.stream, flush=True)
        self.t, self.n = now, 0


def _log(writer: Any, scalars: Mapping[str, Any], step: int) -> None:
    """Each scalar (a number or a 0-d tensor) under its tag at `step`."""
    for tag, value in scalars.items():
        writer.add_scalar(tag, float(value), step)


def _save(checkpoints: Checkpoints | None, hooks: Hooks, done: int, ev: Evaluation, best: float | None,
          best_step: int | None, improved: bool) -> None:
    """best.pt (on a new best, then the on_best hook) and last.pt, each with its JSON sidecar."""
    if checkpoints is not None:
        payload = {**checkpoints.states(), "step": done, "best": best, "best_step": best_step}
    if improved:
        if checkpoints is not None:
            save_checkpoint(checkpoints.directory / "best.pt", payload,
                            {"step": done, "select_metric": checkpoints.select_metric, "value": ev.value,
                             "valid": ev.metrics})
        if hooks.on_best is not None:
            hooks.on_best(done)
    if checkpoints is not None:
        save_checkpoint(checkpoints.directory / "last.pt", payload,
                        {"step": done, "best": best, "best_step": best_step, "valid": ev.metrics})
