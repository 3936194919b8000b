"""Multi-node without a cluster: two "machines" on this one. A Ray cluster of a head and a worker node (`ray
start`, one CPU each) scores the local engine's rows; `torchrun --nnodes=2` (one process per node, gloo, a
static rendezvous on 127.0.0.1) trains to the weights of one process. Every process a test starts is in its own
session and stopped by pid (never `ray stop`, which stops every Ray on the machine, others' too)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from seqrec.datasets.adapters import source_spec
from seqrec.datasets.prepare import PrepareConfig, prepare
from seqrec.datasets.synthetic import SyntheticConfig, write_events
from synthetic_data import ddp_run

from seqrec.cli.main import main
from seqrec.runs.config import load_run_config
from seqrec.runs.train import train

TIMEOUT = 240  # seconds a command may take before the test fails (a hang would otherwise block CI)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    """This environment on one thread, without a rank torchrun would read."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                              "MASTER_PORT", "SEQREC_KILL_AT")}
    return {**env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **extra}


def _session_members(sid: int) -> list[int]:
    """Live processes of the session `sid` (Linux /proc): a command started in its own session and whatever it
    left running (Ray's daemons, agents and workers included)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z" and int(fields[3]) == sid:
                pids.append(int(d.name))
    return pids


def _stop_sessions(sids: list[int], grace: float = 5.0) -> None:
    """SIGTERM every process of these sessions, SIGKILL those left after `grace` seconds (by pid), and wait
    (up to `grace` seconds again) for them to be gone."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, grace)):
        for sid in sids:
            for pid in _session_members(sid):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        deadline = time.time() + wait
        while any(_session_members(s) for s in sids) and time.time() < deadline:
            time.sleep(0.2)


# ---------------------------------------------------------------------------------------------- Ray

@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="stops the cluster through Linux /proc")
def test_two_node_ray_cluster_scores_the_local_engines_rows(score_world, tmp_path):
    pytest.importorskip("ray", reason="the Ray engine needs the ray extra: pip install -e '.[ray]'")
    ray_cli = Path(sys.executable).with_name("ray")
    assert ray_cli.exists(), f"{ray_cli}: the ray extra installs the `ray` command next to python"
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    env = _env(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")  # no token to share between the nodes
    port = _free_port()
    address = f"127.0.0.1:{port}"
    common = ["--num-cpus=1", "--node-ip-address=127.0.0.1", f"--dashboard-agent-listen-port={_free_port()}",
              "--disable-usage-stats"]
    head = [str(ray_cli), "start", "--head", f"--port={port}", f"--temp-dir={temp}", "--include-dashboard=false",
            f"--ray-client-server-port={_free_port()}", *common]
    worker = [str(ray_cli), "start", f"--address={address}", *common]
    args = ["--run", str(score_world["tower"]), "--input", str(score_world["log"]), "--bucket-rows", "300",
            "--batch-size", "8", "--seed", "5", "--no-progress"]
    sessions: list[int] = []
    try:
        for cmd in (head, worker):  # a node per session: its daemons outlive `ray start`, stopped by pid after
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    start_new_session=True)
            sessions.append(proc.pid)
            out, _ = proc.communicate(timeout=TIMEOUT)
            assert proc.returncode == 0, out[-3000:]
        probe = (f"import ray; ray.init(address={address!r}, logging_level='ERROR'); "
                 "print(sum(n['Alive'] for n in ray.nodes()), ray.cluster_resources().get('CPU'))")
        nodes = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                               timeout=TIMEOUT)
        assert nodes.stdout.split() == ["2", "2.0"], nodes.stderr[-3000:]  # two live nodes of one CPU each

        far = subprocess.run([sys.executable, "-m", "seqrec", "score", *args, "--out", str(tmp_path / "ray"),
                              "--engine", "ray", "--ray-address", address], env=env, capture_output=True,
                             text=True, timeout=TIMEOUT)
        assert far.returncode == 0, far.stderr[-3000:]
    finally:
        _stop_sessions(sessions)
        shutil.rmtree(temp, ignore_errors=True)
    left = [pid for s in sessions for pid in _session_members(s)]
    assert left == [], f"cluster processes left running: {left}"

    assert main(["score", *args, "--out", str(tmp_path / "local")]) == 0
    a, m = (json.loads((tmp_path / d / "manifest.json").read_text()) for d in ("local", "ray"))
    assert m["engine"] == "ray" and m["ray"]["address"] == address and m["ray"]["cpus"] == 2.0
    # 1-CPU nodes: the actors ask for no CPU, so that a read or write task (a whole CPU) fits on either node
    # wherever the actors are (half a CPU each, one on each node, left neither a whole CPU: the job hung)
    assert m["ray"]["actors"] == 2 and m["ray"]["cpus_per_actor"] == 0.0 and 1 <= m["ray"]["ray_nodes"] <= 2
    for key in ("rows_read", "rows_kept", "rows_quarantined", "quarantine_reasons", "sessions", "rows",
                "config_hash", "model_version"):
        assert m[key] == a[key], key
    key = [(c, "ascending") for c in ("user_id", "session_id", "session_start", "rank")]
    x, y = (pq.read_table(tmp_path / d / "scores").sort_by(key).combine_chunks() for d in ("local", "ray"))
    assert x.column_names == y.column_names and x.num_rows == y.num_rows > 0
    for name in x.column_names:  # every column of every row (dictionaries compared as values)
        p, q = x.column(name), y.column(name)
        if pa.types.is_dictionary(p.type):
            p, q = p.cast(p.type.value_type), q.cast(q.type.value_type)
        assert p.equals(q), name


