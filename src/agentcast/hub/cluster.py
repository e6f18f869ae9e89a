"""A node's link to its cluster: interest routing, cross-node delivery in ``seq`` order,
and membership from heartbeats.

* **Interest.** The hub reports every pattern its connections (and consumer-group members)
  hold; the link keeps a reference count per pattern and asks the broker for a pattern's
  traffic only while the count is above zero.
* **Publishing.** Every event this node accepts goes to the broker after local fan-out
  (durable ones after their commit).
* **Receiving.** Ephemeral events from other nodes are fanned out as they come (FIFO per
  publishing node; their ``(epoch, seq)`` is that node's stream of the topic). Durable
  events, whose ``seq`` the shared history store assigned, pass through a per-topic
  :class:`OrderedFeed` together with this node's own commits, so local subscribers get each
  position once and in order: an event ahead of the next expected ``seq`` is held while the
  missing positions are read from the store, an event behind it is a duplicate and dropped.
* **Membership.** Each node broadcasts a heartbeat every ``heartbeat_interval``; a node not
  heard from for ``member_timeout`` is gone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from agentcast.brokers.base import Broker

if TYPE_CHECKING:
    from agentcast.hub.hub import Hub

log = logging.getLogger(__name__)

MAX_FEEDS = 65_536
MAX_SEEN_IDS = 65_536
GAP_READ_LIMIT = 1_000


@dataclass(slots=True)
class Member:
    """Another node as its heartbeats describe it."""

    node_id: str
    last_seen: float
    info: dict[str, Any] = field(default_factory=dict)


class OrderedFeed:
    """Delivers one durable topic's events to the local hub in ``seq`` order, once each."""

    __slots__ = ("expected", "filling", "link", "parked", "topic")

    def __init__(self, link: ClusterLink, topic: str) -> None:
        self.link = link
        self.topic = topic
        self.expected: int | None = None
        self.parked: dict[int, tuple[bytes, dict[str, str]]] = {}
        self.filling = False

    def offer(self, seq: int, envelope: bytes, headers: dict[str, str]) -> None:
        """Take one event (local commit, broker, or gap read)."""
        if self.expected is None:
            self.expected = seq
        if seq < self.expected:
            return
        if seq > self.expected:
            self.parked.setdefault(seq, (envelope, headers))
            if not self.filling:
                self.filling = True
                self.link.hub.spawn(self._fill())
            return
        self._deliver(seq, envelope, headers)
        self._drain()

    def _deliver(self, seq: int, envelope: bytes, headers: dict[str, str]) -> None:
        self.expected = seq + 1
        self.link.hub.deliver_envelope(self.topic, envelope, headers, seq, durable=True)

    def _drain(self) -> None:
        while self.expected in self.parked:
            envelope, headers = self.parked.pop(self.expected)
            self._deliver(self.expected, envelope, headers)

    async def _fill(self) -> None:
        """Read the positions between the next expected one and the oldest parked one."""
        history = self.link.hub.history
        try:
            while self.parked and self.expected is not None:
                first_parked = min(self.parked)
                if first_parked <= self.expected:
                    self._drain()
                    continue
                missing = min(first_parked - self.expected, GAP_READ_LIMIT)
                events = []
                if history is not None:
                    try:
                        events = await history.read(self.topic, self.expected - 1, missing)
                    except Exception as exc:
                        log.warning("gap read on %s failed: %s", self.topic, exc)
                for event in events:
                    if self.expected is not None and event.seq >= self.expected:
                        self._deliver(event.seq, event.envelope_json(), event.headers)
                if not events:
                    # Gone from history (trimmed) or unreadable: skip to what we hold;
                    # clients see the jump in seq and resume from history.
                    self.link.gaps_skipped += 1
                    self.expected = min(self.parked)
                self._drain()
        finally:
            self.filling = False


