"""kill -9 at named points of `seqrec prepare` and `seqrec score` (both engines), each a real `python -m seqrec`
process killed with SIGKILL, then the same command again: the output equals an uninterrupted run's (the same
files, byte for byte; manifest.json the same but for timings). The points are the test hook of
seqrec/core/faults.py (SEQREC_KILL_AT): pass 1 (bucket files half written), prepare's passes 2 and 3
(events.parquet half written), score's pass 2 (a part file half written); the Ray engine's driver is killed
in its batching step and again while its actors score, and its local Ray's daemons, actors and workers must
exit with it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from seqrec.datasets.synthetic import SyntheticConfig, write_events

from seqrec.cli.main import main

TIMEOUT = 240  # seconds a command may take before the test fails (a hang would otherwise block CI)
KILLED = -signal.SIGKILL  # subprocess's return code of a process killed by SIGKILL
VOLATILE = ("timings", "sessions_per_s", "peak_rss_mib", "resumed")  # manifest keys that describe one execution


def seqrec(args: list[str], kill: str | None = None, **popen) -> subprocess.Popen:
    """`python -m seqrec ARGS` on one thread, with SEQREC_KILL_AT=`kill` (None: no kill point); its output
    to a pipe unless `popen` says otherwise."""
    env = {k: v for k, v in os.environ.items() if k != "SEQREC_KILL_AT"}
    env |= {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **({"SEQREC_KILL_AT": kill} if kill else {})}
    popen = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, **popen}
    return subprocess.Popen([sys.executable, "-m", "seqrec", *args], env=env, text=True, **popen)


def finished(args: list[str], kill: str | None = None) -> tuple[int, str]:
    """Run `seqrec ARGS` to its end: (return code, output)."""
    proc = seqrec(args, kill)
    try:
        out, _ = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out


def files(root: Path) -> dict[str, bytes]:
    """Every file under root (hidden ones too), by relative path -> bytes; manifest.json left out."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "manifest.json"}


def assert_same_output(whole: Path, resumed: Path) -> dict:
    """The same files with the same bytes, and the same manifest but for what describes one execution."""
    a, b = files(whole), files(resumed)
    assert sorted(a) == sorted(b)
    assert [k for k in a if a[k] != b[k]] == []  # byte-identical parts, quarantine, marker
    ma, mb = (json.loads((p / "manifest.json").read_text()) for p in (whole, resumed))
    assert {k: v for k, v in ma.items() if k not in VOLATILE} == {k: v for k, v in mb.items() if k not in VOLATILE}
    return mb


def readable(path: Path) -> bool:
    try:
        pq.ParquetFile(str(path))
        return True
    except (OSError, pa.ArrowInvalid):
        return False


# ---------------------------------------------------------------------------------------------- prepare

@pytest.fixture(scope="module")
def log(tmp_path_factory) -> dict:
    """A generated log (3,260 events), a [prepare] table of 300-row buckets (11 buckets), and the folder an
    uninterrupted `seqrec prepare` makes of them."""
    d = tmp_path_factory.mktemp("faults")
    write_events(SyntheticConfig(users=150, items=40, seed=3), d / "events.parquet")
    (d / "prepare.toml").write_text("[prepare]\nbucket_rows = 300\n")
    args = ["prepare", "--input", str(d / "events.parquet"), "--config", str(d / "prepare.toml")]
    rc, out = finished([*args, "--out", str(d / "whole")])
    assert rc == 0, out
    return {"dir": d, "args": args, "whole": d / "whole"}


def _pass1_cut(out: Path) -> None:
    """Killed in pass 1: bucket files only, three of them (the third half written), nothing of pass 2."""
    assert len(list((out / "_work").glob("bucket-*.arrow"))) == 3 and not list((out / "_work").glob("sessions-*"))


def _pass2_cut(out: Path) -> None:
    """Killed in pass 2: two buckets sorted and cut into sessions, the others still raw; nothing written in OUT."""
    assert len(list((out / "_work").glob("sessions-*.arrow"))) >= 2 and list((out / "_work").glob("bucket-*"))
    assert not (out / "events.parquet").exists()


