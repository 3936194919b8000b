"""One writer per output (seqrec/core/lock.py) and the progress lines of prepare and score (seqrec/core/progress.py).

A second writer of the same output stops with one line naming the first (pid, host, command, since when) and exit
status 2; a lock left by a dead process is taken over, by exactly one of several writers at once; the issue's race
(two `seqrec prepare` into one --out a second apart) ends with one complete dataset and one clear refusal; a
prepared folder cut short by a kill, or whose files do not match its manifest, is redone, never re-used."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from seqrec.datasets.manifest import TRANSITION_FILES, load_manifest, outputs_exist
from uci_fake import fake_uci  # tests/uci_fake.py (pytest puts tests/ on sys.path)

from seqrec.cli.main import main
from seqrec.core import lock as L
from seqrec.core.lock import OutputLocked, lock_path, output_lock
from seqrec.core.progress import ProgressLines, every_seconds

CONFIGS = Path(__file__).resolve().parents[1] / "experiments" / "configs"
HOLD = """import sys
from seqrec.core.lock import OutputLocked, output_lock
try:
    with output_lock(sys.argv[1], sys.argv[2]):
        print("held", flush=True)
        sys.stdin.read()
except OutputLocked:
    print("refused", flush=True)
"""


def env(**extra: str) -> dict:
    """The environment of a seqrec subprocess: one torch thread, extras."""
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


@contextmanager
def held_elsewhere(out: Path, command: str = "seqrec prepare"):
    """Another process holding `out`'s lock for the `with` block; yields it."""
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(out), command], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, env=env())
    try:
        assert p.stdout.readline() == "held\n"
        yield p
    finally:
        p.stdin.close()
        p.wait(timeout=60)


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.fixture(scope="module")
def log(tmp_path_factory) -> Path:
    """A generated CSV log big enough that prepare's pass 1 takes a moment (~60k events)."""
    path = tmp_path_factory.mktemp("locks") / "ev.csv"
    assert main(["generate", "--out", str(path), "--events", "60000"]) == 0
    return path


def prepare_cmd(log: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "seqrec", "prepare", "--input", str(log), "--out", str(out), *extra]


def complete(out: Path) -> dict:
    """The manifest of a whole, non-empty prepared folder (asserts it is one)."""
    m = load_manifest(out)
    assert m is not None and outputs_exist(out, m), f"{out} is not a whole prepared folder"
    assert m["sessions"]["after_filter"] > 0 and m["rows_kept"] > 0
    return m


# ------------------------------------------------------------------------------------------ the lock itself
def test_lock_file_lies_beside_the_output_and_every_spelling_agrees(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert lock_path("d") == lock_path("./d/") == lock_path(tmp_path / "d") == tmp_path / ".d.lock"
    assert lock_path(tmp_path / "x" / "log.parquet") == tmp_path / "x" / ".log.parquet.lock"


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "d"
    with held_elsewhere(out) as holder:
        record = json.loads(lock_path(out).read_text())
        assert record["pid"] == holder.pid and record["host"] == socket.gethostname()
        with pytest.raises(OutputLocked) as e, output_lock(out, "seqrec train"):
            pass
        msg = str(e.value)
        assert msg.startswith(f"{out} is being written by seqrec prepare (pid {holder.pid} on "
                              f"{socket.gethostname()}, since {record['since']}"), msg
        assert str(lock_path(out)) in msg and "\n" not in msg
    assert not lock_path(out).exists()  # released when its holder ended
    with output_lock(out, "seqrec train"):  # and free again
        assert json.loads(lock_path(out).read_text())["pid"] == os.getpid()


def test_released_on_error_and_reentrant_in_one_thread_but_not_across_threads(tmp_path):
    out = tmp_path / "d"
    with pytest.raises(RuntimeError, match="boom"), output_lock(out, "a"):
        raise RuntimeError("boom")
    assert not lock_path(out).exists()
    errors: list[BaseException] = []

    def other() -> None:
        try:
            with output_lock(out, "b"):
                pass
        except OutputLocked as e:
            errors.append(e)

    with output_lock(out, "seqrec prepare"):
        with output_lock(out, "seqrec prepare"):  # the command, then the library function it calls
            t = threading.Thread(target=other)
            t.start()
            t.join()
        assert lock_path(out).exists()  # the inner block's end released nothing
    assert len(errors) == 1 and f"pid {os.getpid()} " in str(errors[0])
    assert not lock_path(out).exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    out = tmp_path / "d"
    path = lock_path(out)
    pid = dead_pid()
    path.write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "command": "seqrec prepare",
                                "since": "2020-01-01T00:00:00+00:00"}) + "\n")
    with output_lock(out, "seqrec score"):
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert not path.exists()


