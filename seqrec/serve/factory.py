"""The engine a `seqrec score --engine` name stands for; Ray is imported only when asked for."""

from __future__ import annotations

from seqrec.core.config import ConfigError
from seqrec.serve.engines import ENGINES, Engine
from seqrec.serve.local import LocalEngine


def make_engine(name: str, ray_address: str | None = None) -> Engine:
    """The engine called `name` (one of ENGINES). The Ray engine's module, and Ray, are imported only here, so
    the local engine never imports ray; `ray_address` (a Ray cluster to join) only goes with "ray"."""
    if name == "local":
        if ray_address:
            raise ConfigError("--ray-address needs --engine ray")
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
