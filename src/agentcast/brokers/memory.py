"""An in-process broker: several nodes in one process share a :class:`LocalBus`.

For tests and embedding. It keeps the broker contract exactly (interest-based routing,
FIFO per publishing node, delivery on a later loop iteration, never to the sender).
"""

from __future__ import annotations

import asyncio

from agentcast.brokers.base import BrokerHandler
from agentcast.protocol.topics import matches


class LocalBus:
    """The shared medium of :class:`MemoryBroker` instances."""

    def __init__(self) -> None:
        self.members: dict[str, MemoryBroker] = {}


class MemoryBroker:
    """A :class:`~agentcast.brokers.base.Broker` over a :class:`LocalBus`."""

    def __init__(self, bus: LocalBus) -> None:
        self.bus = bus
        self.node_id = ""
        self.interests: set[str] = set()
        self._handler: BrokerHandler | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.up = True

    @property
    def healthy(self) -> bool:
        return self.up

    async def start(self, node_id: str, handler: BrokerHandler) -> None:
        self.node_id = node_id
        self._handler = handler
        self._loop = asyncio.get_running_loop()
        self.bus.members[node_id] = self

    async def close(self) -> None:
        self.bus.members.pop(self.node_id, None)

    def publish(self, topic: str, envelope: bytes) -> None:
        for peer in self._peers():
            if any(matches(pattern, topic) for pattern in peer.interests):
                peer._deliver("on_event", self.node_id, topic, envelope)

    def add_interest(self, pattern: str) -> None:
        self.interests.add(pattern)

    def remove_interest(self, pattern: str) -> None:
        self.interests.discard(pattern)

    def send_to(self, node_id: str, data: bytes) -> None:
        peer = self.bus.members.get(node_id)
        if peer is not None and peer is not self and self.up and peer.up:
            peer._deliver("on_direct", self.node_id, data)

    def heartbeat(self, data: bytes) -> None:
        for peer in self._peers():
            peer._deliver("on_heartbeat", self.node_id, data)

    def _peers(self) -> list[MemoryBroker]:
        if not self.up:
            return []
        return [p for p in self.bus.members.values() if p is not self and p.up]

    def _deliver(self, method: str, *args: object) -> None:
        assert self._loop is not None and self._handler is not None
        self._loop.call_soon(getattr(self._handler, method), *args)
