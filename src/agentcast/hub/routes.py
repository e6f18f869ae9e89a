"""Direct addressing: the cluster's routing table of inboxes.

An **inbox** is an exact topic of three segments, ``<tenant>.inbox.<client>``. A node
*holds* an inbox while at least one of its connections (or consumer-group members) is
subscribed to exactly that topic. A publication to an inbox goes, through
:meth:`~agentcast.brokers.base.Broker.send_to`, only to the nodes that hold it, never to
every node; if no node holds it the publish is refused with ``no_route``
(:class:`NoRoute`).

Replication: every node announces the inboxes it holds to every other live node in small
batched route messages (:func:`encode_routes`): at once when it starts or stops holding
one, in full to a node it hears from for the first time, and in full again every
``resync_interval`` (``hub/cluster.py``; ``ttl / 3`` by default). A receiver keeps each
``inbox -> node`` entry until ``ttl`` seconds after its last announcement, until the node
withdraws it, or until the node leaves the cluster's live members, whichever comes first.
The table is bounded (``max_routes`` inboxes; past it the least recently announced inbox is
forgotten and counted in ``evicted``); expired entries are ignored at lookup and reclaimed
by :meth:`RouteTable.sweep`.

A node learns of a new inbox one broker hop after the subscription: a publish to it from
another node in that window is refused with ``no_route``, and the client retries.

The lookup on the publish path is one dict access plus a clock read.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from itertools import islice
from typing import Any

import orjson

from agentcast.errors import ProtocolError
from agentcast.protocol.topics import MAX_TOPIC_LENGTH

INBOX_SEGMENT = "inbox"
DEFAULT_TTL = 30.0
MAX_ROUTES = 262_144
ROUTE_BATCH = 256
"""Inboxes per route message (a message stays well under any broker's size limit)."""
MAX_TTL = 3_600.0
SWEEP_BUDGET = 4_096
"""Inboxes :meth:`RouteTable.sweep` looks at per call (it runs once per heartbeat)."""


class NoRoute(ProtocolError):
    """No node holds the inbox a publication is addressed to."""

    code = "no_route"


def is_inbox(topic: str) -> bool:
    """Whether ``topic`` (a valid topic or pattern) is an inbox: ``<tenant>.inbox.<client>``
    with an exact client segment. Cheap enough for every publish."""
    dot = topic.find(".")
    return (
        dot > 0
        and topic.startswith("inbox.", dot + 1)
        and topic.count(".") == 2
        and not topic.endswith((".*", ".>"))
    )


class RouteTable:
    """One node's view of which nodes hold which inboxes (its own included)."""

    def __init__(
        self,
        node_id: str,
        *,
        ttl: float = DEFAULT_TTL,
        max_routes: int = MAX_ROUTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < ttl <= MAX_TTL:
            raise ValueError(f"route ttl must be in (0, {MAX_TTL:g}] seconds")
        self.node_id = node_id
        self.ttl = ttl
        self.max_routes = max_routes
        self.clock = clock
        self.local: set[str] = set()
        """Inboxes this node holds."""
        self._remote: dict[str, dict[str, float]] = {}
        """inbox -> {node id: expiry}, least recently announced inbox first."""
        self._added: set[str] = set()
        self._removed: set[str] = set()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._remote)

    # -- this node's inboxes -----------------------------------------------------------

    def hold(self, inbox: str) -> None:
        """This node now holds ``inbox`` (announced with the next :meth:`take_changes`)."""
        self.local.add(inbox)
        self._removed.discard(inbox)
        self._added.add(inbox)

    def release(self, inbox: str) -> None:
        """This node no longer holds ``inbox``."""
        self.local.discard(inbox)
        self._added.discard(inbox)
        self._removed.add(inbox)

    def take_changes(self) -> tuple[list[str], list[str]]:
        """The inboxes held and released since the last call: ``(added, removed)``."""
        added, removed = sorted(self._added), sorted(self._removed)
        self._added.clear()
        self._removed.clear()
        return added, removed

    # -- lookups -----------------------------------------------------------------------

    def remote_holders(self, inbox: str) -> list[str]:
        """The other nodes holding ``inbox`` whose announcement has not expired."""
        nodes = self._remote.get(inbox)
        if not nodes:
            return []
        now = self.clock()
        return [node for node, expires in nodes.items() if expires > now]

    def holders(self, inbox: str) -> list[str]:
        """Every node holding ``inbox``, this one first if it does."""
        mine = [self.node_id] if inbox in self.local else []
        return mine + self.remote_holders(inbox)

    # -- other nodes' announcements ----------------------------------------------------

    def apply(self, origin: str, added: Iterable[str], removed: Iterable[str], ttl: float) -> None:
        """Record an announcement from node ``origin``."""
        if origin == self.node_id:
            return
        remote = self._remote
        for inbox in removed:
            nodes = remote.get(inbox)
            if nodes is not None and nodes.pop(origin, None) is not None and not nodes:
                del remote[inbox]
        expires = self.clock() + min(ttl, MAX_TTL)
        for inbox in added:
            nodes = remote.pop(inbox, None)
            if nodes is None:
                if len(remote) >= self.max_routes:
                    del remote[next(iter(remote))]
                    self.evicted += 1
                nodes = {}
            nodes[origin] = expires
            remote[inbox] = nodes  # re-inserted last: the table stays in announcement order

    def drop_node(self, node_id: str) -> int:
        """Forget every inbox ``node_id`` held (it left the cluster); returns how many."""
        dropped = 0
        for inbox in list(self._remote):
            nodes = self._remote[inbox]
            if nodes.pop(node_id, None) is not None:
                dropped += 1
                if not nodes:
                    del self._remote[inbox]
        return dropped

    def sweep(self, budget: int = SWEEP_BUDGET) -> int:
        """Reclaim expired entries, least recently announced inboxes first, looking at no
        more than ``budget`` inboxes and stopping at the first one with nothing expired
        (the inboxes after it were announced later); returns how many entries went."""
        now = self.clock()
        removed = 0
        remote = self._remote
        for inbox in list(islice(remote, budget)):
            nodes = remote[inbox]
            expired = [node for node, expires in nodes.items() if expires <= now]
            if not expired:
                break
            for node in expired:
                del nodes[node]
            removed += len(expired)
            if not nodes:
                del remote[inbox]
        return removed


def encode_routes(added: list[str], removed: list[str], ttl: float) -> list[bytes]:
    """Route messages (JSON bodies) announcing ``added`` and withdrawing ``removed``, at
    most :data:`ROUTE_BATCH` inboxes each; none when both are empty."""
    messages = []
    for start in range(0, len(removed), ROUTE_BATCH):
        batch = removed[start : start + ROUTE_BATCH]
        messages.append(orjson.dumps({"ttl": ttl, "add": [], "del": batch}))
    for start in range(0, len(added), ROUTE_BATCH):
        batch = added[start : start + ROUTE_BATCH]
        messages.append(orjson.dumps({"ttl": ttl, "add": batch, "del": []}))
    return messages


def decode_routes(body: bytes) -> tuple[list[str], list[str], float]:
    """The inverse of :func:`encode_routes`; raises ``ValueError`` on a malformed message
    (an entry that is not an inbox is skipped)."""
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"route message is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("route message is not an object")
    ttl = data.get("ttl")
    added, removed = data.get("add"), data.get("del")
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl <= MAX_TTL:
        raise ValueError("route message has no valid ttl")
    if not isinstance(added, list) or not isinstance(removed, list):
        raise ValueError("route message needs 'add' and 'del' lists")
    if len(added) > ROUTE_BATCH or len(removed) > ROUTE_BATCH:
        raise ValueError("route message is too large")
    return _inboxes(added), _inboxes(removed), float(ttl)


def _inboxes(items: list[Any]) -> list[str]:
    return [
        item
        for item in items
        if isinstance(item, str) and len(item) <= MAX_TOPIC_LENGTH and is_inbox(item)
    ]
