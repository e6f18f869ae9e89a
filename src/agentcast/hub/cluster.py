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
* **Ring.** Once per heartbeat the link rebuilds its :class:`~agentcast.hub.ring.TenantRing`
  if the live members changed; the ring gives each tenant one owner node for its singleton
  duties (presence aggregation), moved within ``member_timeout + heartbeat_interval`` of a
  node's death (see ``hub/ring.py``).
* **Presence.** Once per heartbeat the link's :class:`~agentcast.hub.presence.PresenceService`
  scans the local connections and reports changes to each tenant's owner.
* **Inboxes.** A publication to an inbox (``<tenant>.inbox.<client>``) goes only to the
  nodes the routing table (``hub/routes.py``) says hold it, as a direct message; the link
  announces the inboxes its node holds instead of asking the broker for their traffic.

Direct messages between links start with a kind and a newline: ``i`` an inbox event (its
topic, a newline, its envelope), ``r`` a route announcement, ``p``/``q``/``a`` presence
updates, queries and answers (JSON bodies).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from agentcast.brokers.base import Broker
from agentcast.hub.presence import KINDS as PRESENCE_KINDS
from agentcast.hub.presence import PresenceService
from agentcast.hub.ring import TenantRing
from agentcast.hub.routes import (
    DEFAULT_TTL,
    NoRoute,
    RouteTable,
    decode_routes,
    encode_routes,
    is_inbox,
)

if TYPE_CHECKING:
    from agentcast.hub.hub import Hub

log = logging.getLogger(__name__)

