"""Bounded, JSON-safe summaries of arbitrary Python values (pure functions).

Framework events carry live objects (agents, crews, model clients) next to plain data. A
summary keeps the plain data and bounds it, so an event payload stays small and always
encodes:

* ``None``, ``bool``, 64-bit ``int`` and finite ``float`` pass through; a larger integer
  becomes its decimal string, a non-finite float its ``repr`` (``"nan"``, ``"inf"``).
* A string longer than ``max_text`` characters is cut to ``max_text`` and ends with ``…``.
* ``datetime``/``date``/``time`` become ISO 8601 strings, an ``Enum`` its value, ``bytes``
  a ``"<N bytes>"`` marker, an exception ``"TypeName: message"``.
* A mapping keeps at most ``max_items`` entries (string keys, in iteration order), a list,
  tuple or set at most ``max_items`` elements; what was cut is counted in a final
  ``"…": N`` entry or a ``"… N more"`` element. Below ``max_depth`` levels a container
  becomes a ``"<dict>"``/``"<list>"`` marker.
* An object with a string ``raw`` attribute (a framework's output object) becomes that
  text; any other object becomes ``"<TypeName>"``: objects are never walked, so a summary
  never reaches into a live agent or client.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from enum import Enum
from typing import Any

ELLIPSIS = "…"
# JSON encoders (orjson) take 64-bit integers; larger ones become strings.
_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1


@dataclass(frozen=True, slots=True)
class SummaryLimits:
    """The bounds of one summary (see the module docstring)."""

    max_text: int = 2000
    max_items: int = 32
    max_depth: int = 4

    def __post_init__(self) -> None:
        if self.max_text < 1 or self.max_items < 1 or self.max_depth < 1:
            raise ValueError("summary limits must be positive")


def truncate(text: str, max_text: int) -> str:
    """``text`` cut to at most ``max_text`` characters, marked with a final ``…``."""
    if len(text) <= max_text:
        return text
    return text[: max(max_text - 1, 0)] + ELLIPSIS


def summarize(value: Any, limits: SummaryLimits, depth: int = 0) -> Any:
    """A JSON-safe, bounded copy of ``value`` (see the module docstring)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return (
            int(value) if _INT_MIN <= value <= _INT_MAX else truncate(str(value), limits.max_text)
        )
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, str):
        return truncate(value, limits.max_text)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Enum):
        return summarize(value.value, limits, depth)
    if isinstance(value, BaseException):
        return truncate(f"{type(value).__name__}: {value}", limits.max_text)
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"
    if isinstance(value, Mapping):
        return _summarize_mapping(value, limits, depth)
    if isinstance(value, list | tuple | set | frozenset):
        return _summarize_sequence(value, limits, depth)
    raw = getattr(value, "raw", None)
    if isinstance(raw, str):
        return truncate(raw, limits.max_text)
    return f"<{type(value).__name__}>"


def _summarize_mapping(value: Mapping[Any, Any], limits: SummaryLimits, depth: int) -> Any:
    if depth >= limits.max_depth:
        return "<dict>"
    out: dict[str, Any] = {}
    for index, (key, item) in enumerate(value.items()):
        if index >= limits.max_items:
            out[ELLIPSIS] = len(value) - limits.max_items
            break
        name = truncate(key if isinstance(key, str) else str(key), 128)
        out[name] = summarize(item, limits, depth + 1)
    return out


def _summarize_sequence(value: Collection[Any], limits: SummaryLimits, depth: int) -> Any:
    if depth >= limits.max_depth:
        return "<list>"
    out = [summarize(item, limits, depth + 1) for item in itertools.islice(value, limits.max_items)]
    if len(value) > limits.max_items:
        out.append(f"{ELLIPSIS} {len(value) - limits.max_items} more")
    return out
