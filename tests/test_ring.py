"""The tenant ring: one owner per tenant, agreed by every node, moved when a node dies."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import replace
from random import Random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentcast.brokers.memory import LocalBus, MemoryBroker
from agentcast.config import ServerConfig
from agentcast.hub.cluster import ClusterLink
from agentcast.hub.ring import TenantRing
from agentcast.node import Node

TENANTS = [f"tenant-{n}" for n in range(300)]
node_ids = st.lists(st.from_regex(r"n[a-z0-9]{1,8}", fullmatch=True), min_size=1, max_size=6)


@given(node_ids, st.randoms())
def test_the_owner_depends_only_on_the_member_set(members: list[str], rnd: Random) -> None:
    shuffled = list(members)
    rnd.shuffle(shuffled)
    a, b = TenantRing(members), TenantRing(shuffled + members[:1])
    for tenant in TENANTS[:50]:
        assert a.owner(tenant) == b.owner(tenant)
        assert a.owner(tenant) in set(members)


def test_removing_a_member_moves_only_its_tenants() -> None:
    full = TenantRing(["a", "b", "c"])
    owners = {t: full.owner(t) for t in TENANTS}
    assert set(owners.values()) == {"a", "b", "c"}
    without_c = TenantRing(["a", "b"])
    for tenant, owner in owners.items():
        if owner != "c":
            assert without_c.owner(tenant) == owner
        else:
            assert without_c.owner(tenant) in {"a", "b"}


def test_a_lone_member_owns_everything_and_an_empty_ring_is_refused() -> None:
    ring = TenantRing(["solo"])
    assert {ring.owner(t) for t in TENANTS} == {"solo"}
    assert "solo" in ring and "other" not in ring
    with pytest.raises(ValueError):
        TenantRing([])


@pytest.fixture
async def cluster() -> AsyncIterator[list[Node]]:
    bus = LocalBus()
    config = ServerConfig(port=0, http_port=0, cluster_heartbeat=0.05, member_timeout=0.5)
    async with AsyncExitStack() as stack:
        nodes = []
        for name in "abc":
            node = Node(replace(config, node_id=name), broker=MemoryBroker(bus))
            await stack.enter_async_context(node)
            nodes.append(node)
        yield nodes


def link_of(node: Node) -> ClusterLink:
    assert node.hub is not None and node.hub.cluster is not None
    return node.hub.cluster


async def settle(link: ClusterLink, predicate: Callable[[], bool]) -> None:
    """Wait, at most 10 s, until ``predicate`` holds after some change of ``link``'s state."""
    async with asyncio.timeout(10):
        await link.wait_until(predicate)


async def converge(nodes: list[Node]) -> None:
    """Wait until every node's ring holds exactly ``nodes``."""
    expected = tuple(sorted(n.node_id for n in nodes))
    for node in nodes:
        link = link_of(node)
        await settle(link, lambda link=link: link.ring.members == expected)


async def test_every_tenant_has_one_owner_that_moves_when_its_node_dies(
    cluster: list[Node],
) -> None:
    await converge(cluster)
    links = [link_of(n) for n in cluster]
    for tenant in TENANTS:
        assert sum(link.owns(tenant) for link in links) == 1
        assert len({link.owner(tenant) for link in links}) == 1
    before = {t: links[0].owner(t) for t in TENANTS}
    orphaned = [t for t, owner in before.items() if owner == "c"]
    assert orphaned, "node c owns some tenants"

    await cluster[2].stop()  # its broker leaves the bus and it stops heartbeating
    survivors = cluster[:2]
    await converge(survivors)
    links = [link_of(n) for n in survivors]
    for tenant in TENANTS:
        owners = {link.owner(tenant) for link in links}
        assert len(owners) == 1
        assert sum(link.owns(tenant) for link in links) == 1
        if tenant in orphaned:
            assert owners <= {"a", "b"}
        else:
            assert owners == {before[tenant]}  # the survivors' tenants stay where they were


async def test_a_node_that_joins_takes_its_share(cluster: list[Node]) -> None:
    await converge(cluster)
    bus = cluster[0].broker
    assert isinstance(bus, MemoryBroker)
    config = replace(cluster[0].config, node_id="d")
    async with Node(config, broker=MemoryBroker(bus.bus)) as late:
        everyone = [*cluster, late]
        await converge(everyone)
        links = [link_of(n) for n in everyone]
        for tenant in TENANTS:
            assert sum(link.owns(tenant) for link in links) == 1
        assert any(link_of(late).owns(t) for t in TENANTS)