def test_a_lock_left_by_kill_9_is_taken_over(tmp_path):
    out = tmp_path / "d"
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(out), "seqrec prepare"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, env=env())
    assert p.stdout.readline() == "held\n"
    p.kill()
    p.wait()
    assert json.loads(lock_path(out).read_text())["pid"] == p.pid  # the file stays behind...
    with output_lock(out, "seqrec prepare"):  # ...and is taken over
        assert json.loads(lock_path(out).read_text())["pid"] == os.getpid()


def test_one_of_several_writers_takes_over_a_stale_lock(tmp_path):
    out = tmp_path / "d"
    lock_path(out).write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname(),
                                          "command": "seqrec prepare", "since": "2020-01-01T00:00:00+00:00"}))
    procs = [subprocess.Popen([sys.executable, "-c", HOLD, str(out), "seqrec prepare"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env()) for _ in range(4)]
    try:
        said = [p.stdout.readline() for p in procs]  # each holds or is refused before any holder lets go
    finally:
        for p in procs:
            p.stdin.close()
            p.wait(timeout=60)
    assert sorted(said) == ["held\n"] + ["refused\n"] * 3, said


def test_without_flock_a_live_holder_of_this_host_still_refuses(tmp_path, monkeypatch):
    import errno

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(L.fcntl, "flock", no_flock)
    out = tmp_path / "d"
    alive = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        lock_path(out).write_text(json.dumps({"pid": alive.pid, "host": socket.gethostname(), "command": "x"}))
        with pytest.raises(OutputLocked, match=f"pid {alive.pid} "), output_lock(out, "y"):
            pass
    finally:
        alive.stdin.close()
        alive.wait()
    with output_lock(out, "y"):  # its holder ended: taken over
        assert json.loads(lock_path(out).read_text())["pid"] == os.getpid()


# ------------------------------------------------------------------------------------------ every command
@pytest.fixture(scope="module")
def uci(tmp_path_factory) -> Path:
    return fake_uci(tmp_path_factory.mktemp("uci") / "bank-additional-full.csv", rows=400)


def command_line(name: str, out: Path, log: Path, score_world: dict, uci: Path) -> list[str]:
    """`seqrec NAME` writing `out`."""
    return {
        "prepare": ["prepare", "--input", str(log), "--out", str(out)],
        "train": ["train", "--config", str(CONFIGS / "sasrec.toml"), "--data", str(score_world["data"]), "--out",
                  str(out), "--set", "train.max_steps=2"],
        "score": ["score", "--run", str(score_world["plain"]), "--input", str(score_world["log"]), "--out",
                  str(out)],
        "simulate": ["simulate", "--config", str(CONFIGS / "campaign_sim.toml"), "--out", str(out),
                     "--customers", "100", "--calibration", str(uci)],
        "abtest": ["abtest", "--config", str(CONFIGS / "abtest.toml"), "--out", str(out), "--customers", "100",
                   "--calibration", str(uci), "--no-progress"],
    }[name]


@pytest.mark.parametrize("name", ["prepare", "train", "score", "simulate", "abtest"])
def test_every_writing_command_refuses_an_output_being_written(name, tmp_path, log, score_world, uci, capsys):
    out = tmp_path / ("c.parquet" if name == "simulate" else "out")
    with held_elsewhere(out, "seqrec prepare") as holder:
        assert main(command_line(name, out, log, score_world, uci)) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"seqrec {name}: error: {out} is being written by seqrec prepare (pid {holder.pid} "
                              f"on {socket.gethostname()}, since "), err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert not out.exists()  # nothing written


# ------------------------------------------------------------------------------------------ prepare, for real
def wait_for(condition, proc: subprocess.Popen, what: str, limit_s: float = 300.0) -> None:
    """Poll `condition()` until true; fail if `proc` ends first or `limit_s` passes (a hang, not a timing)."""
    end = time.monotonic() + limit_s
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the first prepare ended (status {proc.returncode}) before {what}: "
                                 f"{proc.stderr.read() if proc.stderr else ''}")
        assert time.monotonic() < end, f"no {what} after {limit_s} s"
        time.sleep(0.005)