# ---------------------------------------------------------------------------------------------- torchrun

# dropout 0 and SQN: two ranks compute the one-process update up to summation order (seqrec/training/distributed.py)
CONFIG = ddp_run(40)


@pytest.mark.slow
def test_torchrun_on_two_nodes_trains_the_one_process_weights(tmp_path):
    write_events(SyntheticConfig(users=150, items=40, seed=3), tmp_path / "events.parquet")
    prepare([tmp_path / "events.parquet"], lambda p: source_spec("events", p), PrepareConfig(), tmp_path / "data")
    (tmp_path / "run.toml").write_text(CONFIG)
    port = _free_port()
    two = tmp_path / "two-nodes"
    launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
              "--master-addr=127.0.0.1", f"--master-port={port}"]
    train_args = ["-m", "seqrec", "train", "--config", str(tmp_path / "run.toml"), "--data", str(tmp_path / "data"),
                  "--out", str(two), "--no-progress"]
    logs = [tmp_path / f"node{r}.log" for r in (0, 1)]
    procs = []
    try:
        for rank, log in enumerate(logs):  # the same command on both "machines", but the node rank
            with log.open("w") as sink:
                procs.append(subprocess.Popen([*launch, f"--node-rank={rank}", *train_args], env=_env(),
                                              stdout=sink, stderr=subprocess.STDOUT, start_new_session=True))
        codes = [p.wait(timeout=TIMEOUT) for p in procs]
    finally:
        _stop_sessions([p.pid for p in procs if p.poll() is None])
    assert codes == [0, 0], [log.read_text()[-2000:] for log in logs]
    assert logs[0].read_text().count("trained ") == 1 and "trained " not in logs[1].read_text()  # rank 0 reports

    one = tmp_path / "one"
    torch.set_num_threads(1)
    train(load_run_config(tmp_path / "run.toml", [], str(tmp_path / "data")), one, progress=False)
    a = torch.load(one / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(two / "checkpoints" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 40 and a["model"].keys() == b["model"].keys()
    # the ranks average shard gradients, the whole batch's up to summation order: every weight within float32
    # rounding (measured: at most 2.4e-7 apart), but the attention's key bias (rows D:2D of qkv.bias). Its exact
    # gradient is 0 (it adds q.b to every logit of a query, which softmax cancels), so Adam turns rounding
    # noise into full steps of lr, different in each run: it changes no output (the metrics below)
    d = 16
    for k in a["model"]:
        x, y = a["model"][k], b["model"][k]
        if k.endswith(".qkv.bias"):
            x, y = torch.cat([x[:d], x[2 * d:]]), torch.cat([y[:d], y[2 * d:]])
        torch.testing.assert_close(y, x, rtol=0, atol=1e-6, msg=k)
    va, vb = (json.loads((r / "checkpoints" / "last.json").read_text())["valid"] for r in (one, two))
    assert va.keys() == vb.keys() and all(vb[ev] == pytest.approx(va[ev], abs=1e-6) for ev in va)
