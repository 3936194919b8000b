"""seqrec.training.loop.fit on fake steps and evaluations: the best checkpoint by the metric, best/last files and
sidecars, resume, early stopping, logging and hooks, only the writing process writes; and loading a run for
scoring does not import the training loop."""

import io
import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from seqrec.training.checkpoints import last_checkpoint
from seqrec.training.loop import Bar, Checkpoints, Evaluation, Hooks, Schedule, Start, fit, resume_point

ROOT = Path(__file__).resolve().parents[1]


class Recorder:
    """A SummaryWriter stand-in: every scalar as (tag, value, step)."""

    def __init__(self) -> None:
        self.scalars: list[tuple[str, float, int]] = []

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.append((tag, value, step))


class Fake:
    """A 'model' whose weight counts the steps taken, and evaluations that return `values` in turn."""

    def __init__(self, values: list[float | None]) -> None:
        self.values, self.steps, self.evals = list(values), [], 0
        self.weight = 0.0

    def step(self, step: int) -> dict:
        self.steps.append(step)
        self.weight += 1.0
        return {"loss": float(step)}

    def evaluate(self) -> Evaluation:
        value = self.values[self.evals]
        self.evals += 1
        return Evaluation({"all": {"m": value}}, value, {"metrics/m": 0.0 if value is None else value})

    def states(self) -> dict:
        return {"model": {"w": torch.tensor(self.weight)}, "optim": {}}

    def restore(self, state: dict) -> None:
        self.weight = float(state["model"]["w"])


def test_best_and_last_checkpoints_with_their_sidecars(tmp_path):
    fake, best_steps = Fake([0.1, 0.3, 0.2]), []
    result = fit(fake.step, fake.evaluate, Schedule(max_steps=6, eval_every=2), Start(), None,
                 Checkpoints(tmp_path, fake.states, "all/m"), Hooks(on_best=best_steps.append))
    assert fake.steps == [0, 1, 2, 3, 4, 5] and best_steps == [2, 4]
    assert result.as_dict() == {"step": 6, "valid": {"all": {"m": 0.2}}, "best": 0.3, "best_step": 4}
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert float(best["model"]["w"]) == 4.0 and (best["step"], best["best"], best["best_step"]) == (4, 0.3, 4)
    assert float(last["model"]["w"]) == 6.0 and (last["step"], last["best"], last["best_step"]) == (6, 0.3, 4)
    assert json.loads((tmp_path / "best.json").read_text()) == {
        "step": 4, "select_metric": "all/m", "value": 0.3, "valid": {"all": {"m": 0.3}}}
    assert json.loads((tmp_path / "last.json").read_text()) == {
        "step": 6, "best": 0.3, "best_step": 4, "valid": {"all": {"m": 0.2}}}
    assert not list(tmp_path.glob("*.tmp"))


def test_resume_runs_only_the_remaining_steps_and_keeps_the_best(tmp_path):
    first = Fake([0.5, 0.2])
    fit(first.step, first.evaluate, Schedule(max_steps=4, eval_every=2), Start(), None,
        Checkpoints(tmp_path, first.states, "all/m"))
    again = Fake([0.4])
    start = resume_point(last_checkpoint(tmp_path, "cpu"), again.restore)
    assert start == Start(4, 0.5, 2) and again.weight == 4.0
    result = fit(again.step, again.evaluate, Schedule(max_steps=6, eval_every=2), start, None,
                 Checkpoints(tmp_path, again.states, "all/m"))
    assert again.steps == [4, 5] and (result.best, result.best_step) == (0.5, 2)
    assert float(torch.load(tmp_path / "best.pt", weights_only=True)["model"]["w"]) == 2.0  # untouched
    assert resume_point(None, again.restore) == Start()


def test_patience_stops_after_that_many_steps_without_a_new_best():
    fake = Fake([0.5, 0.4, 0.3, 0.9])
    result = fit(fake.step, fake.evaluate, Schedule(max_steps=10, eval_every=1, patience=2))
    # best at 1; step 2 is 1 step past it, step 3 is 2: stop there
    assert fake.steps == [0, 1, 2] and (result.step, result.best, result.best_step) == (3, 0.5, 1)


def test_a_missing_metric_is_never_the_best_and_patience_counts_from_zero():
    fake = Fake([None, None, None])
    result = fit(fake.step, fake.evaluate, Schedule(max_steps=10, eval_every=1, patience=2))
    assert fake.steps == [0, 1] and (result.step, result.best, result.best_step) == (2, None, None)


def test_logging_evaluation_scalars_and_the_first_evaluation():
    fake, writer = Fake([0.0, 0.1, 0.2]), Recorder()
    hooks = Hooks(reduce_stats=lambda s: {k: 10 * v for k, v in s.items()})
    fit(fake.step, fake.evaluate, Schedule(max_steps=4, eval_every=3, log_every=2, samples_per_step=8,
                                           speed_tag="perf/x", evaluate_first=True), writer=writer, hooks=hooks)
    tags = [(t, s) for t, _, s in writer.scalars]
    assert tags == [("metrics/m", 0), ("loss", 2), ("perf/x", 2), ("metrics/m", 3), ("loss", 4), ("perf/x", 4),
                    ("metrics/m", 4)]
    assert [v for t, v, _ in writer.scalars if t == "loss"] == [10.0, 30.0]  # steps 1 and 3, reduced
    assert [v for t, v, _ in writer.scalars if t == "metrics/m"] == [0.0, 0.1, 0.2]


