"""Correlation: which workflow instance an event belongs to.

A correlator maps an event to its instance key, or to ``None`` when the event carries no
key (the workflow then ignores it). Correlators must be pure functions of the event: the
same event always selects the same instance, which replay relies on.
"""

from __future__ import annotations

from collections.abc import Callable

from agentcast.protocol.envelope import Envelope

Correlator = Callable[[Envelope], str | None]

MAX_KEY_LENGTH = 200


def _key(value: object) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        value = str(value)
    if not isinstance(value, str) or not value or len(value) > MAX_KEY_LENGTH:
        return None
    return value


def by_correlation_id() -> Correlator:
    """The envelope's ``correlation_id`` (the default)."""

    def correlate(event: Envelope) -> str | None:
        return _key(event.correlation_id)

    return correlate


def by_header(name: str) -> Correlator:
    """The value of the header ``name``."""

    def correlate(event: Envelope) -> str | None:
        return _key(event.headers.get(name))

    return correlate


def by_payload(path: str) -> Correlator:
    """The payload value at the dotted ``path`` (``"run.id"`` reads ``payload["run"]["id"]``);
    strings and integers are keys, anything else is no key."""
    parts = path.split(".")
    if not all(parts):
        raise ValueError(f"bad payload path: {path!r}")

    def correlate(event: Envelope) -> str | None:
        value: object = event.payload
        for part in parts:
            if not isinstance(value, dict):
                return None
            value = value.get(part)
        return _key(value)

    return correlate


def by_topic_segment(index: int) -> Correlator:
    """The topic's segment at ``index`` (``1`` of ``acme.run-42.done`` is ``run-42``;
    negative indexes count from the end)."""

    def correlate(event: Envelope) -> str | None:
        segments = event.topic.split(".")
        try:
            return _key(segments[index])
        except IndexError:
            return None

    return correlate
