"""The ``/v1/stats`` document: one JSON snapshot of a hub for the dashboard.

Everything is read from the hub at request time (never per message) plus the dashboard's own
:class:`~agentcast.dashboard.traffic.TopicTraffic` and
:class:`~agentcast.dashboard.rates.NodeSampler`. Lists are bounded (``MAX_*`` below) and
report their full length beside the part shown.

A **session** is a ``tenant.session`` prefix: the first two segments of a subscribed pattern
or published topic that has at least three segments and no wildcard in those two. A
session's **agents** are the connected clients that hold a subscription in it or whose client
name starts with ``<session>.`` or ``<tenant>.<session>.`` (presence). A client that only
holds wildcard subscriptions there is flagged as an observer. Connections named
:data:`DASHBOARD_CLIENT` (the dashboard page itself) are not agents.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from agentcast.dashboard.rates import NodeSampler
from agentcast.dashboard.traffic import TopicRate, TopicTraffic
from agentcast.hub.connection import Connection
from agentcast.hub.hub import Hub
from agentcast.hub.stats import LATENCY_BUCKETS, QUEUE_BUCKETS
from agentcast.protocol.topics import is_pattern

DASHBOARD_CLIENT = "agentcast-dashboard"
MAX_CONNECTIONS = 200
MAX_SESSIONS = 200
MAX_AGENTS = 500
MAX_TOPICS = 100
MAX_SUBSCRIPTIONS_SHOWN = 20
MAX_GROUPS = 100

_DIGITS = re.compile(r"(\d+)")


def natural_key(text: str) -> list[Any]:
    """Sort key that orders ``session-2`` before ``session-10``."""
    return [int(part) if part.isdigit() else part for part in _DIGITS.split(text)]


def session_of(topic: str) -> str | None:
    """The ``tenant.session`` prefix of a topic or pattern, or ``None`` if it has none."""
    parts = topic.split(".", 2)
    if len(parts) < 3 or any(part in ("*", ">") for part in parts[:2]):
        return None
    return f"{parts[0]}.{parts[1]}"


def quantile(bounds: tuple[float, ...], counts: Iterable[int], q: float) -> float | None:
    """The upper bound of the bucket holding quantile ``q`` (``None`` when empty, the last
    bound when it falls in the +Inf bucket)."""
    counts = list(counts)
    total = sum(counts)
    if total == 0:
        return None
    target = q * total
    running = 0
    for index, count in enumerate(counts):
        running += count
        if running >= target:
            return bounds[min(index, len(bounds) - 1)]
    return bounds[-1]


@dataclass(slots=True)
class SessionView:
    """What the snapshot reports about one session while it is being built."""

    id: str
    agents: list[dict[str, Any]] = field(default_factory=list)
    topics: list[TopicRate] = field(default_factory=list)


def _agent(conn: Connection, session: SessionView, patterns: list[str]) -> dict[str, Any]:
    name = conn.client or conn.id
    short = session.id.split(".", 1)[1]
    for prefix in (f"{session.id}.", f"{short}."):
        if name.startswith(prefix) and len(name) > len(prefix):
            name = name[len(prefix) :]
            break
    return {
        "name": name,
        "client": conn.client,
        "connection": conn.id,
        "topics": patterns[:MAX_SUBSCRIPTIONS_SHOWN],
        "observer": bool(patterns) and all(is_pattern(p) for p in patterns),
        "queued": len(conn.queue),
    }


def _sessions(hub: Hub, rates: list[TopicRate]) -> list[SessionView]:
    sessions: dict[str, SessionView] = {}
    for row in rates:
        key = session_of(row.topic)
        if key is not None:
            sessions.setdefault(key, SessionView(key)).topics.append(row)
    for conn in hub.connections.values():
        for pattern in conn.subscriptions:
            key = session_of(pattern)
            if key is not None and key not in sessions:
                sessions[key] = SessionView(key)
    by_short: dict[str, list[str]] = {}
    for key in sessions:
        by_short.setdefault(key.split(".", 1)[1], []).append(key)
    for conn in hub.connections.values():
        if conn.client == DASHBOARD_CLIENT:
            continue
        mine: dict[str, list[str]] = {}
        for pattern in conn.subscriptions:
            key = session_of(pattern)
            if key is not None:
                mine.setdefault(key, []).append(pattern)
        if conn.client:
            first, _, rest = conn.client.partition(".")
            if rest:
                for key in by_short.get(first, ()):
                    mine.setdefault(key, [])
                two = session_of(conn.client)
                if two is not None and two in sessions:
                    mine.setdefault(two, [])
        for key, patterns in mine.items():
            view = sessions[key]
            if len(view.agents) < MAX_AGENTS:
                view.agents.append(_agent(conn, view, patterns))
    return sorted(sessions.values(), key=lambda view: natural_key(view.id))


def _topic_row(hub: Hub, row: TopicRate) -> dict[str, Any]:
    return {
        "topic": row.topic,
        "rate": row.rate,
        "total": row.total,
        "durable": hub.durability.rule_for(row.topic) is not None,
    }


def _session_row(hub: Hub, view: SessionView) -> dict[str, Any]:
    agents = sorted(view.agents, key=lambda agent: natural_key(agent["name"]))
    topics = sorted(view.topics, key=lambda row: natural_key(row.topic))
    tenant, name = view.id.split(".", 1)
    return {
        "id": view.id,
        "tenant": tenant,
        "name": name,
        "agents": agents,
        "agent_count": sum(not agent["observer"] for agent in agents),
        "observer_count": sum(agent["observer"] for agent in agents),
        "topics": [_topic_row(hub, row) for row in topics[:MAX_TOPICS]],
        "topic_count": len(topics),
        "publish_rate": sum(row.rate for row in view.topics),
        "publishes": sum(row.total for row in view.topics),
    }


def _connection_row(conn: Connection) -> dict[str, Any]:
    patterns = list(conn.subscriptions)
    return {
        "id": conn.id,
        "client": conn.client,
        "subscriptions": patterns[:MAX_SUBSCRIPTIONS_SHOWN],
        "subscription_count": len(patterns),
        "groups": len(conn.groups),
        "queued": len(conn.queue),
        "paused": conn.paused,
    }


def _groups(hub: Hub) -> list[dict[str, Any]]:
    if hub.groups is None:
        return []
    rows = []
    for (topic, name), runner in list(hub.groups.runners.items())[:MAX_GROUPS]:
        group = runner.group
        rows.append(
            {
                "topic": topic,
                "group": name,
                "members": len(group.members),
                "pending": group.pending,
                "in_flight": len(group.inflight),
                "floor": group.floor,
            }
        )
    return rows


@dataclass(slots=True)
class StatsSource:
    """What a snapshot is built from: the hub and the dashboard's own bookkeeping."""

    hub: Hub
    traffic: TopicTraffic
    sampler: NodeSampler
    started: float
    ws_url: str | None = None