def test_two_prepares_into_one_out_a_moment_apart(tmp_path, log):
    """The issue's race: B starts while A is at work (A is stopped as soon as its pass 1 has written a bucket, so
    that B surely meets it). Before the lock, B cleared A's work folder: A then wrote an empty dataset or died with
    a traceback, and B went on as if alone."""
    out = tmp_path / "d"
    a = subprocess.Popen(prepare_cmd(log, out), env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: any((out / "_work").glob("bucket-*")), a, "pass 1")
        a.send_signal(signal.SIGSTOP)
        b = subprocess.run(prepare_cmd(log, out), env=env(), capture_output=True, text=True, timeout=600)
    finally:
        a.send_signal(signal.SIGCONT)
        a_out, a_err = a.communicate(timeout=600)
    assert b.returncode == 2, (b.returncode, b.stdout, b.stderr)
    assert b.stderr.startswith(f"seqrec prepare: error: {out} is being written by seqrec prepare (pid {a.pid} on "
                               f"{socket.gethostname()}, since "), b.stderr
    assert b.stderr.count("\n") == 1 and "Traceback" not in b.stderr and b.stdout == ""
    assert a.returncode == 0, a_err
    m = complete(out)
    assert m["rows_read"] == sum(1 for _ in log.open()) - 1  # every row of the file, header aside
    c = subprocess.run(prepare_cmd(log, out), env=env(), capture_output=True, text=True, timeout=600)
    assert c.returncode == 0 and "re-used" in c.stdout, c.stdout + c.stderr
    assert not lock_path(out).exists()


