"""Consumer groups across a cluster: each group runs on its tenant's ring owner.

A member that connects to another node joins *remotely*: its node forwards the join, acks,
nacks and leave to the owner, and the owner sends that member's deliveries back through
the broker (direct messages, kind ``g``). So every group has exactly one runner in the
cluster, and "one member at a time per event" holds across nodes. When the ring moves a
tenant (a node died or joined), memberships follow the new owner: local runners of tenants
this node no longer owns are retired (their progress is saved) and their members re-join
remotely, remote members re-join the new owner, and an owner drops the remote members of
nodes that left. Deliveries in flight at the old owner are redelivered by the new one from
the saved ack floor (at-least-once, as everywhere in groups).

Across nodes an ack or nack is answered at once by the member's node (the owner's
``not_in_flight`` check happens there and is not reported back).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import orjson

from agentcast.hub.groups import GroupSettings
from agentcast.protocol.topics import tenant_of

if TYPE_CHECKING:
    from agentcast.hub.cluster import ClusterLink
    from agentcast.hub.connection import Connection
    from agentcast.hub.consumer_groups import GroupManager

log = logging.getLogger(__name__)

KIND_GROUP = b"g"  # the same kind byte as hub.cluster.KIND_GROUP

Key = tuple[str, str]


@dataclass(frozen=True, slots=True)
class RemoteRef:
    """A group member connected to another node (the owner's view of it)."""

    node: str
    conn_id: str


@dataclass(slots=True)
class RemoteJoin:
    """A local connection's membership of a group run elsewhere."""

    owner: str
    settings: GroupSettings


class GroupRelay:
    """Both sides of remote memberships for one node."""

    def __init__(self, groups: GroupManager, link: ClusterLink) -> None:
        self.groups = groups
        self.link = link
        self.remote: dict[Key, dict[str, RemoteJoin]] = {}  # key -> conn id -> join

    # -- member side ---------------------------------------------------------------------

    def is_remote(self, key: Key) -> bool:
        """Whether ``key``'s group runs on another node."""
        return not self.link.owns(tenant_of(key[0]))

    def join(self, conn: Connection, key: Key, settings: GroupSettings) -> None:
        owner = self.link.owner(tenant_of(key[0]))
        self.remote.setdefault(key, {})[conn.id] = RemoteJoin(owner, settings)
        self._send(owner, "join", key, conn.id, settings=asdict(settings))

    def holds(self, conn: Connection, key: Key) -> bool:
        return conn.id in self.remote.get(key, {})

    def ack(self, conn: Connection, key: Key, seq: int) -> None:
        self._send(self.remote[key][conn.id].owner, "ack", key, conn.id, seq=seq)

    def nack(self, conn: Connection, key: Key, seq: int, delay: float, reason: str) -> None:
        owner = self.remote[key][conn.id].owner
        self._send(owner, "nack", key, conn.id, seq=seq, delay=delay, reason=reason)

    def leave(self, conn: Connection, key: Key) -> None:
        joins = self.remote.get(key, {})
        join = joins.pop(conn.id, None)
        if not joins:
            self.remote.pop(key, None)
        if join is not None:
            self._send(join.owner, "leave", key, conn.id)

    # -- owner side ----------------------------------------------------------------------

    def deliver(self, ref: RemoteRef, key: Key, frame: bytes) -> None:
        """Send a delivery frame to a member on another node."""
        message = (
            KIND_GROUP
            + b"\n"
            + orjson.dumps({"op": "deliver", "topic": key[0], "group": key[1], "conn": ref.conn_id})
            + b"\n"
            + frame
        )
        self.link.broker.send_to(ref.node, message)

    def on_direct(self, origin: str, body: bytes) -> None:
        head, _, frame = body.partition(b"\n")
        try:
            message: dict[str, Any] = orjson.loads(head)
            key = (str(message["topic"]), str(message["group"]))
            conn_id = str(message["conn"])
            op = message["op"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.warning("dropping a malformed group message from %s", origin)
            return
        groups = self.groups
        ref = RemoteRef(origin, conn_id)
        if op == "deliver":
            conn = groups.hub.connections.get(conn_id)
            if conn is not None and self.holds(conn, key):
                conn.send_control(frame)
            else:
                self._send(origin, "leave", key, conn_id)
        elif op == "join":
            settings = GroupSettings(**message.get("settings", {}))
            groups.hub.spawn(groups.join_remote(ref, key, settings))
        elif op == "ack":
            groups.ack_remote(ref, key, int(message["seq"]))
        elif op == "nack":
            groups.nack_remote(
                ref,
                key,
                int(message["seq"]),
                float(message.get("delay", 0)),
                str(message.get("reason", "")),
            )
        elif op == "leave":
            groups.leave_remote(ref, key)

    # -- ring changes --------------------------------------------------------------------

    def ring_changed(self, live: set[str]) -> None:
        """Follow the new owners: see the module docstring."""
        groups = self.groups
        groups.drop_remote_members(lambda ref: ref.node not in live)
        moved = groups.local_members_not_owned()
        settings_of = {key: groups.runners[key].group.settings for key, _ in moved}
        for key, conn in moved:
            settings = settings_of[key]
            groups.leave(conn, key)
            conn.groups[key] = groups.placeholder(conn)
            self.join(conn, key, settings)
        for key, joins in list(self.remote.items()):
            owner = self.link.owner(tenant_of(key[0]))
            for conn_id, join in list(joins.items()):
                if join.owner == owner:
                    continue
                member_conn = groups.hub.connections.get(conn_id)
                if member_conn is None:
                    del joins[conn_id]
                    continue
                if owner == self.link.hub.node_id:
                    del joins[conn_id]
                    member_conn.groups.pop(key, None)
                    groups.hub.spawn(self._join_here(member_conn, key, join.settings))
                else:
                    join.owner = owner
                    self._send(owner, "join", key, conn_id, settings=asdict(join.settings))
            if not joins:
                self.remote.pop(key, None)

    async def _join_here(self, conn: Connection, key: Key, settings: GroupSettings) -> None:
        await self.groups.join_local(conn, key, settings)

    def _send(self, node: str, op: str, key: Key, conn_id: str, **fields: Any) -> None:
        head = {"op": op, "topic": key[0], "group": key[1], "conn": conn_id, **fields}
        self.link.broker.send_to(node, KIND_GROUP + b"\n" + orjson.dumps(head))