def build_stats(source: StatsSource, now: float) -> dict[str, Any]:
    """The ``/v1/stats`` document at monotonic time ``now`` (see the module docstring)."""
    hub = source.hub
    stats = hub.stats
    rates = source.sampler.sample(now)
    topic_rates = source.traffic.rates(now)
    connections = sorted(hub.connections.values(), key=lambda conn: natural_key(conn.id))
    queued = [len(conn.queue) for conn in connections]
    sessions = _sessions(hub, topic_rates)
    latency_bounds = LATENCY_BUCKETS
    drops = dict(sorted(stats.drops.items()))
    return {
        "node": hub.node_id,
        "uptime": now - source.started,
        "time": time.time(),
        "ws_url": source.ws_url,
        "totals": {
            "connections": len(hub.connections),
            "subscriptions": len(hub.index),
            "connections_opened": stats.connections_opened,
            "publishes": stats.publishes,
            "duplicates": stats.duplicates,
            "deliveries": stats.deliveries,
            "writes": stats.writes,
            "bytes_written": stats.bytes_written,
            "errors": stats.errors,
            "slow_disconnects": stats.slow_disconnects,
            "drops": drops,
            "drops_total": sum(drops.values()),
            "group_deliveries": stats.group_deliveries,
            "group_dead_letters": stats.group_dead_letters,
        },
        "rates": {
            "window": rates.window,
            "publishes": rates.publishes,
            "deliveries": rates.deliveries,
            "writes": rates.writes,
            "errors": rates.errors,
            "drops": rates.drops,
        },
        "queues": {
            "queued": sum(queued),
            "max": max(queued, default=0),
            "bounds": list(QUEUE_BUCKETS),
            "counts": list(stats.queue_length.counts),
        },
        "latency": {
            "bounds": list(latency_bounds),
            "counts": list(stats.write_latency.counts),
            "recent": list(rates.latency),
            "count": stats.write_latency.count,
            "p50": quantile(latency_bounds, rates.latency, 0.5),
            "p99": quantile(latency_bounds, rates.latency, 0.99),
        },
        "connections": {
            "total": len(connections),
            "shown": [_connection_row(conn) for conn in connections[:MAX_CONNECTIONS]],
        },
        "sessions": [_session_row(hub, view) for view in sessions[:MAX_SESSIONS]],
        "session_count": len(sessions),
        "topics": [_topic_row(hub, row) for row in topic_rates[:MAX_TOPICS]],
        "topic_count": len(topic_rates),
        "durable": [rule.pattern for rule in hub.durability.rules],
        "groups": _groups(hub),
    }
