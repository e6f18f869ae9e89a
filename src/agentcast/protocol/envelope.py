"""The event envelope and its CloudEvents 1.0 mapping."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import uuid_utils

JSON = Any


def new_event_id() -> str:
    """A new UUIDv7 (time-ordered) as a string."""
    return str(uuid_utils.uuid7())


class _SecondPrefix:
    """Caches the formatted date and time of the current second (one per publish is hot)."""

    __slots__ = ("prefix", "second")

    def __init__(self) -> None:
        self.second = -1
        self.prefix = ""

    def format(self, micros: int) -> str:
        second, fraction = divmod(micros, 1_000_000)
        if second != self.second:
            self.prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self.second = second
        return f"{self.prefix}.{fraction:06d}Z"


_now_prefix = _SecondPrefix()


def rfc3339_now() -> str:
    """The current UTC time in RFC 3339 with microseconds and a ``Z`` suffix."""
    return _now_prefix.format(time.time_ns() // 1000)


def rfc3339_at(timestamp: float) -> str:
    """A POSIX timestamp in the same format as :func:`rfc3339_now` (sortable as text)."""
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(slots=True, frozen=True)
class Envelope:
    """One event as delivered to subscribers; see docs/protocol.md for every field."""

    id: str
    topic: str
    seq: int
    epoch: str
    time: str
    source: str
    payload: JSON = None
    headers: dict[str, str] = field(default_factory=dict)
    correlation_id: str | None = None
    causation_id: str | None = None
    lamport: int = 0

    def to_dict(self) -> dict[str, JSON]:
        """The envelope as the JSON object of the wire protocol."""
        return {
            "id": self.id,
            "topic": self.topic,
            "seq": self.seq,
            "epoch": self.epoch,
            "time": self.time,
            "source": self.source,
            "correlation_id": self.correlation_id,
            "causation_id": self.causation_id,
            "lamport": self.lamport,
            "headers": self.headers,
            "payload": self.payload,
        }

    @classmethod
    def from_dict(cls, data: dict[str, JSON]) -> Envelope:
        """Build an envelope from its wire object (missing optional fields get defaults)."""
        return cls(
            id=data["id"],
            topic=data["topic"],
            seq=int(data["seq"]),
            epoch=data["epoch"],
            time=data["time"],
            source=data["source"],
            payload=data.get("payload"),
            headers=dict(data.get("headers") or {}),
            correlation_id=data.get("correlation_id"),
            causation_id=data.get("causation_id"),
            lamport=int(data.get("lamport") or 0),
        )


def encode_envelope(
    event_id: str,
    topic: str,
    seq: int,
    epoch: str,
    time: str,
    source: str,
    correlation_id: str | None,
    causation_id: str | None,
    lamport: int,
    headers: dict[str, str],
    payload_json: bytes,
) -> bytes:
    """The wire JSON of an envelope (field order as documented) around an already-encoded
    payload, which is spliced in without being parsed again."""
    return orjson.dumps(
        {
            "id": event_id,
            "topic": topic,
            "seq": seq,
            "epoch": epoch,
            "time": time,
            "source": source,
            "correlation_id": correlation_id,
            "causation_id": causation_id,
            "lamport": lamport,
            "headers": headers,
            "payload": orjson.Fragment(payload_json),
        }
    )


def to_cloudevent(envelope: Envelope) -> dict[str, JSON]:
    """Map an envelope onto a CloudEvents 1.0 JSON-format event.

    Extensions: ``sequence`` (string), ``epoch``, ``correlationid``, ``causationid``,
    ``lamport``, and every header under its lowercased name with non-alphanumerics removed
    (so ``traceparent`` lands on the distributed-tracing extension).
    """
    event: dict[str, JSON] = {
        "specversion": "1.0",
        "id": envelope.id,
        "source": envelope.source,
        "type": "agentcast.event",
        "subject": envelope.topic,
        "time": envelope.time,
        "datacontenttype": "application/json",
        "data": envelope.payload,
        "sequence": str(envelope.seq),
        "epoch": envelope.epoch,
        "lamport": envelope.lamport,
    }
    if envelope.correlation_id is not None:
        event["correlationid"] = envelope.correlation_id
    if envelope.causation_id is not None:
        event["causationid"] = envelope.causation_id
    for name, value in envelope.headers.items():
        key = "".join(ch for ch in name.lower() if ch.isalnum())
        if key and key not in event:
            event[key] = value
    return event
