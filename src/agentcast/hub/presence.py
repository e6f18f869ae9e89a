"""Presence: who is connected to each session, across the cluster, with join/leave events.

A **session** is ``<tenant>.<name>``, the first two segments of its topics. A connection is
*present* in a session while it holds a subscription whose pattern starts with exactly those
two segments (``acme.run-42``, ``acme.run-42.>``, ``acme.run-42.agent.x``; not
``acme.*.x`` nor ``acme.>``). The second segment ``inbox`` is reserved for inboxes
(``hub/routes.py``) and names no session.

* :class:`LocalPresence`: each node scans its own connections once per cluster heartbeat
  (a connection whose subscriptions did not change costs one tuple comparison) and turns
  what changed into joins and leaves.
* :class:`PresenceBoard`: the ring owner of a tenant (``hub/ring.py``) aggregates every
  node's members of that tenant's sessions, bounded by ``max_sessions`` sessions and
  ``max_members`` members per session (joins past a bound are refused and counted).
* :class:`PresenceService` sends each node's changes to the tenant's owner (a direct
  broker message, or a plain call when the owner is this node), has the owner publish
  them, and answers ``presence`` queries.

**Events.** For each change the owner publishes an ordinary ephemeral event on
``<tenant>.<session>.presence`` (so a subscriber on any node gets it through the usual
cluster fan-out) with the payload ``{"type": "join" | "leave", "session", "client",
"connection", "node"}``. A change is seen within one heartbeat interval plus the broker's
delivery time. When a node leaves the cluster, the owner announces the leave of each of its
connections.

**Ownership changes.** When a node's view of the ring changes, it sends its full local
presence for every tenant whose owner changed to the new owner, which adopts it without
events (those members did not just join). A node drops what it aggregated for tenants it
no longer owns. Every ``resync_interval`` (``hub/cluster.py``) each node also sends its full
local presence to the owners (anti-entropy: it repairs state lost with a broker message or
during a disagreement about the ring; an owner that already held that node's state
publishes the differences as joins and leaves). One limitation: when the owner itself dies,
the clients that were connected to that same node leave without a ``leave`` event (their
new owner never knew them); a ``presence`` query reflects the new owner's state.

**Queries.** ``presence`` is answered by the tenant's owner: a node that is not the owner
asks it with a direct request and waits at most ``query_timeout`` (then ``unavailable``).
One authoritative copy per tenant keeps the replication traffic at zero for a query that is
rare next to joins and leaves; the price is one broker round trip per query.

Without a broker (one node) the node owns every tenant; :func:`presence_for` starts a
standalone service for the hub the first time it is asked.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from agentcast.errors import AgentcastError, Overloaded, Unavailable
from agentcast.protocol.commands import Publish
from agentcast.protocol.topics import tenant_of

if TYPE_CHECKING:
    from agentcast.hub.connection import Connection, Subscription
    from agentcast.hub.hub import Hub

log = logging.getLogger(__name__)

PRESENCE_SEGMENT = "presence"
RESERVED_SESSIONS = frozenset({"inbox"})
MAX_SESSIONS = 65_536
MAX_MEMBERS = 10_000
MAX_NAME = 128
MAX_STAGED = 100_000
"""Members of one node and tenant a full-state transfer may carry."""
BATCH = 512
"""Members per presence message."""
QUERY_TIMEOUT = 2.0
MAX_PENDING_QUERIES = 1_024
STANDALONE_INTERVAL = 1.0
"""How often a node without a cluster scans its connections for presence changes."""

KIND_UPDATE = b"p"
KIND_QUERY = b"q"
KIND_ANSWER = b"a"
KINDS = frozenset({KIND_UPDATE, KIND_QUERY, KIND_ANSWER})
"""Direct-message kinds this module sends and handles (see ``hub/cluster.py``)."""

Entry = tuple[str, str, str | None]
"""A local member: ``(session, connection id, client name)``."""
MemberKey = tuple[str, str]
"""A member on the board: ``(node id, connection id)``."""


def session_of(pattern: str) -> str | None:
    """The session a subscription to ``pattern`` makes its connection present in."""
    parts = pattern.split(".", 2)
    if len(parts) < 2:
        return None
    tenant, name = parts[0], parts[1]
    if tenant in ("*", ">") or name in ("*", ">") or name in RESERVED_SESSIONS:
        return None
    return f"{tenant}.{name}"


def presence_topic(session: str) -> str:
    """Where the owner of ``session``'s tenant publishes its join and leave events."""
    return f"{session}.{PRESENCE_SEGMENT}"


