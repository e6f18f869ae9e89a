"""What the demo measures: counters of the simulated clients and samples of the node's hub.

Pure bookkeeping with the clock passed in; the workload feeds :class:`TrafficStats` and the
view reads immutable rows (:class:`TrafficRow`, :class:`NodeRow`) built once per refresh.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agentcast.demo.window import SlidingWindow
from agentcast.hub.hub import Hub
from agentcast.hub.stats import QUEUE_BUCKETS

QUANTILES = (0.5, 0.99)


@dataclass(slots=True, frozen=True)
class TrafficRow:
    """One line of the traffic table: a session, or the total of every session."""

    name: str
    observer_policy: str
    agents_connected: int
    agents_total: int
    observers_connected: int
    observers_total: int
    publish_rate: float
    delivery_rate: float
    p50_ms: float | None
    p99_ms: float | None
    published: int
    delivered: int


class TrafficStats:
    """Counters of one session (or of all of them) as the simulated clients see them.

    ``expected`` counts the agent deliveries each publish should cause (every subscribed
    agent of the session for the chat, the addressee for an inbox) at the time it is sent;
    ``unread`` counts publishes to an inbox whose owner was not subscribed (lost for lack of
    a reader). Observer deliveries are counted apart: a dashboard may drop by policy.
    """

    __slots__ = (
        "agents_connected",
        "agents_ever",
        "agents_total",
        "delivered_agents",
        "delivered_observers",
        "deliveries",
        "expected",
        "name",
        "observer_policy",
        "observers_connected",
        "observers_ever",
        "observers_total",
        "published",
        "publishes",
        "unread",
    )

    def __init__(
        self,
        name: str,
        start: float,
        *,
        agents_total: int,
        observers_total: int,
        observer_policy: str = "",
    ) -> None:
        self.name = name
        self.observer_policy = observer_policy
        self.agents_total = agents_total
        self.observers_total = observers_total
        self.agents_connected = 0
        self.agents_ever = 0
        self.observers_connected = 0
        self.observers_ever = 0
        self.published = 0
        self.expected = 0
        self.unread = 0
        self.delivered_agents = 0
        self.delivered_observers = 0
        self.publishes = SlidingWindow(start)
        self.deliveries = SlidingWindow(start)

    @property
    def delivered(self) -> int:
        return self.delivered_agents + self.delivered_observers

    def joined(self, *, observer: bool) -> None:
        if observer:
            self.observers_connected += 1
            self.observers_ever += 1
        else:
            self.agents_connected += 1
            self.agents_ever += 1

    def left(self, *, observer: bool) -> None:
        if observer:
            self.observers_connected -= 1
        else:
            self.agents_connected -= 1

    def sent(self, now: float, expected: int, *, unread: bool = False) -> None:
        """A publish is about to go out; ``expected`` agent deliveries should follow."""
        self.published += 1
        self.expected += expected
        self.unread += unread
        self.publishes.add(now)

    def unsent(self, expected: int) -> None:
        """A publish counted by :meth:`sent` failed: it causes no delivery."""
        self.published -= 1
        self.expected -= expected

    def received(self, now: float, latency_ms: float | None, *, observer: bool) -> None:
        if observer:
            self.delivered_observers += 1
        else:
            self.delivered_agents += 1
        if latency_ms is None:
            self.deliveries.add(now)
        else:
            self.deliveries.observe(now, latency_ms)

    @property
    def missing(self) -> int:
        """Agent deliveries expected but not (yet) received."""
        return max(0, self.expected - self.delivered_agents)

    def row(self, now: float) -> TrafficRow:
        quantiles = self.deliveries.quantiles(now, QUANTILES)
        return TrafficRow(
            name=self.name,
            observer_policy=self.observer_policy,
            agents_connected=self.agents_connected,
            agents_total=self.agents_total,
            observers_connected=self.observers_connected,
            observers_total=self.observers_total,
            publish_rate=self.publishes.rate(now),
            delivery_rate=self.deliveries.rate(now),
            p50_ms=quantiles[0] if quantiles else None,
            p99_ms=quantiles[1] if quantiles else None,
            published=self.published,
            delivered=self.delivered,
        )


@dataclass(slots=True, frozen=True)
class NodeRow:
    """The hub's own figures: gauges now, counters since start, rates over the window."""

    connections: int
    subscriptions: int
    publishes: int
    deliveries: int
    writes: int
    drops: dict[str, int]
    slow_disconnects: int
    queue_now: int
    queue_peak: str
    publish_rate: float
    delivery_rate: float
    write_rate: float

    @property
    def drops_total(self) -> int:
        return sum(self.drops.values())

    @property
    def deliveries_per_write(self) -> float:
        return self.deliveries / self.writes if self.writes else 0.0


def queue_peak(counts: list[int]) -> str:
    """The largest queue length a writer flush has seen, as its histogram bucket
    (``"0"`` before any flush, ``"≤16"`` for the bucket of 9..16, ``">4096"`` past the last)."""
    for index in range(len(counts) - 1, -1, -1):
        if counts[index]:
            if index >= len(QUEUE_BUCKETS):
                return f">{QUEUE_BUCKETS[-1]}"
            bound = QUEUE_BUCKETS[index]
            return str(bound) if bound == 1 else f"≤{bound}"
    return "0"


@dataclass(slots=True)
class NodeSampler:
    """Reads a hub in-process and turns its counters into rates."""

    hub: Hub
    start: float
    _last: tuple[int, int, int] = (0, 0, 0)
    _windows: tuple[SlidingWindow, SlidingWindow, SlidingWindow] = field(init=False)

    def __post_init__(self) -> None:
        self._windows = (
            SlidingWindow(self.start),
            SlidingWindow(self.start),
            SlidingWindow(self.start),
        )

    def sample(self, now: float) -> NodeRow:
        hub = self.hub
        stats = hub.stats
        current = (stats.publishes, stats.deliveries, stats.writes)
        for window, value, last in zip(self._windows, current, self._last, strict=True):
            window.add(now, value - last)
        self._last = current
        publish_w, delivery_w, write_w = self._windows
        connections = hub.connections.values()
        return NodeRow(
            connections=len(hub.connections),
            subscriptions=len(hub.index),
            publishes=stats.publishes,
            deliveries=stats.deliveries,
            writes=stats.writes,
            drops=dict(stats.drops),
            slow_disconnects=stats.slow_disconnects,
            queue_now=max((len(conn.queue) for conn in connections), default=0),
            queue_peak=queue_peak(stats.queue_length.counts),
            publish_rate=publish_w.rate(now),
            delivery_rate=delivery_w.rate(now),
            write_rate=write_w.rate(now),
        )


@dataclass(slots=True, frozen=True)
class Snapshot:
    """Everything one refresh of the view shows."""

    elapsed: float
    phase: str
    sessions: list[TrafficRow]
    total: TrafficRow
    node: NodeRow


@dataclass(slots=True, frozen=True)
class Summary:
    """The figures printed once the demo has stopped."""

    elapsed: float
    sessions: int
    agents_per_session: int
    agents_connected: int
    agents_total: int
    observers_connected: int
    observers_total: int
    published: int
    delivered_agents: int
    delivered_observers: int
    unread: int
    missing: int
    p50_ms: float | None
    p99_ms: float | None
    latency_samples: int
    connections_opened: int
    node: NodeRow

    @property
    def delivered(self) -> int:
        return self.delivered_agents + self.delivered_observers
