"""The ``Broker`` contract: how nodes of one cluster exchange live events.

A broker is an existing distributed engine (Redis, NATS), never agentcast's own. It carries
three kinds of messages between nodes:

* **events**: every publication a node accepts (ephemeral, or durable after its commit) is
  handed to :meth:`Broker.publish` under its topic; the broker delivers it to every *other*
  node that declared interest in a pattern matching the topic (:meth:`Broker.add_interest`),
  and only to those (interest-based routing). Order: events published by one node are
  delivered to each receiving node in the order that node published them (FIFO per
  publishing node); there is no order across publishing nodes, which is why receivers
  order durable events by their store-assigned ``seq`` (see ``hub/cluster.py``).
  Delivery is at-most-once: a broker outage loses live events in flight, never stored ones.
  A node may receive an event twice when its interests overlap; receivers dedupe.
* **direct messages** to one node (:meth:`Broker.send_to`), e.g. an inbox delivery found
  through the routing table.
* **heartbeats**: :meth:`Broker.heartbeat` broadcasts a node's liveness and load to all
  nodes; membership is derived from them by each node.

Every call is non-blocking for the caller (``publish`` and friends queue the message for a
writer task), so fan-out never waits on the broker. ``healthy`` is False while the broker
connection is down; the node reports not-ready meanwhile and the broker client reconnects
by itself.
"""

from __future__ import annotations

from typing import Protocol


class BrokerHandler(Protocol):
    """What a broker calls back into (the node's cluster link); calls run on the loop."""

    def on_event(self, origin: str, topic: str, envelope: bytes) -> None:
        """A live event another node published."""

    def on_direct(self, origin: str, data: bytes) -> None:
        """A message addressed to this node."""

    def on_heartbeat(self, origin: str, data: bytes) -> None:
        """Another node's heartbeat."""

    def on_health(self, healthy: bool) -> None:
        """The broker connection went down (False) or came back (True)."""


class Broker(Protocol):
    """A link to the cluster's messaging engine. Implementations: memory, Redis, NATS."""

    @property
    def healthy(self) -> bool:
        """Whether the broker is reachable right now."""

    async def start(self, node_id: str, handler: BrokerHandler) -> None:
        """Connect and start delivering to ``handler``; returns once connected."""

    async def close(self) -> None:
        """Flush what is queued (bounded), then disconnect."""

    def publish(self, topic: str, envelope: bytes) -> None:
        """Send an event to the other nodes interested in ``topic``."""

    def add_interest(self, pattern: str) -> None:
        """Start receiving events whose topic matches ``pattern`` (idempotent)."""

    def remove_interest(self, pattern: str) -> None:
        """Stop receiving events for ``pattern`` (no-op if not interested)."""

    def send_to(self, node_id: str, data: bytes) -> None:
        """Send ``data`` to one node (dropped if that node is gone)."""

    def heartbeat(self, data: bytes) -> None:
        """Broadcast this node's heartbeat to every node."""


def encode_frame(origin: str, body: bytes) -> bytes:
    """``origin`` and ``body`` in one broker message (origin ids never contain a newline)."""
    return origin.encode() + b"\n" + body


def decode_frame(message: bytes) -> tuple[str, bytes]:
    """The inverse of :func:`encode_frame`; raises ``ValueError`` on a malformed message."""
    origin, separator, body = message.partition(b"\n")
    if not separator:
        raise ValueError("broker message without an origin")
    return origin.decode(), body
