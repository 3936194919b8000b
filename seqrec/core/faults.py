"""A test hook: kill this process with SIGKILL at a named point, to test that a command killed there resumes.

With SEQREC_KILL_AT="POINT:N" in the environment (N >= 1, default 1), the N-th time this process reaches
`kill_point("POINT")` it sends itself SIGKILL: no `finally`, no atexit, no flush, as with `kill -9`. Unset (always,
outside tests), `kill_point` is one environment lookup. The points (tests/test_faults.py kills at each):

- `scatter.write`: pass 1 of prepare and score, after each piece of a batch is appended to a user-hash bucket
  file (the bucket files are open, half written);
- `prepare.sessions`: prepare's pass 2, after each bucket is sorted and cut into sessions;
- `prepare.emit`: prepare's pass 3, after each bucket's rows are appended to events.parquet (half written);
- `score.part`: score's pass 2 (local engine), after each batch of rows is appended to a part file (half written);
- `score.batched`: the Ray engine's step 2, after each bucket's batch file and note.
"""

from __future__ import annotations

import os
import signal
import threading

ENV = "SEQREC_KILL_AT"
_seen: dict[str, int] = {}
_lock = threading.Lock()


def kill_point(name: str) -> None:
    """SIGKILL this process if SEQREC_KILL_AT names `name` and this is its N-th visit; else nothing."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    point, _, count = spec.partition(":")
    if point != name:
        return
    with _lock:  # points may be reached from worker threads
        _seen[name] = _seen.get(name, 0) + 1
        hit = _seen[name] == int(count or 1)
    if hit:
        os.kill(os.getpid(), signal.SIGKILL)
