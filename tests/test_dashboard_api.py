"""The dashboard's HTTP side: /v1/stats, the static files, and the hub observer feeding it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agentcast.config import ServerConfig
from agentcast.dashboard import DASHBOARD_CLIENT, TopicTraffic, dashboard_url
from agentcast.dashboard.rates import NodeSampler
from agentcast.dashboard.snapshot import quantile, session_of
from agentcast.hub.durability import DurableRule
from agentcast.hub.stats import HubStats
from agentcast.node import Node
from agentcast.security.apikeys import mint_api_key
from agentcast.security.config import AuthMode, SecurityConfig
from tests.wsclient import RawClient

REPO = Path(__file__).resolve().parent.parent


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- pure parts ----------------------------------------------------------------------------


def test_topic_rates_count_the_window_and_forget_old_seconds() -> None:
    clock = FakeClock(1000.0)
    traffic = TopicTraffic(span=10, clock=clock)
    for _ in range(20):
        traffic("acme.s1.chat", b"{}")
    clock.now = 1005.0
    for _ in range(10):
        traffic("acme.s1.chat", b"{}")
    traffic("acme.s1.log", b"{}")
    rates = {row.topic: row for row in traffic.rates(1009.5)}
    # The chat was first seen 9.5 s ago: 30 publications over 9.5 s.
    assert rates["acme.s1.chat"].rate == pytest.approx(30 / 9.5)
    assert rates["acme.s1.chat"].total == 30
    # The log was first seen 4.5 s ago: one publication over 4.5 s.
    assert rates["acme.s1.log"].rate == pytest.approx(1 / 4.5)
    # 1000 has left the window ending at 1010.5 (seconds 1001..1010): only the 10 remain.
    assert traffic.rates(1010.5)[0].rate == pytest.approx(10 / 9.5)
    later = {row.topic: row for row in traffic.rates(1030.0)}
    assert later["acme.s1.chat"].rate == 0.0
    assert later["acme.s1.chat"].total == 30


def test_topic_counters_are_bounded_and_forget_the_least_recent() -> None:
    clock = FakeClock()
    traffic = TopicTraffic(max_topics=3, clock=clock)
    for topic in ("a.b.one", "a.b.two", "a.b.three", "a.b.one", "a.b.four"):
        traffic(topic, b"{}")
    assert len(traffic) == 3
    assert traffic.topics() == ["a.b.three", "a.b.one", "a.b.four"]
    assert traffic.forgotten == 1
    with pytest.raises(ValueError):
        TopicTraffic(max_topics=0)


def test_the_sampler_rates_counters_over_the_window() -> None:
    stats = HubStats()
    sampler = NodeSampler(stats, 0.0, window=5.0, min_gap=0.25, max_samples=8)
    stats.publishes = 50
    stats.deliveries = 200
    stats.write_latency.observe(0.0003)
    first = sampler.sample(2.0)
    assert first.publishes == pytest.approx(25.0)
    assert first.deliveries == pytest.approx(100.0)
    assert sum(first.latency) == 1
    stats.publishes = 150
    rates = sampler.sample(10.0)
    # The newest sample at least 5 s old is the one at 2.0 (50 publishes).
    assert rates.window == pytest.approx(8.0)
    assert rates.publishes == pytest.approx(100 / 8.0)
    for step in range(40):
        sampler.sample(10.0 + step)
    assert len(sampler) == 8


def test_session_of_and_quantile() -> None:
    assert session_of("acme.run-1.chat") == "acme.run-1"
    assert session_of("acme.run-1.>") == "acme.run-1"
    assert session_of("acme.run-1") is None
    assert session_of("acme.*.chat") is None
    assert session_of("acme.>") is None
    bounds = (0.001, 0.01, 0.1)
    assert quantile(bounds, [0, 0, 0, 0], 0.5) is None
    assert quantile(bounds, [1, 8, 1, 0], 0.5) == 0.01
    assert quantile(bounds, [1, 0, 0, 9], 0.99) == 0.1


def test_dashboard_url_names_the_websocket_only_when_needed() -> None:
    assert dashboard_url("http://127.0.0.1:8766", "ws://127.0.0.1:8765/v1/ws") == (
        "http://127.0.0.1:8766/dashboard"
    )
    assert dashboard_url("http://127.0.0.1:4000", "ws://127.0.0.1:5000/v1/ws") == (
        "http://127.0.0.1:4000/dashboard?ws=ws://127.0.0.1:5000/v1/ws"
    )


# -- against a node ------------------------------------------------------------------------


@pytest.fixture
async def dnode() -> AsyncIterator[Node]:
    config = ServerConfig(
        port=0,
        http_port=0,
        history="memory",
        durable=(DurableRule("acme.*.log"),),
        retention_interval=3600,
    )
    async with Node(config) as node:
        yield node


async def get_stats(node: Node) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{node.http_url}/v1/stats") as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("application/json")
        body: dict[str, Any] = await response.json()
        return body


async def test_stats_report_sessions_agents_topics_and_latency(dnode: Node) -> None:
    planner = await RawClient.open(dnode.ws_url, "s1.planner")
    coder = await RawClient.open(dnode.ws_url, "coder")
    watcher = await RawClient.open(dnode.ws_url, "watcher")
    page = await RawClient.open(dnode.ws_url, DASHBOARD_CLIENT)
    clients = (planner, coder, watcher, page)
    try:
        await planner.call("subscribe", topic="acme.s1.chat")
        await coder.call("subscribe", topic="acme.s1.agent.coder.inbox")
        await watcher.call("subscribe", topic="acme.s1.>")
        await page.call("subscribe", topic="acme.s1.>")
        await coder.call("subscribe", topic="other.s9.chat")
        for n in range(5):
            assert (await coder.call("publish", topic="acme.s1.chat", payload={"n": n}))["ok"]
        await planner.call("publish", topic="acme.s1.agent.coder.inbox", payload="hi")
        assert (await planner.call("publish", topic="acme.s1.log", payload="stored"))["ok"]
        for _ in range(7):
            await watcher.next_event()
        for _ in range(5):
            await planner.next_event()
        stats = await get_stats(dnode)
    finally:
        for client in clients:
            await client.close()

    assert stats["node"] == dnode.node_id
    assert stats["uptime"] >= 0
    assert stats["totals"]["connections"] == 4
    assert stats["totals"]["publishes"] == 7
    assert stats["rates"]["publishes"] > 0
    assert stats["rates"]["deliveries"] > 0
    assert stats["durable"] == ["acme.*.log"]

    sessions = {session["id"]: session for session in stats["sessions"]}
    assert set(sessions) == {"acme.s1", "other.s9"}
    s1 = sessions["acme.s1"]
    agents = {agent["name"]: agent for agent in s1["agents"]}
    # "s1.planner" is shown without its session prefix; the page itself is not an agent.
    assert set(agents) == {"planner", "coder", "watcher"}
    assert agents["watcher"]["observer"] is True
    assert agents["planner"]["observer"] is False
    assert agents["planner"]["client"] == "s1.planner"
    assert agents["coder"]["topics"] == ["acme.s1.agent.coder.inbox"]
    assert (s1["agent_count"], s1["observer_count"]) == (2, 1)
    topics = {row["topic"]: row for row in s1["topics"]}
    assert topics["acme.s1.chat"]["total"] == 5
    assert topics["acme.s1.chat"]["rate"] > 0
    assert topics["acme.s1.log"]["durable"] is True
    assert topics["acme.s1.chat"]["durable"] is False
    assert s1["publishes"] == 7
    assert s1["publish_rate"] > 0
    assert [agent["name"] for agent in sessions["other.s9"]["agents"]] == ["coder"]

    assert stats["topics"][0]["topic"] == "acme.s1.chat"
    clients = {row["client"] for row in stats["connections"]["shown"]}
    assert clients == {"s1.planner", "coder", "watcher", DASHBOARD_CLIENT}
    latency = stats["latency"]
    assert len(latency["counts"]) == len(latency["bounds"]) + 1
    assert sum(latency["counts"]) == latency["count"] > 0
    assert sum(latency["recent"]) > 0
    assert latency["p50"] is not None
    assert len(stats["queues"]["counts"]) == len(stats["queues"]["bounds"]) + 1


async def test_the_observer_sees_each_publication_once_not_duplicates(dnode: Node) -> None:
    assert dnode.hub is not None
    seen: list[tuple[str, bytes]] = []
    traffic = dnode.hub.observer
    assert isinstance(traffic, TopicTraffic)

    def record(topic: str, envelope: bytes) -> None:
        seen.append((topic, envelope))

    dnode.hub.observer = record
    client = await RawClient.open(dnode.ws_url)
    try:
        replies = [
            await client.call("publish", topic=topic, payload=1, idempotency_key=key)
            for topic, key in [
                ("acme.s2.chat", "k1"),
                ("acme.s2.log", "k2"),
                ("acme.s2.chat", "k1"),
                ("acme.s2.log", "k2"),
            ]
        ]
    finally:
        await client.close()
    live, stored, again, again_stored = (reply["result"] for reply in replies)
    assert again["duplicate"] and again_stored["duplicate"]
    assert [topic for topic, _ in seen] == ["acme.s2.chat", "acme.s2.log"]
    assert live["id"].encode() in seen[0][1] and stored["id"].encode() in seen[1][1]


async def test_the_page_its_files_and_the_client_module_are_served(dnode: Node) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{dnode.http_url}/dashboard") as response:
            assert response.status == 200
            assert response.content_type == "text/html"
            page = await response.text()
        assert 'src="dashboard/static/dashboard.js"' in page
        async with http.get(f"{dnode.http_url}/dashboard/static/dashboard.js") as response:
            assert response.status == 200
            assert "javascript" in response.content_type
            assert "../../clients/agentcast.js" in await response.text()
        async with http.get(f"{dnode.http_url}/dashboard/static/dashboard.css") as response:
            assert response.status == 200
        async with http.get(f"{dnode.http_url}/clients/agentcast.js") as response:
            assert response.status == 200
            assert response.content_type == "text/javascript"
            served = await response.read()
        async with http.get(f"{dnode.http_url}/dashboard/?ws=x", allow_redirects=False) as response:
            assert response.status == 308
            assert response.headers["Location"] == "/dashboard?ws=x"
        async with http.get(f"{dnode.http_url}/dashboard/static/missing.js") as response:
            assert response.status == 404
    # The node serves the same client module as clients/js/agentcast.js.
    assert served == (REPO / "clients" / "js" / "agentcast.js").read_bytes()


async def test_stats_need_an_admin_api_key_when_auth_is_on() -> None:
    admin = mint_api_key("ops", {}, admin=True)
    tenant = mint_api_key("acme", {"acme.>": ["publish"]})
    security = SecurityConfig(
        auth=AuthMode.TOKEN,
        jwt_secrets=("a-secret-for-the-dashboard-tests-0123456789",),
        api_keys=(admin.entry, tenant.entry),
    )
    config = ServerConfig(port=0, http_port=0, security=security)
    async with Node(config) as node, aiohttp.ClientSession() as http:
        url = f"{node.http_url}/v1/stats"
        async with http.get(url) as response:
            assert response.status == 401
            assert response.headers["WWW-Authenticate"] == "Bearer"
            assert (await response.json())["error"]["code"] == "unauthorized"
        headers = {"Authorization": f"Bearer {tenant.key}"}
        async with http.get(url, headers=headers) as response:
            assert response.status == 403
            assert (await response.json())["error"]["code"] == "forbidden"
        headers = {"Authorization": f"Bearer {admin.key}"}
        async with http.get(url, headers=headers) as response:
            assert response.status == 200
            assert (await response.json())["node"] == node.node_id
