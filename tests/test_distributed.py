"""Distributed training (seqrec/distributed.py): 2 gloo ranks on CPU against 1 process, exact resume after kill -9.

The ranks are real processes: `torchrun --standalone --nproc_per_node=2 -m seqrec train` (the documented
command), ranks started directly with torchrun's environment variables (so that the test can kill -9 them:
torchrun puts its workers in their own sessions), and torch.multiprocessing for the gradient checks. Every
rank runs one thread, so that float sums happen in the same order in every run.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from seqrec.rl.qlearning.learner import Learner
from seqrec.rl.qlearning.losses import HeadConfig
from synthetic_data import ddp_run, prepared_log

from seqrec.cli.main import main
from seqrec.core.config import ConfigError
from seqrec.models.encoders import EncoderConfig
from seqrec.runs.config import load_run_config
from seqrec.runs.train import train
from seqrec.training import distributed
from seqrec.training.metrics import RankingMetrics

# dropout 0 and SQN (no negatives): a 2-rank step computes the 1-process step's update, up to summation order
CONFIG = ddp_run(120)
STEPS = 120
TIMEOUT = 240  # seconds a launch may take before the test fails (a hang would otherwise block CI)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    return prepared_log(d)


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("config") / "run.toml"
    p.write_text(CONFIG)
    return p


@pytest.fixture
def one_thread():
    """torch on one thread in this process too (as in every rank): on a busy machine, threads that wait for
    each other make a tiny run many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_thread_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    return {**env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _train_args(config: Path, data: Path, out: Path) -> list[str]:
    return ["train", "--config", str(config), "--data", str(data), "--out", str(out)]


# ---- the rank from the environment, refusals, sharding and merging (no processes) ----

@pytest.mark.parametrize("env, expected", [
    ({}, None),
    ({"WORLD_SIZE": "1", "RANK": "0"}, None),
    ({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}, distributed.Rank(1, 2, 1)),
    ({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}, distributed.Rank(3, 4, 1)),
])
def test_rank_from_torchruns_environment(env, expected):
    assert distributed.from_env(env) == expected


@pytest.mark.parametrize("env", [{"WORLD_SIZE": "2"}, {"WORLD_SIZE": "2", "RANK": "2"},
                                 {"WORLD_SIZE": "x", "RANK": "0"}])
def test_a_broken_environment_is_a_config_error(env):
    with pytest.raises(ConfigError):
        distributed.from_env(env)


def test_shards_are_the_one_process_batch():
    idx = np.sort(np.random.default_rng(0).choice(1000, 32, replace=False))
    parts = [distributed.shard_rows(idx, distributed.Rank(r, 4, r)) for r in range(4)]
    assert all(len(p) == 8 for p in parts)
    assert np.array_equal(np.sort(np.concatenate(parts)), idx)
    assert distributed.shard_rows(idx, None) is idx


def test_merged_metrics_of_parts_are_the_whole_splits():
    rng = np.random.default_rng(1)
    names = ("view", "like", "cart", "purchase")
    ranks, events = torch.from_numpy(rng.integers(0, 40, 101)), torch.from_numpy(rng.integers(0, 4, 101))
    whole = RankingMetrics(names)
    whole.add(ranks, events)
    parts = []
    for lo, hi in ((0, 33), (33, 34), (34, 101)):  # unequal parts, one with a single event type
        m = RankingMetrics(names)
        m.add(ranks[lo:hi], events[lo:hi])
        parts.append(m.result())
    merged = distributed.merge_metrics(parts, names)
    assert list(merged) == list(whole.result())
    for ev, row in whole.result().items():
        assert merged[ev]["count"] == row["count"]
        assert all(merged[ev][m] == pytest.approx(v, abs=1e-6) for m, v in row.items())  # float32 sums


def test_what_cannot_run_distributed_is_refused_before_any_process_group(config, data, tmp_path, monkeypatch,
                                                                         capsys):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    cfg = load_run_config(config, ["train.batch_size=30"], str(data))
    with pytest.raises(ConfigError, match="batch_size .30. is the global batch and must divide by .* 4"):
        train(cfg, tmp_path / "a", progress=False)
    with pytest.raises(ConfigError, match="d3rlpy.dqn.* cannot train on 4 processes"):
        train(replace(cfg, algorithm="d3rlpy.dqn", train=replace(cfg.train, batch_size=32)), tmp_path / "b")
    assert main([*_train_args(config, data, tmp_path / "c"), "--set", "train.batch_size=30"]) == 2
    assert "must divide by the number of processes" in capsys.readouterr().err
    assert not dist.is_initialized()


# ---- gradient averaging in two gloo processes ----

def _gradients_of_step(learner: Learner, batch: dict[str, torch.Tensor], step: int) -> list[torch.Tensor | None]:
    """The gradients one update's optimiser step applies (a pre-hook registered after sync_gradients' sees
    them averaged), in parameter order."""
    seen: list[torch.Tensor | None] = []
    for opt in learner.opts:
        opt.register_step_pre_hook(lambda o, *_: seen.extend(
            None if p.grad is None else p.grad.clone() for gr in o.param_groups for p in gr["params"]))
    learner.update(batch, step, seed=0)
    return seen


def _gradient_worker(rank: int, world: int, port: int) -> None:
    """Both ranks run the checks; a failed assert fails mp.spawn and so the test (the group is then left as it
    is: destroying it while the peer waits in a collective can abort the peer)."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    _check_gradients(rank, world)
    dist.barrier()
    dist.destroy_process_group()


def _check_gradients(rank: int, world: int) -> None:
    """average_gradients by hand, then Learner steps on shards against the 1-process step on the whole batch."""
    # average_gradients: a mean, a gradient on one rank only (zero elsewhere), no gradient anywhere
    a, b, c = (torch.nn.Parameter(torch.zeros(3)) for _ in range(3))
    a.grad = torch.full((3,), float(rank + 1))
    b.grad = torch.full((3,), 4.0) if rank == 1 else None
    distributed.average_gradients([a, b, c], world)
    assert torch.equal(a.grad, torch.full((3,), 1.5)) and torch.equal(b.grad, torch.full((3,), 2.0))
    assert c.grad is None

    # one Learner step on rows r::2 of a batch, gradients averaged by the optimiser pre-hook, against the
    # 1-process gradient of the whole batch (dropout 0; SQN's coin comes from (seed, step) on every rank)
    g = torch.Generator().manual_seed(7)
    full = {"state": torch.randint(0, 30, (16, 6), generator=g), "next_state": torch.randint(0, 30, (16, 6),
            generator=g), "action": torch.randint(2, 30, (16,), generator=g),
            "reward": torch.rand(16, generator=g), "done": torch.rand(16, generator=g) < 0.2}
    enc = EncoderConfig(num_items=30, max_len=6, dim=8, dropout=0.0)
    for variant, step in (("ce", 0), ("sqn", 0), ("sqn", 1), ("sac", 3)):
        head = HeadConfig(variant=variant, warmup_steps=2)
        torch.manual_seed(0)
        shared = Learner(enc, head, lr=0.01)
        distributed.sync_gradients(shared.opts, world)
        got = _gradients_of_step(shared, {k: v[rank::world] for k, v in full.items()}, step)
        torch.manual_seed(0)
        want = _gradients_of_step(Learner(enc, head, lr=0.01), full, step)
        assert len(got) == len(want) > 0
        for x, y in zip(got, want):
            assert (x is None) == (y is None)
            if x is not None:
                torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-7)
        # and every rank holds the same weights after the step
        flat = torch.cat([p.detach().reshape(-1) for p in shared.parameters()])
        first = flat.clone()
        dist.broadcast(first, src=0)
        assert torch.equal(flat, first), (variant, step)


def test_averaged_shard_gradients_are_the_whole_batch_gradient():
    mp.spawn(_gradient_worker, args=(2, _free_port()), nprocs=2, join=True)


# ---- whole runs: torchrun against 1 process, and kill -9 / --resume ----

@pytest.fixture(scope="module")
def two_rank_run(config, data, tmp_path_factory) -> tuple[Path, str]:
    """An uninterrupted 2-rank run through torchrun: its folder and its stdout."""
    out = tmp_path_factory.mktemp("ddp") / "whole"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "seqrec", *_train_args(config, data, out)]
    proc = subprocess.run(cmd, env=_one_thread_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout


def _scalars(run: Path, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars(tag)}


def test_two_ranks_match_one_process_and_only_rank_0_writes(two_rank_run, config, data, tmp_path, one_thread):
    out, stdout = two_rank_run
    assert stdout.count("trained ") == 1  # rank 0 reports, rank 1 is silent
    assert len(list((out / "tb").iterdir())) == 1  # one TensorBoard event file: rank 0's
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.json", "best.pt", "last.json", "last.pt"]
    assert json.loads((out / "config.json").read_text())["train"]["batch_size"] == 32

    single = tmp_path / "single"
    train(load_run_config(config, [], str(data)), single, progress=False)
    a = json.loads((single / "checkpoints" / "last.json").read_text())
    b = json.loads((out / "checkpoints" / "last.json").read_text())
    assert a["step"] == b["step"] == STEPS
    # the tolerance: every validation metric within one target of the event type (1 / count) of the 1-process
    # run's; with dropout 0 the runs differ only by float summation order (here they agree exactly)
    for ev, row in a["valid"].items():
        assert b["valid"][ev]["count"] == row["count"]
        for m, v in row.items():
            assert abs(b["valid"][ev][m] - v) <= 1.0 / row["count"] + 1e-9, (ev, m, v, b["valid"][ev][m])
    # logged losses are the mean over the ranks, i.e. the global batch's: at the first log step the weights
    # have seen 10 identical updates, so the 2-rank loss is the 1-process loss up to rounding
    ce_1, ce_2 = _scalars(single, "loss/ce"), _scalars(out, "loss/ce")
    assert ce_2[10] == pytest.approx(ce_1[10], rel=1e-4)
    assert set(ce_1) == set(ce_2)


def _launch_ranks(args: list[str], world: int) -> list[subprocess.Popen]:
    """`python -m seqrec ARGS` once per rank with the variables torchrun would set (a free port on 127.0.0.1)."""
    port, env = _free_port(), _one_thread_env()
    return [subprocess.Popen([sys.executable, "-m", "seqrec", *args], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL,
                             env={**env, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(world),
                                  "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1",
                                  "MASTER_PORT": str(port)})
            for r in range(world)]


def _last_step(out: Path) -> int:
    try:
        return json.loads((out / "checkpoints" / "last.json").read_text())["step"]
    except (OSError, ValueError):
        return 0


def test_killed_two_rank_run_resumes_to_the_uninterrupted_result(two_rank_run, config, data, tmp_path):
    whole, _ = two_rank_run
    killed = tmp_path / "killed"
    procs = _launch_ranks(_train_args(config, data, killed), 2)
    try:
        deadline = time.time() + TIMEOUT
        while _last_step(killed) < 40 and all(p.poll() is None for p in procs) and time.time() < deadline:
            time.sleep(0.02)
    finally:
        for p in procs:
            p.send_signal(signal.SIGKILL)
        for p in procs:
            p.wait()
    stopped_at = _last_step(killed)
    assert 0 < stopped_at < STEPS, f"the kill should land mid-run (last checkpoint at step {stopped_at})"

    procs = _launch_ranks([*_train_args(config, data, killed), "--resume"], 2)
    assert [p.wait(timeout=TIMEOUT) for p in procs] == [0, 0]
    a = torch.load(whole / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(killed / "checkpoints" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == STEPS and a["best_step"] == b["best_step"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert (json.loads((whole / "checkpoints" / "last.json").read_text())["valid"]
            == json.loads((killed / "checkpoints" / "last.json").read_text())["valid"])


def test_bench_scale_smoke(tmp_path):
    """experiments/bench_scale.py end to end at tiny size: one row per run, figures read from the runs."""
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "experiments" / "bench_scale.py"), "--work", str(tmp_path),
                          "--events", "3000", "--items", "60", "--steps", "4", "--log-every", "2", "--batch", "16",
                          "--no-same-cores", "--json", str(tmp_path / "bench.json")],
                         env=_one_thread_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| 1 process") or line.startswith("| 2 ranks")]
    assert len(rows) == 2, out.stdout
    figures = json.loads((tmp_path / "bench.json").read_text())["train"]["rows"]
    assert [r["threads in all"] for r in figures] == [1, 2]
    assert all(r["samples/s"] > 0 and 0 < r["start-up s"] < r["wall s"] for r in figures)
