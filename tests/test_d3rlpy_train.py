"""d3rlpy algorithms through `seqrec train` / `seqrec evaluate`: config keys and errors, checkpoints, TensorBoard
tags, no gym notice in the CLI's output, exact resume after kill -9, and the experiment scripts at tiny size."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from synthetic_data import prepared_log

from seqrec.cli.main import main
from seqrec.core.config import ConfigError
from seqrec.runs.config import load_run_config, saved_config

ROOT = Path(__file__).resolve().parents[1]
CONFIG = """
algorithm = "d3rlpy.discrete_cql"

[encoder]
kind = "sasrec"
dim = 16
dropout = 0.1

[head]
gamma = 0.5

[d3rlpy]
target_update_interval = 7
alpha = 0.5

[train]
batch_size = 32
lr = 0.01
max_steps = 40
eval_every = 20
log_every = 10
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    return prepared_log(d)


@pytest.fixture
def config(tmp_path) -> Path:
    p = tmp_path / "run.toml"
    p.write_text(CONFIG)
    return p


def _env() -> dict[str, str]:
    # same thread count as this process: float sums must happen in the same order to compare bit for bit
    return {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}


def test_algorithm_and_d3rlpy_table_compose_with_overrides(config, data, tmp_path):
    cfg = load_run_config(config, ["algorithm=d3rlpy.discrete_bcq", "d3rlpy.action_flexibility=0.2"], str(data))
    assert cfg.algorithm == "d3rlpy.discrete_bcq"
    assert (cfg.d3rlpy.alpha, cfg.d3rlpy.action_flexibility, cfg.d3rlpy.target_update_interval) == (0.5, 0.2, 7)
    assert cfg.to_dict()["algorithm"] == "d3rlpy.discrete_bcq"
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
    assert saved_config(tmp_path) == cfg
    # runs of our own heads keep the config.json they had before d3rlpy runs existed (resume compares it)
    plain = tmp_path / "plain.toml"
    plain.write_text("[head]\nvariant = 'sqn'\n")
    assert set(load_run_config(plain, [], str(data)).to_dict()) == {"data", "encoder", "head", "train"}


@pytest.mark.parametrize("override, message", [
    ("d3rlpy.alpah=2", r"unknown key d3rlpy.alpah; valid keys in \[d3rlpy\]: action_flexibility, alpha, beta"),
    ("algorithm=d3rlpy.sac", "algorithm must be one of seqrec, d3rlpy.dqn, d3rlpy.double_dqn"),
    ("algorithm=seqrec", r"\[d3rlpy\] applies only with algorithm"),
    ("head.variant='sqn'", r"only head.gamma applies .*remove head.variant"),
    ("d3rlpy.action_flexibility=1.5", r"action_flexibility must be in \(0, 1\)"),
    ("d3rlpy.target_update_interval=0", "target_update_interval must be an int >= 1"),
    ("algorithm.x=1", r"unknown section 'algorithm'"),
])
def test_bad_d3rlpy_settings_name_the_key(config, data, override, message):
    with pytest.raises(ConfigError, match=message):
        load_run_config(config, [override], str(data))


def test_cli_trains_evaluates_and_keeps_the_gym_notice_out(config, data, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "seqrec", "train", "--config", str(config), "--data", str(data),
                           "--out", str(out)], capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 0, proc.stderr
    assert "unmaintained" not in proc.stdout + proc.stderr
    assert proc.stdout.startswith(f"trained {out} to step 40")
    for name in ("last", "best"):
        state = torch.load(out / "checkpoints" / f"{name}.pt", weights_only=True)
        assert state["step"] > 0 and any(k.startswith("nets.targ_q_funcs.") for k in state["model"])
    assert (out / "checkpoints" / "best.d3").exists()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss/total", "loss/td", "loss/conservative", "perf/samples_per_s", "metrics/purchase_hr@10"} <= tags

    assert main(["evaluate", "--run", str(out), "--split", "test"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"view", "purchase"} <= set(metrics["test"])
    assert all(0.0 <= metrics["test"]["view"][f"{m}@{k}"] <= 1.0 for m in ("hr", "ndcg") for k in (5, 10, 20))


def _last_step(out: Path) -> int:
    try:
        return json.loads((out / "checkpoints" / "last.json").read_text())["step"]
    except (OSError, ValueError):
        return 0


def test_kill_9_then_resume_ends_with_the_same_weights_and_metrics(config, data, tmp_path):
    args = ["--config", str(config), "--data", str(data), "--set", "train.max_steps=300", "--set",
            "train.eval_every=25"]
    whole = tmp_path / "whole"
    assert main(["train", *args, "--out", str(whole)]) == 0

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "seqrec", "train", *args, "--out", str(killed)], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while _last_step(killed) < 50 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stopped_at = _last_step(killed)
    assert 0 < stopped_at < 300, "the kill should land mid-run"
    assert main(["train", *args, "--out", str(killed), "--resume"]) == 0

    a = torch.load(whole / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(killed / "checkpoints" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 300 and a["best_step"] == b["best_step"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert (json.loads((whole / "checkpoints" / "last.json").read_text())["valid"]
            == json.loads((killed / "checkpoints" / "last.json").read_text())["valid"])


def test_bench_train_runs_d3rlpy_dqn_beside_sqn():
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "bench_train.py"), "--catalogues", "500",
                          "--steps", "2", "--batch", "32", "--warmup", "1", "--mm-samples", "2", "--eval-batches", "1",
                          "--variants", "sasrec-sqn,d3rlpy-dqn"], capture_output=True, text=True, check=True,
                         timeout=300, env=_env())
    rows = [line.split(" | ")[0] for line in out.stdout.splitlines() if line.startswith("| ") and "| 500 |" in line]
    assert rows == ["| sasrec-sqn", "| d3rlpy-dqn"], out.stdout
    assert "unmaintained" not in out.stdout + out.stderr


def test_train_table_runs_every_d3rlpy_config(data, tmp_path):
    models = "d3rlpy_dqn,d3rlpy_double_dqn,d3rlpy_discrete_cql,d3rlpy_discrete_bcq"
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "train_table.py"), "--data", str(data),
                          "--out", str(tmp_path / "runs"), "--models", models, "--seeds", "0",
                          "--set", "train.max_steps=4", "--set", "train.eval_every=2", "--set", "encoder.dim=8"],
                         capture_output=True, text=True, timeout=300, env=_env())
    assert out.returncode == 0, out.stderr
    table = (tmp_path / "runs" / "table.md").read_text()
    assert all(f"| {m} |" in table for m in models.split(",")), table
    for m in models.split(","):
        cfg = json.loads((tmp_path / "runs" / f"{m}-seed0" / "config.json").read_text())
        assert cfg["algorithm"] == "d3rlpy." + m.removeprefix("d3rlpy_")
