"""The engines `seqrec score --engine` can name, and the one a name stands for: the one place to add an engine.

Importing this module is cheap (no torch, no Ray), so the CLI takes its choices from ENGINES; each engine's
module is imported only when that engine is asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from seqrec.core.config import ConfigError

if TYPE_CHECKING:
    from seqrec.serve.engines import Engine

ENGINES: tuple[str, ...] = ("local", "ray")


def make_engine(name: str, ray_address: str | None = None) -> Engine:
    """The engine called `name` (one of ENGINES). The Ray engine's module, and Ray, are imported only here, so
    the local engine never imports ray; `ray_address` (a Ray cluster to join) only goes with "ray"."""
    if name == "local":
        if ray_address:
            raise ConfigError("--ray-address needs --engine ray")
        from seqrec.serve.local import LocalEngine

        return LocalEngine()
    if name == "ray":
        try:
            from seqrec.serve.ray_engine import RayConfig, RayEngine
        except ImportError as e:
            if not (e.name or "").startswith("ray"):
                raise
            raise ConfigError(f"--engine ray needs Ray Data ({e}); install the extra: "
                              "pip install -c constraints.txt -e '.[ray]'") from None
        return RayEngine(RayConfig(address=ray_address))
    raise ConfigError(f"unknown engine {name!r}; available: {', '.join(ENGINES)}")