def _pass3_cut(out: Path) -> None:
    """Killed in pass 3: events.parquet half written (two buckets' rows, no footer: unreadable)."""
    assert (out / "events.parquet").exists() and not readable(out / "events.parquet")


@pytest.mark.slow
@pytest.mark.parametrize("point, check", [("scatter.write:3", _pass1_cut), ("prepare.sessions:2", _pass2_cut),
                                          ("prepare.emit:2", _pass3_cut)])
def test_prepare_killed_then_run_again_writes_the_uninterrupted_folder(log, point, check, tmp_path, capsys):
    out = tmp_path / "prepared"
    args = [*log["args"], "--out", str(out)]
    rc, text = finished(args, kill=point)
    assert rc == KILLED, text
    assert not (out / "manifest.json").exists()  # incomplete: never re-used
    check(out)
    capsys.readouterr()
    assert main(args) == 0 and "re-used" not in capsys.readouterr().out  # the same command, in this process
    m = assert_same_output(log["whole"], out)
    assert not m["reused"] and not (out / "_work").exists()


# ---------------------------------------------------------------------------------------------- score

SCORE = ("--bucket-rows", "300", "--batch-size", "8", "--seed", "5", "--no-progress")  # 11 parts of ~6 batches


@pytest.fixture(scope="module")
def scored(score_world, tmp_path_factory) -> dict:
    """The score command on the scoring world (tests/conftest.py) and its uninterrupted output (local engine)."""
    args = ["score", "--run", str(score_world["tower"]), "--input", str(score_world["log"]), *SCORE]
    whole = tmp_path_factory.mktemp("scored") / "whole"
    rc, out = finished([*args, "--out", str(whole)])
    assert rc == 0, out
    assert len(json.loads((whole / "manifest.json").read_text())["parts"]) == 11
    return {"args": args, "whole": whole}


def _score_pass1_cut(out: Path) -> None:
    """Killed in pass 1: the job noted, bucket files (one half written), no scatter counts, no part."""
    work = out / "_work"
    assert (work / "job.json").exists() and list(work.glob("bucket-*.arrow")) and not (work / "scatter.json").exists()
    assert not (out / "scores").exists()


def _first_part_cut(out: Path) -> None:
    """Killed writing the first part: its hidden temporary file half written (no footer), no bucket done."""
    tmp = list((out / "scores").glob(".part-*.parquet.tmp"))
    assert len(tmp) == 1 and not readable(tmp[0]) and not list((out / "scores").glob("part-*"))
    assert not list((out / "_work").glob("done-*.json"))


def _later_part_cut(out: Path) -> None:
    """Killed writing the second part: the first part whole and noted done, the second half written."""
    tmp = list((out / "scores").glob(".part-*.parquet.tmp"))
    assert len(tmp) == 1 and not readable(tmp[0])
    assert len(list((out / "scores").glob("part-*.parquet"))) == 1 == len(list((out / "_work").glob("done-*.json")))


@pytest.mark.slow
@pytest.mark.parametrize("point, check", [("scatter.write:2", _score_pass1_cut), ("score.part:2", _first_part_cut),
                                          ("score.part:8", _later_part_cut)])
def test_score_killed_then_run_again_writes_the_uninterrupted_output(scored, point, check, tmp_path):
    out = tmp_path / "out"
    args = [*scored["args"], "--out", str(out)]
    rc, text = finished(args, kill=point)
    assert rc == KILLED, text
    assert not (out / "_COMPLETE").exists() and not (out / "manifest.json").exists()
    check(out)
    assert main(args) == 0  # the same command, in this process (one torch thread, as in the killed one)
    m = assert_same_output(scored["whole"], out)
    assert m["resumed"] == (point != "scatter.write:2")  # killed in pass 1: started afresh, else resumed
    assert not (out / "_work").exists()


# ---------------------------------------------------------------------------------------------- the Ray engine

AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")  # Ray's per-node agents (see the Ray test)