class ClusterLink:
    """Implements :class:`~agentcast.brokers.base.BrokerHandler` for one node's hub."""

    def __init__(
        self,
        hub: Hub,
        broker: Broker,
        *,
        heartbeat_interval: float = 1.0,
        member_timeout: float = 3.0,
        clock: Any = time.monotonic,
    ) -> None:
        self.hub = hub
        self.broker = broker
        self.heartbeat_interval = heartbeat_interval
        self.member_timeout = member_timeout
        self.clock = clock
        self.members: dict[str, Member] = {}
        self.interest: dict[str, int] = {}
        self.feeds: OrderedDict[str, OrderedFeed] = OrderedDict()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self.healthy = True
        self.received = 0
        self.duplicates = 0
        self.gaps_skipped = 0

    # -- interest ------------------------------------------------------------------------

    def interest_up(self, pattern: str) -> None:
        count = self.interest.get(pattern, 0)
        self.interest[pattern] = count + 1
        if count == 0:
            self.broker.add_interest(pattern)

    def interest_down(self, pattern: str) -> None:
        count = self.interest.get(pattern, 0)
        if count <= 1:
            self.interest.pop(pattern, None)
            if count == 1:
                self.broker.remove_interest(pattern)
        else:
            self.interest[pattern] = count - 1

    # -- outgoing ------------------------------------------------------------------------

    def published(self, topic: str, envelope: bytes) -> None:
        """An ephemeral event this node accepted (already fanned out locally)."""
        self.broker.publish(topic, envelope)

    def committed(self, topic: str, seq: int, envelope: bytes, headers: dict[str, str]) -> None:
        """A durable event this node committed: to the other nodes, and locally in order."""
        self.broker.publish(topic, envelope)
        self._feed(topic).offer(seq, envelope, headers)

    # -- BrokerHandler -------------------------------------------------------------------

    def on_event(self, origin: str, topic: str, envelope: bytes) -> None:
        try:
            event = orjson.loads(envelope)
            event_id, seq, headers = event["id"], event["seq"], event.get("headers") or {}
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.warning("dropping a malformed event from node %s", origin)
            return
        if event.get("topic") != topic:
            return
        if event_id in self._seen:
            self.duplicates += 1
            return
        self._seen[event_id] = None
        if len(self._seen) > MAX_SEEN_IDS:
            self._seen.popitem(last=False)
        self.received += 1
        if self.hub.durability and self.hub.durability.rule_for(topic) is not None:
            self._feed(topic).offer(seq, envelope, headers)
        else:
            self.hub.deliver_envelope(topic, envelope, headers, seq, durable=False)

    def on_direct(self, origin: str, data: bytes) -> None:
        log.debug("direct message from %s ignored (%d bytes)", origin, len(data))

    def on_heartbeat(self, origin: str, data: bytes) -> None:
        try:
            info = orjson.loads(data)
        except orjson.JSONDecodeError:
            info = {}
        member = self.members.get(origin)
        if member is None:
            log.info("node %s joined", origin)
            self.members[origin] = Member(origin, self.clock(), info)
        else:
            member.last_seen = self.clock()
            member.info = info

    def on_health(self, healthy: bool) -> None:
        if healthy != self.healthy:
            log.warning("broker %s", "reachable again" if healthy else "unreachable")
        self.healthy = healthy

    # -- membership ----------------------------------------------------------------------

    def live_members(self) -> list[str]:
        """This node and every node heard from within ``member_timeout``, sorted."""
        now = self.clock()
        alive = [
            m.node_id for m in self.members.values() if now - m.last_seen <= self.member_timeout
        ]
        return sorted([self.hub.node_id, *alive])

    async def run(self) -> None:
        """Heartbeat and prune members until cancelled."""
        while True:
            now = self.clock()
            for node_id, member in list(self.members.items()):
                if now - member.last_seen > self.member_timeout * 10:
                    del self.members[node_id]
            info = {"connections": len(self.hub.connections), "time": time.time()}
            self.broker.heartbeat(orjson.dumps(info))
            await asyncio.sleep(self.heartbeat_interval)

    def _feed(self, topic: str) -> OrderedFeed:
        feed = self.feeds.get(topic)
        if feed is None:
            if len(self.feeds) >= MAX_FEEDS:
                self.feeds.popitem(last=False)
            feed = self.feeds[topic] = OrderedFeed(self, topic)
        else:
            self.feeds.move_to_end(topic)
        return feed