@dataclass(slots=True, frozen=True)
class PresenceEvent:
    """One join or leave, as the owner publishes it."""

    type: str
    session: str
    node: str
    connection: str
    client: str | None

    def payload(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "session": self.session,
            "client": self.client,
            "connection": self.connection,
            "node": self.node,
        }


# -- the local side ------------------------------------------------------------------------


@dataclass(slots=True)
class _Seen:
    signature: tuple[int, int]
    client: str | None
    sessions: frozenset[str]


class LocalPresence:
    """This node's connections and the sessions each is present in, as of the last scan."""

    def __init__(self) -> None:
        self._seen: dict[str, _Seen] = {}

    def scan(
        self, connections: Mapping[str, Connection]
    ) -> tuple[dict[str, list[Entry]], dict[str, list[Entry]]]:
        """Compare ``connections`` with the last scan: ``(joins, leaves)`` by tenant.

        A connection's subscriptions changed iff ``(next_order, len(subscriptions))`` did
        (``next_order`` counts every new pattern, the length every removal too)."""
        joins: dict[str, list[Entry]] = {}
        leaves: dict[str, list[Entry]] = {}
        seen = self._seen
        for conn_id, conn in connections.items():
            signature = (conn.next_order, len(conn.subscriptions))
            known = seen.get(conn_id)
            if known is not None and known.signature == signature:
                continue
            sessions = _sessions(conn.subscriptions.values())
            old = known.sessions if known is not None else frozenset()
            for session in sessions - old:
                joins.setdefault(tenant_of(session), []).append((session, conn_id, conn.client))
            for session in old - sessions:
                leaves.setdefault(tenant_of(session), []).append((session, conn_id, conn.client))
            seen[conn_id] = _Seen(signature, conn.client, sessions)
        if len(seen) > len(connections):  # seen now covers every open connection
            for conn_id in [c for c in seen if c not in connections]:
                gone = seen.pop(conn_id)
                for session in gone.sessions:
                    leaves.setdefault(tenant_of(session), []).append(
                        (session, conn_id, gone.client)
                    )
        return joins, leaves

    def snapshot(self) -> dict[str, list[Entry]]:
        """Every local member as of the last scan, by tenant."""
        out: dict[str, list[Entry]] = {}
        for conn_id, known in self._seen.items():
            for session in known.sessions:
                out.setdefault(tenant_of(session), []).append((session, conn_id, known.client))
        return out


def _sessions(subscriptions: Iterable[Subscription]) -> frozenset[str]:
    found = set()
    for sub in subscriptions:
        session = session_of(sub.pattern)
        if session is not None:
            found.add(session)
    return frozenset(found)


# -- the owner side ------------------------------------------------------------------------