def _session_members(sid: int) -> dict[int, str]:
    """Live processes (not zombies) of the session `sid` (Linux /proc), pid -> command line: what a command
    started in its own session left running, Ray's daemons and workers included."""
    found = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            if fields[0] != "Z" and int(fields[3]) == sid:
                found[int(d.name)] = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
    return found


def _wait_gone(sid: int, seconds: float, but: tuple[str, ...] = ()) -> dict[int, str]:
    """Wait up to `seconds` for the session's processes (but those whose command line starts with one of `but`)
    to exit; returns those still running."""
    deadline = time.time() + seconds
    while (left := {p: c for p, c in _session_members(sid).items() if not c.startswith(but)}) \
            and time.time() < deadline:
        time.sleep(0.2)
    return left


def _kill_session(sid: int) -> None:
    """SIGKILL, by pid, whatever the session `sid` (a process this test started) still runs."""
    for pid in _session_members(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds Ray's processes through Linux /proc")
def test_ray_engine_killed_twice_then_run_again_scores_the_local_rows(scored, tmp_path):
    """kill -9 of `seqrec score --engine ray` after its second batch file (before Ray), then again while its
    actors score (its own local Ray running), then the same command: the local engine's rows and quarantine.
    Killed with the driver: Ray's GCS and raylet at once (Ray ties them to the driver's life), then the actors
    and workers (they follow their raylet). Ray's two agents (dashboard, runtime env) see the raylet die at once
    but exit only after Ray's 60 s timeout for reporting that to the dead GCS: the test kills them by pid."""
    pytest.importorskip("ray", reason="the Ray engine needs the ray extra: pip install -e '.[ray]'")
    out = tmp_path / "ray"
    args = [*scored["args"], "--out", str(out), "--engine", "ray"]

    rc, text = finished(args, kill="score.batched:2")
    assert rc == KILLED, text
    work = out / "_work"
    assert len(list(work.glob("batched-*.json"))) == 2 and not (work / "actors").exists()

    log = tmp_path / "killed.log"  # (a file: a pipe nobody reads while it runs could fill and stall it)
    with log.open("w") as sink:  # its own session: the Ray it starts is found by session id
        proc = seqrec(args, start_new_session=True, stdout=sink)
    try:
        deadline = time.time() + TIMEOUT
        while not list((work / "actors").glob("*.json")) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        assert any("raylet" in c for c in _session_members(proc.pid).values()), "no Ray running to kill"
        proc.send_signal(signal.SIGKILL)  # an actor has loaded the run: the Ray stage is under way
        proc.wait()
        assert proc.returncode == KILLED, log.read_text()[-3000:]
        assert not (out / "_COMPLETE").exists() and len(list(work.glob("batched-*.json"))) == 11
        left = _wait_gone(proc.pid, 30, but=AGENTS)
        assert left == {}, f"Ray processes outlived the killed driver: {left}"

    finally:
        _kill_session(proc.pid)  # the agents, unless they are gone already (the test does not wait for them)
    rc, text = finished(args)
    assert rc == 0, text
    local, m = (json.loads((p / "manifest.json").read_text()) for p in (scored["whole"], out))
    assert m["engine"] == "ray" and m["resumed"] and (out / "_COMPLETE").exists()
    for key in ("rows_read", "rows_kept", "rows_quarantined", "quarantine_reasons", "sessions", "rows",
                "config_hash", "model_version"):
        assert m[key] == local[key], key
    key = [("user_id", "ascending"), ("session_id", "ascending"), ("session_start", "ascending"),
           ("rank", "ascending")]
    a, b = (pq.read_table(p / "scores").sort_by(key).combine_chunks() for p in (scored["whole"], out))
    assert a.column_names == b.column_names and a.num_rows == b.num_rows > 0
    for name in a.column_names:  # Ray's write tasks cut other parts: the rows, sorted, are equal
        x, y = a.column(name), b.column(name)
        if pa.types.is_dictionary(x.type):
            x, y = x.cast(x.type.value_type), y.cast(y.type.value_type)
        assert x.equals(y), name
    assert pq.read_table(scored["whole"] / "quarantine.parquet").equals(pq.read_table(out / "quarantine.parquet"))
    assert not work.exists()
