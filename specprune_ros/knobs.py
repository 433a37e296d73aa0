"""The knob machinery every configuration section is built from: a field's spec (meaning,
type, range or choices, live or read-only), its checks, and the one error type.

Light on purpose (no torch, no ROS): the pruning engine's own sections (``pruning/config.py``)
and the application's (``config.py``) both build on it.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type or outside its allowed range."""


@dataclass(frozen=True)
class Spec:
    """What a knob means and which values it accepts."""

    description: str
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] | None = None
    read_only: bool = False
    # For list-valued knobs: allowed range of every element and of the length.
    min_len: int = 0
    max_len: int = 64

    def allowed(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        lo = "-inf" if self.low is None else f"{self.low:g}"
        hi = "inf" if self.high is None else f"{self.high:g}"
        return f"range [{lo}, {hi}]"


def knob(default: Any, description: str, **spec: Any) -> Any:
    """A dataclass field with its Spec in the metadata."""
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: tuple(default), metadata={"spec": Spec(description, **spec)})
    return field(default=default, metadata={"spec": Spec(description, **spec)})


def coerce(name: str, value: Any, spec: Spec, section_cls: type) -> Any:
    """Check ``value`` against the field's type and Spec; return it in the field's type."""
    ftype = {f.name: f.type for f in dataclasses.fields(section_cls)}[name.rpartition(".")[2]]
    ftype = str(ftype)
    try:
        if ftype == "bool":
            if not isinstance(value, bool):
                raise TypeError("expected true or false")
            out: Any = value
        elif ftype == "int":
            out = _as_int(value)
        elif ftype == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError("expected a number")
            out = float(value)
            if not math.isfinite(out):
                raise TypeError("expected a finite number")
        elif ftype == "str":
            if not isinstance(value, str):
                raise TypeError("expected a string")
            out = value
        elif ftype.startswith("tuple[str"):
            if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__") \
                    or not all(isinstance(v, str) and v for v in value):
                raise TypeError("expected a list of non-empty strings")
            out = tuple(value)
            if len(set(out)) != len(out) or len(out) > spec.max_len:
                raise ConfigError(f"{name} = {list(out)}: needs up to {spec.max_len} distinct names")
            return out
        elif ftype.startswith("tuple[float"):
            if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__") or any(
                    isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in value):
                raise TypeError("expected a list of finite numbers")
            out = tuple(float(v) for v in value)
            if not spec.min_len <= len(out) <= spec.max_len:
                raise ConfigError(f"{name} = {list(out)}: needs {spec.min_len} to {spec.max_len} entries")
            for v in out:
                _check_range(name, v, spec)
            return out
        elif ftype.startswith("tuple"):
            if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
                raise TypeError("expected a list of integers")
            out = tuple(sorted(set(_as_int(v) for v in value)))
            if not spec.min_len <= len(out) <= spec.max_len:
                raise ConfigError(f"{name} = {list(out)}: needs {spec.min_len} to {spec.max_len} distinct entries")
            for v in out:
                _check_range(name, v, spec)
            return out
        else:  # pragma: no cover - a new field type must be taught here
            raise TypeError(f"unsupported field type {ftype}")
    except TypeError as exc:
        bounded = spec.choices is not None or spec.low is not None or spec.high is not None
        raise ConfigError(f"{name} = {value!r}: {exc}" + (f" ({spec.allowed()})" if bounded else "")) from None
    _check_range(name, out, spec)
    return out


def _as_int(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError("expected an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise TypeError("expected an integer")


def _check_range(name: str, value: Any, spec: Spec) -> None:
    if spec.choices is not None and value not in spec.choices:
        raise ConfigError(f"{name} = {value!r} is not allowed ({spec.allowed()})")
    if (spec.low is not None and value < spec.low) or (spec.high is not None and value > spec.high):
        raise ConfigError(f"{name} = {value!r} is out of {spec.allowed()}")


def validate_section(obj: Any, section: str) -> None:
    """Validate a section built directly (not through Config.replace)."""
    for f in dataclasses.fields(obj):
        name = f"{section}.{f.name}" if section else f.name
        value = getattr(obj, f.name)
        checked = coerce(name, value, f.metadata["spec"], type(obj))
        if checked != value or type(checked) is not type(value):
            object.__setattr__(obj, f.name, checked)
