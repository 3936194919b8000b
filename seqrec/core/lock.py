"""One writer per output: the lock every command takes on the folder (or file) it writes (torch-free).

The lock is the hidden sibling `.NAME.lock` of the output (beside it, so the output folder itself holds only
its own files and may even be a file), locked with `flock(2)` and holding one JSON line naming its holder (pid,
host, command, command line, since when). A second writer fails at once with `OutputLocked`, whose message names
that holder. flock rather than an O_CREAT|O_EXCL file: the kernel drops the lock when its process dies, however it
dies (kill -9 included), so a stale lock file is simply locked again by the next writer; two writers taking over
the same stale file at once both call flock on it and exactly one gets it, with no pid check, no pid-reuse
mistake and no window between reading a stale holder and replacing it. The holder removes the file on release;
a writer that locked a file just removed that way notices (the path no longer names its open file) and retries.
Re-entrant within one thread (a command and the library function it calls may both take it).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shlex
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)  # file systems without flock: see _without_flock
_held: dict[Path, int] = {}  # lock file -> the thread holding it (this process)
_held_guard = threading.Lock()


class OutputLocked(RuntimeError):
    """Another process (or thread) is writing this output; the message names it."""


def lock_path(out: str | Path) -> Path:
    """The lock file of output `out`: `.NAME.lock` beside it (absolute, so every spelling of `out` agrees)."""
    p = Path(out).resolve()
    return p.with_name(f".{p.name}.lock") if p.name else p / ".seqrec.lock"


@contextmanager
def output_lock(out: str | Path, command: str) -> Iterator[Path]:
    """Hold the lock of output `out` for the `with` block (`command`, e.g. "seqrec prepare", names this writer
    to a second one); released on leaving it, by an error too. Raises OutputLocked while another holds it."""
    path = lock_path(out)
    me = threading.get_ident()
    with _held_guard:
        nested = _held.get(path) == me
    if nested:  # the caller's own lock: it is released when the outer block ends
        yield path
        return
    fd = _acquire(path, command, out)
    with _held_guard:
        _held[path] = me
    try:
        yield path
    finally:
        with _held_guard:
            _held.pop(path, None)
        _release(path, fd)


def holder_line(record: dict | None, path: Path) -> str:
    """Who holds a lock, in words, from its JSON record (None: not written yet or unreadable)."""
    if not record:
        return f"another process (its lock file {path} names no holder yet)"
    since = record.get("since", "?")
    try:
        ago = f", {_duration(time.time() - datetime.fromisoformat(since).timestamp())} ago"
    except (TypeError, ValueError):
        ago = ""
    who, argv = record.get("command", "?"), record.get("argv")
    line = f"{who} (pid {record.get('pid', '?')} on {record.get('host', '?')}, since {since}{ago}"
    return line + (f"; command line: {argv}" if argv else "") + f"; lock file {path})"


def _acquire(path: Path, command: str, out: str | Path) -> int:
    """Open, lock and fill in `path`; the open descriptor (kept until release). OutputLocked when held; a
    file-system error names the output `out` (as given), not the lock file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # a file stands where a folder of the output's path should be
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(out)) from None
    for _ in range(50):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:  # e.g. no permission to write there
            raise OSError(e.errno, e.strerror, str(out)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            record = _read_record(fd, wait=True)
            os.close(fd)
            raise _locked(path, record) from None
        except OSError as e:
            if e.errno not in NO_FLOCK:
                os.close(fd)
                raise
            _without_flock(fd, path)
        if _names(path, fd):  # else its holder removed it on release before we locked it: lock the new one
            _write_record(fd, command)
            return fd
        os.close(fd)
    raise OutputLocked(f"{_output_of(path)}: could not lock {path} (it keeps being replaced)")


def _without_flock(fd: int, path: Path) -> None:
    """A file system without flock (some network mounts): refuse only a live holder on this host (best effort,
    not atomic: two writers starting in the same instant may both pass)."""
    record = _read_record(fd, wait=False)
    if record and record.get("host") == socket.gethostname() and record.get("pid") != os.getpid() \
            and not _dead_here(record):
        os.close(fd)
        raise _locked(path, record)


def _release(path: Path, fd: int) -> None:
    """Remove the lock file, then unlock (closing drops the flock): removing it first means nobody can lock
    this file after us and believe it is still the lock."""
    try:
        os.unlink(path)
    except OSError:
        pass  # already gone (the folder removed under us): nothing to release but the descriptor
    os.close(fd)


def _names(path: Path, fd: int) -> bool:
    """Whether `path` still names the file open on `fd`."""
    try:
        st, now = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino)


def _write_record(fd: int, command: str) -> None:
    """Replace the file's content (a stale holder's, or nothing) with this process's record."""
    record = {"pid": os.getpid(), "host": socket.gethostname(), "command": command, "argv": _command_line(),
              "since": datetime.now().astimezone().isoformat(timespec="seconds")}
    data = (json.dumps(record) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def _read_record(fd: int, wait: bool) -> dict | None:
    """The holder's record; with `wait`, up to ~0.5 s for a holder that has just locked the file but not yet
    replaced the record in it (nothing, or a dead process's of this host)."""
    record = None
    for _ in range(50 if wait else 1):
        try:
            record = json.loads(os.pread(fd, 1 << 16, 0).decode())
        except (OSError, ValueError):
            record = None
        if isinstance(record, dict) and not _dead_here(record):
            return record
        if wait:
            time.sleep(0.01)
    return record if isinstance(record, dict) else None


def _dead_here(record: dict) -> bool:
    """Whether a record names a process of this host that no longer runs."""
    try:
        return record.get("host") == socket.gethostname() and not _alive(int(record.get("pid", 0)))
    except (TypeError, ValueError):
        return False


def _command_line() -> str:
    """This process's command line, as typed (`seqrec ...` for the seqrec command), cut to 300 characters."""
    argv = list(sys.argv) or ["?"]
    if Path(argv[0]).name in ("seqrec", "__main__.py"):
        argv[0] = "seqrec"
    line = shlex.join(argv)
    return line if len(line) <= 300 else line[:297] + "..."


def _locked(path: Path, record: dict | None) -> OutputLocked:
    """The error a second writer gets: the output, its holder, what to do."""
    return OutputLocked(f"{_output_of(path)} is being written by {holder_line(record, path)}; wait for it to end "
                        "or write elsewhere")


def _output_of(path: Path) -> Path:
    """The output a lock file guards."""
    return path.parent if path.name == ".seqrec.lock" else path.with_name(path.name[1:-len(".lock")])


def _alive(pid: int) -> bool:
    """Whether process `pid` exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _duration(seconds: float) -> str:
    """12 s, 3 min, 2.5 h."""
    s = max(0.0, seconds)
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"
