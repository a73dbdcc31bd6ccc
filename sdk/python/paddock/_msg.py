"""Filling dataclasses from protobuf messages field by field (same names)."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, TypeVar

T = TypeVar("T")

_hints: dict[type, dict[str, Any]] = {}


def from_msg(cls: type[T], msg: Any, **overrides: Any) -> T:
    """``cls(**{f: msg.f})`` for every dataclass field of ``cls`` that ``msg`` has; nested dataclass
    fields are filled recursively, repeated/map fields become lists/dicts; ``overrides`` win."""
    hints = _hints.get(cls)
    if hints is None:
        hints = typing.get_type_hints(cls)
        _hints[cls] = hints
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in overrides:
            kwargs[f.name] = overrides[f.name]
            continue
        if not hasattr(msg, f.name):
            continue
        v = getattr(msg, f.name)
        t = hints.get(f.name)
        if dataclasses.is_dataclass(t):
            kwargs[f.name] = from_msg(t, v)  # type: ignore[arg-type]
        elif hasattr(v, "items"):
            kwargs[f.name] = dict(v.items())
        elif hasattr(v, "__len__") and not isinstance(v, (str, bytes)):
            kwargs[f.name] = list(v)
        else:
            kwargs[f.name] = v
    return cls(**kwargs)
