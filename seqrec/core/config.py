"""TOML -> frozen dataclasses, with errors that name the unknown key and list the valid ones."""

from __future__ import annotations

import dataclasses
import math
import numbers
import tomllib
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not fit the dataclasses: names the key and the valid keys."""


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file into a dict; a missing or malformed file is one clear ConfigError."""
    p = Path(path)
    try:
        return tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such config file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML ({e})") from None


def from_dict(cls: type[T], data: dict[str, Any], where: str) -> T:
    """Build dataclass `cls` from `data`; lists become tuples and tables become (key, value) pairs."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key {where}.{unknown[0]}; valid keys in [{where}]: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"[{where}]: {e}") from None


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if isinstance(value, dict) and origin is tuple:
        return tuple((str(k), v) for k, v in value.items())
    if isinstance(value, list) and origin is tuple:
        return tuple(tuple(v) if isinstance(v, list) else v for v in value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and not isinstance(value, hint):
        raise ConfigError(f"{where} must be {hint.__name__}, got {value!r}")
    return value


# The validators every config dataclass's __post_init__ uses: one wording for every bad value.
def check_int(name: str, value: object, low: int, high: int | None = None) -> None:
    """Raise a ValueError naming `name` unless `value` is an integer (not a bool) in [low, high]."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= low
    if not ok or (high is not None and value > high):  # type: ignore[operator]
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be an int {bound}, got {value!r}")


def check_real(name: str, value: object, low: float, high: float, open_low: bool = False) -> None:
    """Raise a ValueError naming `name` unless `value` is a finite real number in [low, high] ((low, high] if
    `open_low`)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) \
        and low <= value <= high
    if not ok or (open_low and value == low):
        raise ValueError(f"{name} must be a number in {'(' if open_low else '['}{low:g}, {high:g}], got {value!r}")


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    """Raise a ValueError naming `name` unless `value` is one of `choices`."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
