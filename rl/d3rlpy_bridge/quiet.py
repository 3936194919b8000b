"""`import d3rlpy` without the notice gym prints to stderr on import (everything else it writes is passed on)."""

from __future__ import annotations

import contextlib
import importlib
import io
import sys
from types import ModuleType


def drop_gym_notice(text: str) -> str:
    """`text` without the notice gym prints on import (looked up in gym_notices for the installed gym)."""
    notices = getattr(sys.modules.get("gym_notices.notices"), "notices", {})
    notice = notices.get(getattr(sys.modules.get("gym"), "__version__", None))
    return text.replace(notice + "\n", "", 1) if notice else text


def import_quietly(name: str) -> ModuleType:
    """Import module `name` with gym's notice removed from its stderr output; everything else it writes to
    stderr (warnings included) is written on afterwards."""
    if name in sys.modules:
        return sys.modules[name]
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            return importlib.import_module(name)
    finally:
        sys.stderr.write(drop_gym_notice(captured.getvalue()))


d3rlpy = import_quietly("d3rlpy")
