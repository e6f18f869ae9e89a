"""What the SDK hands back for a command the node accepted."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True, frozen=True)
class PublishAck:
    """The node accepted and sequenced a publication.

    An ack means the node assigned the event its stream position ``(epoch, seq)`` and handed
    it to the subscribers connected at that moment. It does not mean any subscriber has
    received it: on ephemeral topics (the default) delivery is at-most-once and nothing is
    kept for later. ``duplicate`` is true when the idempotency key had already been accepted
    within the node's dedupe window; the position is then the original one and the event was
    not delivered again.
    """

    id: str
    topic: str
    seq: int
    epoch: str
    lamport: int
    duplicate: bool = False

    @classmethod
    def from_result(cls, result: Mapping[str, Any]) -> PublishAck:
        """Build an ack from a ``publish`` reply's ``result`` object."""
        return cls(
            id=str(result["id"]),
            topic=str(result["topic"]),
            seq=int(result["seq"]),
            epoch=str(result["epoch"]),
            lamport=int(result["lamport"]),
            duplicate=bool(result.get("duplicate", False)),
        )