def test_two_prepares_started_together(tmp_path, log):
    """Started at the same moment: one writes the dataset, the other is refused in one line (or, should the first
    already be done, re-uses it); never a traceback, never an empty dataset."""
    out = tmp_path / "d"
    procs = [subprocess.Popen(prepare_cmd(log, out), env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = [(p.pid, *p.communicate(timeout=600), p.returncode) for p in procs]
    assert 0 in [r[3] for r in results], results
    for pid, _stdout, stderr, rc in results:
        assert "Traceback" not in stderr, stderr
        if rc != 0:
            assert rc == 2 and stderr.startswith(f"seqrec prepare: error: {out} is being written by seqrec prepare "
                                                 f"(pid {[r[0] for r in results if r[0] != pid][0]} "), stderr
    complete(out)


def test_a_prepare_killed_mid_write_is_redone_not_reused(tmp_path, log):
    """kill -9 in pass 3 (after its first of eight buckets): the folder has no manifest and a stale lock; the
    same command again takes the lock over and writes the same dataset as an uninterrupted run."""
    cfg = tmp_path / "small_buckets.toml"
    cfg.write_text("[prepare]\nbucket_rows = 8000\n")
    out, clean = tmp_path / "d", tmp_path / "clean"
    a = subprocess.Popen(prepare_cmd(log, out, "--config", str(cfg)), env=env(SEQREC_PROGRESS_SECONDS="0"),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for line in a.stderr:
        if "pass 3:" in line:
            assert "bucket 1/" in line, line
            a.kill()
            break
    a.wait()
    assert a.returncode == -signal.SIGKILL
    assert load_manifest(out) is None and lock_path(out).exists()
    again = subprocess.run(prepare_cmd(log, out, "--config", str(cfg)), env=env(), capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0 and "re-used" not in again.stdout, again.stdout + again.stderr
    assert main(["prepare", "--input", str(log), "--out", str(clean), "--config", str(cfg)]) == 0
    m, c = complete(out), complete(clean)
    for key in ("rows_kept", "sessions", "items", "splits", "cache_key"):
        assert m[key] == c[key], key
    for split in m["splits"]:
        for name in TRANSITION_FILES:
            assert np.array_equal(np.load(out / "transitions" / split / f"{name}.npy"),
                                  np.load(clean / "transitions" / split / f"{name}.npy")), (split, name)


@pytest.mark.parametrize("damage", ["truncate_state", "truncate_events"])
def test_a_folder_whose_files_do_not_match_its_manifest_is_not_reused(tmp_path, log, capsys, damage):
    out = tmp_path / "d"
    assert main(["prepare", "--input", str(log), "--out", str(out)]) == 0
    capsys.readouterr()
    path = out / ("transitions/train/state.npy" if damage == "truncate_state" else "events.parquet")
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.truncate(size // 2)
    assert main(["prepare", "--input", str(log), "--out", str(out)]) == 0
    assert "re-used" not in capsys.readouterr().out
    assert path.stat().st_size == size
    complete(out)
    assert main(["prepare", "--input", str(log), "--out", str(out)]) == 0  # whole again: re-used
    assert "re-used" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ progress lines
def test_progress_lines_every_interval_of_the_clock():
    now = [0.0]
    built = []

    class Stream:
        text = ""

        def write(self, s: str) -> None:
            Stream.text += s

        def flush(self) -> None:
            pass

    lines = ProgressLines("seqrec x", True, every_s=5.0, stream=Stream(), clock=lambda: now[0])
    for t in (1.0, 4.9, 5.0, 6.0, 9.9, 10.1, 10.2):
        now[0] = t
        lines.tick(lambda t=t: built.append(t) or f"at {t}")
    assert Stream.text == "seqrec x: at 5.0 (5 s)\nseqrec x: at 10.1 (10 s)\n"
    assert built == [5.0, 10.1]  # the message is built only when a line is due
    quiet = ProgressLines("seqrec x", False, every_s=0.0, stream=Stream())
    quiet.tick(lambda: "never")
    assert "never" not in Stream.text


def test_progress_interval_from_the_environment(monkeypatch):
    monkeypatch.delenv("SEQREC_PROGRESS_SECONDS", raising=False)
    assert every_seconds() == 5.0
    monkeypatch.setenv("SEQREC_PROGRESS_SECONDS", "0.5")
    assert every_seconds() == 0.5
    monkeypatch.setenv("SEQREC_PROGRESS_SECONDS", "soon")
    with pytest.raises(ValueError, match="SEQREC_PROGRESS_SECONDS must be a number of seconds >= 0, got 'soon'"):
        every_seconds()


def test_prepare_prints_progress_lines_on_stderr_when_it_is_no_terminal(tmp_path, log, capsys, monkeypatch):
    monkeypatch.setenv("SEQREC_PROGRESS_SECONDS", "0")
    cfg = tmp_path / "small_buckets.toml"
    cfg.write_text("[prepare]\nbucket_rows = 20000\n")
    assert main(["prepare", "--input", str(log), "--out", str(tmp_path / "d"), "--config", str(cfg)]) == 0
    out, err = capsys.readouterr()
    m = load_manifest(tmp_path / "d")
    lines = err.splitlines()
    assert all(line.startswith("seqrec prepare: pass ") and line.endswith(" s)") for line in lines), err
    assert f"seqrec prepare: pass 1: {m['rows_read']:,} rows read (" in err
    buckets = len([ln for ln in lines if ln.startswith("seqrec prepare: pass 2: ")])
    assert buckets > 1 and f"pass 2: {m['sessions']['after_filter']:,} sessions cut, bucket {buckets}/{buckets} (" \
        in err
    written = sum(s["events"] for s in m["splits"].values())  # every event of the kept sessions (random split)
    assert f"pass 3: {written:,} events written, bucket {buckets}/{buckets} (" in err
    assert "pass" not in out  # stdout stays the summary
    assert main(["prepare", "--input", str(log), "--out", str(tmp_path / "e"), "--no-progress"]) == 0
    assert "pass" not in capsys.readouterr().err
    monkeypatch.setenv("SEQREC_PROGRESS_SECONDS", "3600")
    assert main(["prepare", "--input", str(log), "--out", str(tmp_path / "f")]) == 0
    assert capsys.readouterr().err == ""


def test_score_prints_progress_lines_on_stderr_when_it_is_no_terminal(tmp_path, score_world, capsys, monkeypatch):
    monkeypatch.setenv("SEQREC_PROGRESS_SECONDS", "0")
    out = tmp_path / "scored"
    assert main(["score", "--run", str(score_world["plain"]), "--input", str(score_world["log"]), "--out", str(out),
                 "--batch-size", "16"]) == 0
    stdout, err = capsys.readouterr()
    m = json.loads((out / "manifest.json").read_text())
    lines = err.splitlines()
    assert lines and all(line.startswith("seqrec score: pass ") for line in lines), err
    assert f"seqrec score: pass 1: {m['rows_read']:,} rows read (" in err
    scored = [ln for ln in lines if ln.startswith("seqrec score: pass 2: ")]
    assert len(scored) > 1 and f"pass 2: {m['sessions']['scored']:,} sessions scored, bucket " in scored[-1]
    assert "pass" not in stdout
