"""Progress lines for logs (torch-free): when stderr is not a terminal (CI, `> log 2>&1`) a progress bar is
hidden, so long commands print a plain line on stderr every few seconds instead, as `seqrec train` does.

`SEQREC_PROGRESS_SECONDS` sets the interval (default 5; 0 prints at every step a command reports, a batch or a
bucket, never a row). stdout is never written.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

EVERY_ENV = "SEQREC_PROGRESS_SECONDS"
DEFAULT_EVERY_S = 5.0


def every_seconds() -> float:
    """The interval between lines: $SEQREC_PROGRESS_SECONDS, else 5 s."""
    raw = os.environ.get(EVERY_ENV, "").strip()
    if not raw:
        return DEFAULT_EVERY_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also NaN
        raise ValueError(f"{EVERY_ENV} must be a number of seconds >= 0, got {raw!r}")
    return value


class ProgressLines:
    """Prints `label: message (N s)` on `stream` (default stderr) when `every_s` seconds of `clock` have passed
    since the last line and the message changed (N: seconds since this object was made); silent unless `enabled`."""

    def __init__(self, label: str, enabled: bool, every_s: float | None = None, stream: Any = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label, self.enabled, self.clock = label, enabled, clock
        self.every_s = every_seconds() if every_s is None and enabled else (every_s or 0.0)
        self.stream = stream if stream is not None else sys.stderr
        self.start = self.last = clock()
        self.said = ""

    @classmethod
    def for_progress(cls, label: str, progress: bool | None) -> ProgressLines:
        """Lines when a command's --progress is left at its default (None) and stderr is not a terminal; with
        --progress (a bar) or --no-progress none."""
        isatty = getattr(sys.stderr, "isatty", None)
        return cls(label, progress is None and not (isatty is not None and isatty()))

    def tick(self, message: Callable[[], str]) -> None:
        """Print `message()` if a line is due (the message is built only then)."""
        if not self.enabled:
            return
        now = self.clock()
        if now - self.last < self.every_s:
            return
        text = message()
        if text == self.said:  # nothing moved since the last line
            return
        print(f"{self.label}: {text} ({now - self.start:.0f} s)", file=self.stream, flush=True)
        self.last, self.said = now, text


class TickingBar:
    """A tqdm bar that also calls `tick()` after each `update`: passes that count with a bar print lines too."""

    def __init__(self, bar: Any, tick: Callable[[], None]) -> None:
        self.bar, self.tick = bar, tick
        self.count = 0  # the updates' sum (a disabled tqdm counts nothing)

    def update(self, n: float = 1) -> None:
        """Advance the bar by `n`, then give the progress lines their chance."""
        self.bar.update(n)
        self.count += n
        self.tick()

    def __getattr__(self, name: str) -> Any:  # close, set_postfix, ...: the bar's own
        return getattr(self.bar, name)