MAX_FEEDS = 65_536
MAX_SEEN_IDS = 65_536
GAP_READ_LIMIT = 1_000
KIND_INBOX = b"i"
KIND_ROUTES = b"r"
KIND_GROUP = b"g"  # consumer-group traffic between members' nodes and owners


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

    def start_after(self, seq: int) -> None:
        """Expect ``seq + 1`` next if nothing came yet: a subscription went live after
        ``seq``, so an older position arriving late is a duplicate, and a newer one
        arriving first is preceded by the positions between, read from history."""
        if self.expected is None:
            self.expected = seq + 1

    def _deliver(self, seq: int, envelope: bytes, headers: dict[str, str]) -> None:
        self.expected = seq + 1
        self.link.hub.deliver_envelope(self.topic, envelope, headers, seq, durable=True)

    def _drain(self) -> None:
        while self.expected in self.parked:
            envelope, headers = self.parked.pop(self.expected)
            self._deliver(self.expected, envelope, headers)

    async def _fill(self) -> None:
        """Read the positions between the next expected one and the oldest parked one.

        An event parked while a read was in flight may have come in that read too: once
        ``expected`` passed it, it is discarded (it was delivered from history)."""
        history = self.link.hub.history
        try:
            while self.parked and self.expected is not None:
                first_parked = min(self.parked)
                if first_parked < self.expected:
                    del self.parked[first_parked]
                    continue
                if first_parked == self.expected:
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
                    self.expected = max(self.expected, min(self.parked))
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
        route_ttl: float = DEFAULT_TTL,
        resync_interval: float | None = None,
    ) -> None:
        """``route_ttl`` is how long an inbox announcement stays valid; routes are announced
        again, and presence re-sent to the owners, every ``resync_interval`` (default
        ``route_ttl / 3``)."""
        self.hub = hub
        self.broker = broker
        self.heartbeat_interval = heartbeat_interval
        self.member_timeout = member_timeout
        self.clock = clock
        self.resync_interval = resync_interval or route_ttl / 3
        self.ring = TenantRing([hub.node_id])
        self.routes = RouteTable(hub.node_id, ttl=route_ttl, clock=clock)
        self.presence = PresenceService(
            hub, owner=self.owner, send=broker.send_to, on_change=self._notify
        )
        self.direct_received = 0
        self.routed = 0
        self._change = asyncio.Event()
        self._route_flush_pending = False
        self._resync_due = True
        self._next_resync = 0.0
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
            if is_inbox(pattern):
                self.routes.hold(pattern)
                self._schedule_route_flush()
            else:
                self.broker.add_interest(pattern)

    def interest_down(self, pattern: str) -> None:
        count = self.interest.get(pattern, 0)
        if count <= 1:
            self.interest.pop(pattern, None)
            if count == 1:
                if is_inbox(pattern):
                    self.routes.release(pattern)
                    self._schedule_route_flush()
                else:
                    self.broker.remove_interest(pattern)
        else:
            self.interest[pattern] = count - 1

    # -- outgoing ------------------------------------------------------------------------

    def published(self, topic: str, envelope: bytes) -> None:
        """An ephemeral event this node accepted (already fanned out locally).

        Raises :class:`NoRoute` for an inbox no node holds (the local fan-out has happened
        by then: see :meth:`check_route` for refusing before it)."""
        if is_inbox(topic):
            self._send_inbox(topic, envelope, refuse=True)
        else:
            self.broker.publish(topic, envelope)

    def committed(self, topic: str, seq: int, envelope: bytes, headers: dict[str, str]) -> None:
        """A durable event this node committed: to the other nodes, and locally in order."""
        if is_inbox(topic):
            self._send_inbox(topic, envelope, refuse=False)
        else:
            self.broker.publish(topic, envelope)
        self._feed(topic).offer(seq, envelope, headers)

    def resumed(self, topic: str, seq: int) -> None:
        """A subscription to durable ``topic`` went live after ``seq`` (its history was
        replayed up to there): the topic's feed starts there if it has no position yet."""
        self._feed(topic).start_after(seq)

    def check_route(self, topic: str) -> None:
        """Raise :class:`NoRoute` if ``topic`` is an inbox that no node holds."""
        if is_inbox(topic) and not self.routes.holders(topic):
            raise NoRoute(_no_route_message(topic))

    def _send_inbox(self, topic: str, envelope: bytes, *, refuse: bool) -> None:
        nodes = self.routes.remote_holders(topic)
        if nodes:
            frame = b"".join((KIND_INBOX, b"\n", topic.encode(), b"\n", envelope))
            for node_id in nodes:
                self.broker.send_to(node_id, frame)
            self.routed += 1
        elif refuse and topic not in self.routes.local:
            raise NoRoute(_no_route_message(topic))

    # -- ring ----------------------------------------------------------------------------

    def owner(self, tenant: str) -> str:
        """The live node that holds ``tenant``'s singleton duties, in this node's view."""
        return self.ring.owner(tenant)

    def owns(self, tenant: str) -> bool:
        """Whether this node holds ``tenant``'s singleton duties."""
        return self.ring.owner(tenant) == self.hub.node_id

    def _check_ring(self) -> None:
        """Rebuild the ring if the live members changed, and hand duties over."""
        live = self.live_members()
        if tuple(live) == self.ring.members:
            return
        old = self.ring
        self.ring = TenantRing(live)
        log.info("ring members now %s", ", ".join(live))
        for node_id in set(old.members) - set(live):
            self.routes.drop_node(node_id)
            self.presence.node_left(node_id)
        self.presence.ring_changed(old.owner)
        groups = self.hub.groups
        if groups is not None and groups.relay is not None:
            groups.relay.ring_changed(set(live))
        self._notify()

    # -- routes --------------------------------------------------------------------------

    def _schedule_route_flush(self) -> None:
        if not self._route_flush_pending:
            self._route_flush_pending = True
            asyncio.get_running_loop().call_soon(self._flush_routes)

    def _flush_routes(self) -> None:
        """Announce the inboxes held and released since the last flush to every node."""
        self._route_flush_pending = False
        added, removed = self.routes.take_changes()
        self._announce(self._peers(), added, removed)

    def _announce(self, peers: list[str], added: list[str], removed: list[str]) -> None:
        if not peers:
            return
        for body in encode_routes(added, removed, self.routes.ttl):
            message = KIND_ROUTES + b"\n" + body
            for node_id in peers:
                self.broker.send_to(node_id, message)

    def _peers(self) -> list[str]:
        return [n for n in self.live_members() if n != self.hub.node_id]

    # -- change notification -------------------------------------------------------------

    def _notify(self) -> None:
        self._change.set()
        self._change = asyncio.Event()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds, checking it again after each change of this
        link's ring, routes, members or presence board (bound the wait with
        ``asyncio.timeout``)."""
        while not predicate():
            await self._change.wait()

    # -- BrokerHandler -------------------------------------------------------------------

    def on_event(self, origin: str, topic: str, envelope: bytes) -> None:
        try:
            event = orjson.loads(envelope)
            event_id, seq, headers = event["id"], event["seq"], event.get("headers") or {}
            if not isinstance(event_id, str) or not isinstance(seq, int):
                raise TypeError("id must be a string and seq an integer")
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
        kind, _, body = data.partition(b"\n")
        if kind == KIND_INBOX:
            raw_topic, separator, envelope = body.partition(b"\n")
            topic = raw_topic.decode(errors="replace")
            if separator and is_inbox(topic):
                self.direct_received += 1
                self.on_event(origin, topic, envelope)
        elif kind == KIND_ROUTES:
            try:
                added, removed, ttl = decode_routes(body)
            except ValueError as exc:
                log.warning("dropping a malformed route message from %s: %s", origin, exc)
                return
            self.routes.apply(origin, added, removed, ttl)
            self._notify()
        elif kind in PRESENCE_KINDS:
            self.presence.on_direct(origin, kind, body)
        elif kind == KIND_GROUP:
            groups = self.hub.groups
            if groups is not None and groups.relay is not None:
                groups.relay.on_direct(origin, body)
        else:
            log.debug("direct message from %s ignored (%d bytes)", origin, len(data))

    def on_heartbeat(self, origin: str, data: bytes) -> None:
        try:
            info = orjson.loads(data)
        except orjson.JSONDecodeError:
            info = {}
        now = self.clock()
        member = self.members.get(origin)
        if member is None or now - member.last_seen > self.member_timeout:
            log.info("node %s joined", origin)
            self.members[origin] = Member(origin, now, info)
            # A node heard from for the first time (or again) learns every inbox held here.
            self._announce([origin], sorted(self.routes.local), [])
            self._notify()
        else:
            member.last_seen = now
            member.info = info

    def on_health(self, healthy: bool) -> None:
        if healthy != self.healthy:
            log.warning("broker %s", "reachable again" if healthy else "unreachable")
            if healthy:
                self._resync_due = True  # messages may have been lost meanwhile
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
        """Run :meth:`tick` every ``heartbeat_interval`` until cancelled."""
        while True:
            self.tick()
            await asyncio.sleep(self.heartbeat_interval)

    def tick(self) -> None:
        """One heartbeat: prune members, heartbeat, follow ring changes, report presence
        changes, and (every ``resync_interval``) announce routes and presence in full."""
        now = self.clock()
        for node_id, member in list(self.members.items()):
            if now - member.last_seen > self.member_timeout * 10:
                del self.members[node_id]
        info = {"connections": len(self.hub.connections), "time": time.time()}
        self.broker.heartbeat(orjson.dumps(info))
        self._check_ring()
        self.presence.tick()
        if self._resync_due or now >= self._next_resync:
            self._resync_due = False
            self._next_resync = now + self.resync_interval
            self._announce(self._peers(), sorted(self.routes.local), [])
            self.presence.resync()
        self.routes.sweep()

    def _feed(self, topic: str) -> OrderedFeed:
        feed = self.feeds.get(topic)
        if feed is None:
            if len(self.feeds) >= MAX_FEEDS:
                self.feeds.popitem(last=False)
            feed = self.feeds[topic] = OrderedFeed(self, topic)
        else:
            self.feeds.move_to_end(topic)
        return feed


def _no_route_message(topic: str) -> str:
    return f"no node holds the inbox {topic!r}: its client is not connected (or not subscribed)"
