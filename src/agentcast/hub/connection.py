"""One client connection as the hub sees it: subscriptions, outbound queue and writer."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from agentcast.hub.outbound import Entry, OutboundQueue
from agentcast.protocol.commands import Policy

if TYPE_CHECKING:
    from agentcast.hub.groups import Member
    from agentcast.hub.hub import Hub
    from agentcast.security.guard import ConnectionAuth


class Sink(Protocol):
    """The transport side of a connection; every method must return without blocking."""

    def write(self, data: bytes) -> None:
        """Hand bytes (one or more complete WebSocket frames) to the transport."""

    def close(self, code: int, reason: str) -> None:
        """Send a close frame with ``code`` and drop the connection."""

    def ping(self) -> None:
        """Send a WebSocket-level ping."""


class Subscription:
    """A connection's interest in one pattern. Hashed by identity.

    While ``recovering`` is a list, the subscription is replaying history: live events are
    parked there as ``(seq, entry)`` instead of being queued, and merged after the replay.
    Once live, ``after`` (set by the replay) is the last durable ``seq`` sent: a durable
    event at or below it is not sent again.
    """

    __slots__ = ("after", "key_header", "order", "owner", "pattern", "policy", "recovering")

    def __init__(
        self, owner: Connection, pattern: str, policy: Policy, key_header: str, order: int
    ) -> None:
        self.owner = owner
        self.pattern = pattern
        self.policy = policy
        self.key_header = key_header
        self.order = order
        self.recovering: list[tuple[int, Entry]] | None = None
        self.after: int | None = None


class Connection:
    """Per-connection state. The hub owns every mutation; the transport only reports."""

    __slots__ = (
        "auth",
        "client",
        "closed",
        "dirty",
        "drained",
        "groups",
        "hello_done",
        "hub",
        "id",
        "last_ping",
        "last_recv",
        "next_order",
        "paused",
        "queue",
        "recovering",
        "sink",
        "subscriptions",
    )

    def __init__(
        self,
        hub: Hub,
        conn_id: str,
        sink: Sink,
        queue: OutboundQueue,
        now: float,
        auth: ConnectionAuth,
    ) -> None:
        self.hub = hub
        self.auth = auth
        self.id = conn_id
        self.sink = sink
        self.queue = queue
        self.client: str | None = None
        self.subscriptions: dict[str, Subscription] = {}
        self.hello_done = False
        self.paused = False
        self.closed = False
        self.dirty = False
        self.last_recv = now
        self.last_ping = now
        self.next_order = 0
        self.drained: list[Callable[[], None]] = []
        self.groups: dict[tuple[str, str], Member] = {}
        # exact topic -> its subscription while that one replays history
        self.recovering: dict[str, Subscription] = {}

    @property
    def source(self) -> str:
        """The envelope ``source`` of events this connection publishes."""
        return f"ac://client/{self.client or self.id}"

    def send_control(self, frame: bytes) -> None:
        """Queue a reply frame (never dropped) and schedule a flush."""
        if self.closed:
            return
        self.queue.push_control(Entry(frame, None, None, self.hub.clock()))
        self.hub.mark_dirty(self)

    def flush(self, now: float) -> None:
        """Write everything queued in one transport write, unless paused or closed."""
        self.dirty = False
        if self.closed or self.paused or not len(self.queue):
            return
        stats = self.hub.stats
        stats.queue_length.observe(len(self.queue))
        entries = self.queue.take_all()
        stats.write_latency.observe(now - entries[0].published_at)
        if len(entries) == 1:
            data = entries[0].frame
            stats.deliveries += entries[0].policy is not None
        else:
            data = b"".join([entry.frame for entry in entries])
            stats.deliveries += sum(1 for entry in entries if entry.policy is not None)
        stats.writes += 1
        stats.bytes_written += len(data)
        self.sink.write(data)
        if self.drained:
            callbacks, self.drained = self.drained, []
            for callback in callbacks:
                callback()

    def when_drained(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once everything queued now has been handed to the transport
        (at once if nothing is queued; never if the connection closes first)."""
        if not len(self.queue):
            callback()
        else:
            self.drained.append(callback)