def test_a_resumed_run_does_not_repeat_the_first_evaluation():
    fake, writer = Fake([0.7]), Recorder()
    fit(fake.step, fake.evaluate, Schedule(max_steps=3, eval_every=5, evaluate_first=True), Start(2, 0.1, 1),
        writer)
    assert writer.scalars == [("metrics/m", 0.7, 3)] and fake.steps == [2]


def test_only_the_writing_process_writes_but_every_process_tracks_the_best(tmp_path):
    fake, calls = Fake([0.2, 0.6]), []
    result = fit(fake.step, fake.evaluate, Schedule(max_steps=2, eval_every=1), Start(), None,
                 Checkpoints(tmp_path, fake.states, "all/m"), Hooks(on_best=calls.append), writes=False)
    assert (result.best, result.best_step) == (0.6, 2)
    assert calls == [] and list(tmp_path.iterdir()) == []


class Terminal(io.StringIO):
    """A stderr stand-in that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_progress_lines_when_the_stream_is_not_a_terminal():
    fake, stream = Fake([0.25, 0.5]), io.StringIO()
    clock = itertools.count(0.0, 2.0).__next__  # 2 s per call: one at the start, then one after each step
    bar = Bar("train", "purchase/ndcg@10", None, every_s=4.0, clock=clock, stream=stream)
    fit(fake.step, fake.evaluate, Schedule(max_steps=6, eval_every=3, samples_per_step=10), bar=bar)
    # a line every other step (4 s), the speed over those 2 steps (20 samples in 4 s), the last evaluation's value
    assert stream.getvalue().splitlines() == [
        "train: step 2/6 (33%), 5 samples/s",
        "train: step 4/6 (66%), 5 samples/s, purchase/ndcg@10 0.2500",
        "train: step 6/6 (100%), 5 samples/s, purchase/ndcg@10 0.5000",
    ]


def test_progress_lines_every_step_with_interval_0_from_a_resumed_step_and_the_first_evaluation():
    fake, stream = Fake([0.125, 0.75]), io.StringIO()
    bar = Bar("retrieval", "recall@100", None, every_s=0.0, clock=lambda: 0.0, stream=stream)
    fit(fake.step, fake.evaluate, Schedule(max_steps=2, eval_every=5, evaluate_first=True), bar=bar)
    assert stream.getvalue().splitlines() == ["retrieval: step 1/2 (50%), recall@100 0.1250",  # no speed: no samples
                                              "retrieval: step 2/2 (100%), recall@100 0.7500"]
    stream = io.StringIO()
    fit(Fake([]).step, Fake([0.5]).evaluate, Schedule(max_steps=4, eval_every=10), Start(3, 0.1, 1),
        bar=Bar("train", "m", None, every_s=0.0, clock=lambda: 0.0, stream=stream))
    assert stream.getvalue() == "train: step 4/4 (100%), m 0.5000\n"


@pytest.mark.parametrize("show, stream, writes", [(False, io.StringIO(), True),  # --no-progress
                                                  (None, Terminal(), True),  # a terminal: tqdm's bar instead
                                                  (None, io.StringIO(), False)])  # not the writing process
def test_no_progress_lines_with_no_progress_on_a_terminal_or_off_the_writing_process(show, stream, writes):
    fake = Fake([0.5])
    fit(fake.step, fake.evaluate, Schedule(max_steps=2, eval_every=2),
        bar=Bar("train", "m", show, every_s=0.0, clock=lambda: 0.0, stream=stream), writes=writes)
    assert "train: step" not in stream.getvalue()


def test_progress_true_shows_the_bar_not_the_lines():
    fake, stream = Fake([0.5]), io.StringIO()
    fit(fake.step, fake.evaluate, Schedule(max_steps=2, eval_every=2),
        bar=Bar("train", "m", True, every_s=0.0, clock=lambda: 0.0, stream=stream))
    assert "train: step" not in stream.getvalue() and "/2 [" in stream.getvalue()  # tqdm's bar


def test_the_fit_result_keeps_the_last_evaluation_scalars():
    fake = Fake([0.25, 0.5])
    result = fit(fake.step, fake.evaluate, Schedule(max_steps=4, eval_every=2))
    assert dict(result.scalars) == {"metrics/m": 0.5} and "scalars" not in result.as_dict()


def test_loading_a_run_for_scoring_does_not_import_the_training_loop():
    # every module of seqrec/serve, and the run modules that loading a run for scoring uses
    serving = [f"seqrec.serve.{p.stem}" for p in sorted((ROOT / "seqrec" / "serve").glob("*.py"))
               if p.stem != "__init__"]
    serving += ["seqrec.runs.pipeline", "seqrec.runs.learner", "seqrec.runs.config", "seqrec.runs.score_config"]
    assert "seqrec.serve.scoring" in serving
    code = ("import importlib, sys\n"
            f"for m in {serving!r}:\n"
            "    importlib.import_module(m)\n"
            "bad = [m for m in ('seqrec.training.loop', 'seqrec.runs.train', 'seqrec.retrieval.tower_training')"
            " if m in sys.modules]\n"
            "print(bad)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("module", ["seqrec.runs.train", "seqrec.retrieval.tower_training"])
def test_the_import_check_can_fail(module):
    # the same check sees the loop when a training module is imported
    code = f"import sys, {module}\nprint('seqrec.training.loop' in sys.modules)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"