class PresenceBoard:
    """The members of the sessions of the tenants this node owns (bounded)."""

    def __init__(self, max_sessions: int = MAX_SESSIONS, max_members: int = MAX_MEMBERS) -> None:
        self.max_sessions = max_sessions
        self.max_members = max_members
        self._tenants: dict[str, dict[str, dict[MemberKey, str | None]]] = {}
        self._sessions = 0
        self._known: set[tuple[str, str]] = set()
        """``(node, tenant)`` pairs whose state this board holds (possibly empty)."""
        self._staging: dict[tuple[str, str], dict[tuple[str, str], str | None]] = {}
        self.refused = 0

    @property
    def session_count(self) -> int:
        return self._sessions

    def tenants(self) -> list[str]:
        return list(self._tenants)

    def members(self, session: str) -> list[dict[str, Any]]:
        """``session``'s members, ordered by node and connection."""
        members = self._tenants.get(tenant_of(session), {}).get(session, {})
        return [
            {"client": client, "connection": conn, "node": node}
            for (node, conn), client in sorted(members.items())
        ]

    def apply(
        self, node: str, tenant: str, joins: Iterable[Entry], leaves: Iterable[Entry]
    ) -> list[PresenceEvent]:
        """Changes a node reported for one tenant; returns the events they make."""
        self._known.add((node, tenant))
        events = []
        for session, conn, _client in leaves:
            removed, client = self._remove(tenant, session, (node, conn))
            if removed:
                events.append(PresenceEvent("leave", session, node, conn, client))
        for session, conn, client in joins:
            if self._add(tenant, session, (node, conn), client):
                events.append(PresenceEvent("join", session, node, conn, client))
        return events

    def stage(self, node: str, tenant: str, entries: Iterable[Entry], first: bool) -> None:
        """Part of a node's full state for ``tenant`` (see :meth:`commit`)."""
        key = (node, tenant)
        staged = self._staging.get(key)
        if first or staged is None:
            staged = self._staging[key] = {}
        for session, conn, client in entries:
            if len(staged) >= MAX_STAGED:
                self.refused += 1
                break
            staged[(session, conn)] = client

    def commit(self, node: str, tenant: str) -> list[PresenceEvent]:
        """Replace ``node``'s members in ``tenant`` with what was staged. Events are made
        for the differences only if this board already held that node's state for the
        tenant; otherwise the state is adopted silently (an ownership change)."""
        key = (node, tenant)
        new = self._staging.pop(key, {})
        old = {
            (session, conn): client
            for session, members in self._tenants.get(tenant, {}).items()
            for (member_node, conn), client in members.items()
            if member_node == node
        }
        loud = key in self._known
        self._known.add(key)
        events = []
        for (session, conn), client in old.items():
            if (session, conn) not in new:
                self._remove(tenant, session, (node, conn))
                if loud:
                    events.append(PresenceEvent("leave", session, node, conn, client))
        for (session, conn), client in new.items():
            added = (session, conn) not in old and self._add(tenant, session, (node, conn), client)
            if added and loud:
                events.append(PresenceEvent("join", session, node, conn, client))
        return events

    def drop_node(self, node: str) -> list[PresenceEvent]:
        """``node`` left the cluster: its members leave."""
        events = []
        for tenant, sessions in list(self._tenants.items()):
            for session, members in list(sessions.items()):
                for key in [k for k in members if k[0] == node]:
                    _, client = self._remove(tenant, session, key)
                    events.append(PresenceEvent("leave", session, node, key[1], client))
        self._known = {pair for pair in self._known if pair[0] != node}
        for key in [k for k in self._staging if k[0] == node]:
            del self._staging[key]
        return events

    def drop_tenant(self, tenant: str) -> None:
        """Forget ``tenant`` silently (another node owns it now)."""
        sessions = self._tenants.pop(tenant, None)
        if sessions is not None:
            self._sessions -= len(sessions)
        self._known = {pair for pair in self._known if pair[1] != tenant}
        for key in [k for k in self._staging if k[1] == tenant]:
            del self._staging[key]

    def _add(self, tenant: str, session: str, key: MemberKey, client: str | None) -> bool:
        sessions = self._tenants.get(tenant)
        members = sessions.get(session) if sessions is not None else None
        if members is None:
            if self._sessions >= self.max_sessions:
                self.refused += 1
                return False
            if sessions is None:
                sessions = self._tenants[tenant] = {}
            members = sessions[session] = {}
            self._sessions += 1
        if key in members:
            members[key] = client
            return False
        if len(members) >= self.max_members:
            self.refused += 1
            return False
        members[key] = client
        return True

    def _remove(self, tenant: str, session: str, key: MemberKey) -> tuple[bool, str | None]:
        """``(whether key was a member, its client name)``."""
        sessions = self._tenants.get(tenant)
        members = sessions.get(session) if sessions is not None else None
        if sessions is None or members is None or key not in members:
            return False, None
        client = members.pop(key)
        if not members:
            del sessions[session]
            self._sessions -= 1
            if not sessions:
                del self._tenants[tenant]
        return True, client


# -- the service ---------------------------------------------------------------------------


