"""Which live node owns each tenant's singleton duties (today: presence aggregation).

A :class:`TenantRing` is a consistent hashing ring (``uhashring``, md5 points, 160 virtual
nodes per member) over one set of live node ids. It is a pure function of that set: every
node that sees the same live members computes the same owner for every tenant, with no
coordination. When a member leaves or joins, only the tenants whose ring segment it held
(about ``1/n`` of them) change owner.

How fast duties move is bounded by membership, not by the ring: a node that dies stops
heartbeating and drops out of every survivor's live members after ``member_timeout``;
survivors check their members once per ``heartbeat_interval``; so a dead node's tenants
have a new owner within ``member_timeout + heartbeat_interval``. A node that joins is seen
at its first heartbeat, so its tenants move to it within ``heartbeat_interval`` (plus the
broker's delivery time). While views differ (the few heartbeats around a change) two nodes
may each think they own a tenant; duties built on the ring must tolerate that briefly.
"""

from __future__ import annotations

from collections.abc import Iterable

from uhashring import HashRing  # type: ignore[import-untyped]

VIRTUAL_NODES = 160
MAX_CACHED_OWNERS = 65_536


class TenantRing:
    """Tenant -> owner node over a fixed set of members (rebuild it when members change)."""

    __slots__ = ("_owners", "_ring", "members")

    def __init__(self, members: Iterable[str]) -> None:
        self.members: tuple[str, ...] = tuple(sorted(set(members)))
        if not self.members:
            raise ValueError("a ring needs at least one member")
        self._ring = HashRing(nodes=list(self.members), vnodes=VIRTUAL_NODES)
        self._owners: dict[str, str] = {}

    def owner(self, tenant: str) -> str:
        """The node that holds ``tenant``'s singleton duties."""
        owner = self._owners.get(tenant)
        if owner is None:
            alone = len(self.members) == 1
            owner = self.members[0] if alone else str(self._ring.get_node(tenant))
            if len(self._owners) >= MAX_CACHED_OWNERS:
                self._owners.clear()
            self._owners[tenant] = owner
        return owner

    def __contains__(self, node_id: object) -> bool:
        return node_id in self.members

    def __repr__(self) -> str:
        return f"TenantRing({list(self.members)!r})"
