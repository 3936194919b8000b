"""Training runs: config errors, checkpoints, TensorBoard tags, metrics.json, and exact resume after kill -9."""

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
from seqrec.runs.config import load_run_config
from seqrec.runs.train import train
from seqrec.training.evaluation import recent_scorer

CONFIG = """
[encoder]
kind = "sasrec"
dim = 16
dropout = 0.1

[head]
variant = "sqn"

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


def test_config_composes_sections_overrides_and_dataset_defaults(config, data):
    cfg = load_run_config(config, ["train.max_steps=7", "head.variant='sa2c'", "encoder.blocks=2"], str(data))
    manifest = json.loads((data / "manifest.json").read_text())
    assert cfg.train.max_steps == 7 and cfg.head.variant == "sa2c" and cfg.encoder.blocks == 2
    assert cfg.encoder.num_items == manifest["catalogue_size"] and cfg.encoder.max_len == 10


@pytest.mark.parametrize("override, message", [
    ("train.max_step=3", r"unknown key train.max_step; valid keys in \[train\]"),
    ("trian.max_steps=3", "unknown section 'trian'"),
    ("head.variant='dqn'", "variant must be one of"),
    ("train.lr=fast", "train.lr must be float"),
    ("max_steps=3", "expected section.key=value"),
])
def test_bad_overrides_name_the_key(config, data, override, message):
    with pytest.raises(ConfigError, match=message):
        load_run_config(config, [override], str(data))


def test_unknown_key_in_the_file(tmp_path, data):
    p = tmp_path / "bad.toml"
    p.write_text("[train]\nbatchsize = 3\n")
    with pytest.raises(ConfigError, match="train.batchsize.*batch_size"):
        load_run_config(p, [], str(data))


def test_train_writes_checkpoints_tensorboard_and_evaluate_writes_metrics(config, data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--data", str(data), "--out", str(out)]) == 0
    for name in ("last", "best"):
        state = torch.load(out / "checkpoints" / f"{name}.pt", weights_only=True)
        assert state["step"] > 0 and "model" in state
        assert json.loads((out / "checkpoints" / f"{name}.json").read_text())["step"] == state["step"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss/ce", "loss/td", "q/mean", "perf/samples_per_s", "metrics/purchase_hr@10"} <= tags
    assert main(["evaluate", "--run", str(out), "--split", "test"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for block in (metrics["test"], metrics["popularity"]["test"], metrics["recent"]["test"]):
        assert {"view", "purchase"} <= set(block)
        assert all(0.0 <= block["view"][f"{m}@{k}"] <= 1.0 for m in ("hr", "ndcg") for k in (5, 10, 20))
    printed = capsys.readouterr().out
    assert "popularity purchase" in printed and "recent purchase" in printed
    # the same run folder is not silently overwritten
    assert main(["train", "--config", str(config), "--data", str(data), "--out", str(out)]) == 2


def test_resume_refuses_a_changed_config_but_not_a_key_added_since(config, data, tmp_path):
    """--resume with another value is refused; a config.json written before a key existed (the key at its
    default now) resumes: users upgrade seqrec between a killed run and its resume."""
    out, same = tmp_path / "run", ["train.max_steps=2", "train.eval_every=2"]
    train(load_run_config(config, same, str(data)), out, progress=False)
    with pytest.raises(ConfigError, match="different config"):
        train(load_run_config(config, [*same, "head.gamma=0.9"], str(data)), out, resume=True, progress=False)
    saved = json.loads((out / "config.json").read_text())
    del saved["head"]["actor_weights"]  # as a run started before head.actor_weights existed wrote it
    (out / "config.json").write_text(json.dumps(saved))
    train(load_run_config(config, same, str(data)), out, resume=True, progress=False)  # no error
    assert _last_step(out) == 2 and json.loads((out / "config.json").read_text())["head"]["actor_weights"] == "raw"


def test_evaluate_rejects_a_protocol_the_data_was_not_prepared_for(config, data, tmp_path):
    out = tmp_path / "run"
    train(load_run_config(config, ["train.max_steps=2", "train.eval_every=2"], str(data)), out, progress=False)
    assert main(["evaluate", "--run", str(out), "--protocol", "loo"]) == 2


def _last_step(out: Path) -> int:
    try:
        return json.loads((out / "checkpoints" / "last.json").read_text())["step"]
    except (OSError, ValueError):
        return 0


def test_kill_9_then_resume_ends_with_the_same_metrics(config, data, tmp_path):
    args = ["--config", str(config), "--data", str(data), "--set", "train.max_steps=400", "--set",
            "train.eval_every=25", "--set", "head.variant='sa2c'", "--set", "head.warmup_steps=100"]
    whole = tmp_path / "whole"
    assert main(["train", *args, "--out", str(whole)]) == 0

    killed = tmp_path / "killed"
    # same thread count as this process: float sums must happen in the same order to compare bit for bit
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen([sys.executable, "-m", "seqrec", "train", *args, "--out", str(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while _last_step(killed) < 50 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stopped_at = _last_step(killed)
    assert 0 < stopped_at < 400, "the kill should land mid-run"
    assert main(["train", *args, "--out", str(killed), "--resume"]) == 0

    a = torch.load(whole / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(killed / "checkpoints" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 400 and a["best_step"] == b["best_step"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert (json.loads((whole / "checkpoints" / "last.json").read_text())["valid"]
            == json.loads((killed / "checkpoints" / "last.json").read_text())["valid"])


def test_recent_baseline_ranks_the_window_newest_first_then_popularity() -> None:
    """Hand-computed: window [pad, 5, 3, 5] -> 5 (its newest column wins), 3, then items by training count."""
    import numpy as np

    train_actions = np.array([4, 4, 4, 6, 6, 3, 1, 1, 1, 1])  # counts: 4 -> 3, 6 -> 2, 3 -> 1; OOV (1) 4 times
    score = recent_scorer(train_actions, 8, torch.device("cpu"))
    s = score(torch.tensor([[0, 5, 3, 5], [0, 0, 0, 0]]))  # (2, 8)
    assert s[0].argsort(descending=True)[:4].tolist() == [5, 3, 4, 6]
    assert s[1].argsort(descending=True)[:3].tolist() == [4, 6, 3]  # an empty window: popularity alone
    assert (s[:, :2] < 0).all()  # padding and OOV never come first, however often OOV occurred