class PresenceService:
    """One node's presence duties: report local changes, aggregate owned tenants, answer.

    ``owner`` maps a tenant to its owner node; ``send(node, data)`` sends a direct message
    (``None`` without a cluster: this node owns everything); ``on_change`` is called after
    the board changed."""

    def __init__(
        self,
        hub: Hub,
        *,
        owner: Callable[[str], str],
        send: Callable[[str, bytes], None] | None = None,
        on_change: Callable[[], None] | None = None,
        query_timeout: float = QUERY_TIMEOUT,
        max_sessions: int = MAX_SESSIONS,
        max_members: int = MAX_MEMBERS,
    ) -> None:
        self.hub = hub
        self.node_id = hub.node_id
        self.owner = owner
        self.send = send
        self.on_change = on_change
        self.query_timeout = query_timeout
        self.local = LocalPresence()
        self.board = PresenceBoard(max_sessions, max_members)
        self.source = f"ac://node/{hub.node_id}/presence"
        self._reported: dict[str, str] = {}
        """tenant -> the owner this node last sent that tenant's presence to."""
        self._pending: dict[int, asyncio.Future[list[dict[str, Any]]]] = {}
        self._ids = itertools.count(1)
        self.published = 0

    # -- local changes -------------------------------------------------------------------

    def tick(self) -> None:
        """Scan the local connections and report what changed to the owners."""
        joins, leaves = self.local.scan(self.hub.connections)
        for tenant in joins.keys() | leaves.keys():
            self._report(tenant, joins.get(tenant, []), leaves.get(tenant, []))

    def _report(self, tenant: str, joins: list[Entry], leaves: list[Entry]) -> None:
        owner = self.owner(tenant)
        self._reported[tenant] = owner
        if owner == self.node_id or self.send is None:
            self._publish(self.board.apply(self.node_id, tenant, joins, leaves))
            self._changed()
            return
        for start in range(0, max(len(joins), len(leaves)), BATCH):
            body = {
                "t": tenant,
                "op": "delta",
                "join": joins[start : start + BATCH],
                "leave": leaves[start : start + BATCH],
            }
            self.send(owner, KIND_UPDATE + b"\n" + orjson.dumps(body))

    def _sync(self, tenant: str, entries: list[Entry]) -> None:
        """Send this node's full presence in ``tenant`` to its owner."""
        owner = self.owner(tenant)
        if entries:
            self._reported[tenant] = owner
        else:
            self._reported.pop(tenant, None)
        if owner == self.node_id or self.send is None:
            self.board.stage(self.node_id, tenant, entries, first=True)
            self._publish(self.board.commit(self.node_id, tenant))
            self._changed()
            return
        chunks = [entries[i : i + BATCH] for i in range(0, len(entries), BATCH)] or [[]]
        for index, chunk in enumerate(chunks):
            body = {
                "t": tenant,
                "op": "sync",
                "first": index == 0,
                "last": index == len(chunks) - 1,
                "join": chunk,
            }
            self.send(owner, KIND_UPDATE + b"\n" + orjson.dumps(body))

    def ring_changed(self, old_owner: Callable[[str], str]) -> None:
        """The ring changed (``old_owner`` is the previous mapping): hand this node's
        presence to the new owners and forget the tenants this node no longer owns."""
        snapshot = self.local.snapshot()
        for tenant in snapshot.keys() | self._reported.keys():
            owner = self.owner(tenant)
            if old_owner(tenant) != owner or self._reported.get(tenant, owner) != owner:
                self._sync(tenant, snapshot.get(tenant, []))
        for tenant in self.board.tenants():
            if self.owner(tenant) != self.node_id:
                self.board.drop_tenant(tenant)
        self._changed()

    def resync(self) -> None:
        """Send this node's full presence to every owner (anti-entropy)."""
        snapshot = self.local.snapshot()
        for tenant in snapshot.keys() | self._reported.keys():
            self._sync(tenant, snapshot.get(tenant, []))

    def node_left(self, node: str) -> None:
        """``node`` left the cluster: its members leave the sessions this node owns."""
        self._publish(self.board.drop_node(node))
        self._changed()

    # -- messages from other nodes -------------------------------------------------------

    def on_direct(self, origin: str, kind: bytes, body: bytes) -> None:
        """Handle one presence message (``kind`` is one of :data:`KINDS`)."""
        try:
            data: Any = orjson.loads(body)
            if not isinstance(data, dict):
                raise ValueError("not an object")
            if kind == KIND_UPDATE:
                self._on_update(origin, data)
            elif kind == KIND_QUERY:
                self._on_query(origin, data)
            elif kind == KIND_ANSWER:
                self._on_answer(data)
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("dropping a malformed presence message from %s: %s", origin, exc)

    def _on_update(self, origin: str, data: dict[str, Any]) -> None:
        tenant = data["t"]
        if not isinstance(tenant, str):
            raise ValueError("bad tenant")
        joins = _entries(tenant, data.get("join"))
        if data.get("op") == "sync":
            self.board.stage(origin, tenant, joins, first=bool(data.get("first")))
            if data.get("last"):
                self._publish(self.board.commit(origin, tenant))
        else:
            self._publish(self.board.apply(origin, tenant, joins, _entries(tenant, data["leave"])))
        self._changed()

    def _on_query(self, origin: str, data: dict[str, Any]) -> None:
        session = data["s"]
        if not isinstance(session, str) or session_of(session) != session:
            raise ValueError("bad session")
        assert self.send is not None
        answer = {"r": data["r"], "m": self.board.members(session)}
        self.send(origin, KIND_ANSWER + b"\n" + orjson.dumps(answer))

    def _on_answer(self, data: dict[str, Any]) -> None:
        future = self._pending.get(data["r"]) if isinstance(data["r"], int) else None
        members = data["m"]
        if future is not None and not future.done() and isinstance(members, list):
            future.set_result(members)

    # -- queries -------------------------------------------------------------------------

    async def query(self, session: str) -> dict[str, Any]:
        """``{"session", "owner", "members"}`` from the owner of ``session``'s tenant.

        Raises :class:`Unavailable` if the owner does not answer within ``query_timeout``
        and :class:`Overloaded` if too many queries are waiting."""
        owner = self.owner(tenant_of(session))
        if owner == self.node_id or self.send is None:
            if self.send is None:
                self.tick()  # alone: answer from a fresh scan
            return {"session": session, "owner": owner, "members": self.board.members(session)}
        if len(self._pending) >= MAX_PENDING_QUERIES:
            raise Overloaded("too many presence queries are waiting")
        request_id = next(self._ids)
        future: asyncio.Future[list[dict[str, Any]]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            self.send(owner, KIND_QUERY + b"\n" + orjson.dumps({"r": request_id, "s": session}))
            async with asyncio.timeout(self.query_timeout):
                members = await future
        except TimeoutError:
            raise Unavailable(
                f"node {owner} (owner of {session!r}) did not answer within {self.query_timeout:g}s"
            ) from None
        finally:
            del self._pending[request_id]
        return {"session": session, "owner": owner, "members": members}

    # -- events --------------------------------------------------------------------------

    def _publish(self, events: list[PresenceEvent]) -> None:
        for event in events:
            cmd = Publish(None, presence_topic(event.session), event.payload(), ack=False)
            try:
                result = self.hub.publish_any(cmd, self.source)
            except AgentcastError as exc:
                log.warning("presence event on %s refused: %s", event.session, exc)
                continue
            self.published += 1
            if isinstance(result, asyncio.Future):
                result.add_done_callback(_log_failure)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    async def run(self, interval: float = STANDALONE_INTERVAL) -> None:
        """Scan every ``interval`` seconds until cancelled (a node without a cluster)."""
        while True:
            self.tick()
            await asyncio.sleep(interval)


def _entries(tenant: str, raw: Any) -> list[Entry]:
    """Validate members received from another node (entries of other tenants are skipped)."""
    if not isinstance(raw, list) or len(raw) > BATCH:
        raise ValueError("bad member list")
    out: list[Entry] = []
    for item in raw:
        if not isinstance(item, list) or len(item) != 3:
            continue
        session, conn, client = item
        if (
            isinstance(session, str)
            and session_of(session) == session
            and tenant_of(session) == tenant
            and isinstance(conn, str)
            and len(conn) <= MAX_NAME
            and (client is None or (isinstance(client, str) and len(client) <= MAX_NAME))
        ):
            out.append((session, conn, client))
    return out


def _log_failure(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("durable presence event failed: %s", future.exception())


_standalone: weakref.WeakKeyDictionary[Hub, PresenceService] = weakref.WeakKeyDictionary()


def presence_for(hub: Hub) -> PresenceService:
    """The presence service of ``hub``: its cluster link's, or (no cluster) a standalone one
    started on first use, scanning every :data:`STANDALONE_INTERVAL` in a hub-owned task."""
    if hub.cluster is not None:
        return hub.cluster.presence
    service = _standalone.get(hub)
    if service is None:
        node_id = hub.node_id
        service = _standalone[hub] = PresenceService(hub, owner=lambda _tenant: node_id)
        hub.spawn(service.run())
    return service
