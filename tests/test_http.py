from __future__ import annotations

import io

import aiohttp
import orjson

from agentcast.node import Node
from tests.wsclient import RawClient


async def test_http_publish_reaches_websocket_subscribers(node: Node) -> None:
    sub = await RawClient.open(node.ws_url)
    await sub.call("subscribe", topic="acme.run.>")
    async with aiohttp.ClientSession() as http:
        body = {
            "topic": "acme.run.chat",
            "payload": {"t": 1},
            "idempotency_key": "i1",
            "headers": {"k": "v"},
        }
        async with http.post(
            f"{node.http_url}/v1/publish", json=body, headers={"X-Agentcast-Client": "ci"}
        ) as resp:
            assert resp.status == 200
            first = await resp.json()
        async with http.post(f"{node.http_url}/v1/publish", json=body) as resp:
            again = await resp.json()
    event = await sub.next_event()
    assert event["id"] == first["id"] and event["source"] == "ac://http/ci"
    assert again["duplicate"] is True and again["seq"] == first["seq"]


async def test_http_publish_errors_use_protocol_codes(node: Node) -> None:
    cases = [
        (b"{", 400, "bad_json"),
        (b"[]", 400, "bad_json"),
        (orjson.dumps({"payload": 1}), 400, "missing_field"),
        (orjson.dumps({"topic": "acme.*"}), 400, "wildcard_publish"),
        (orjson.dumps({"topic": "a b"}), 400, "invalid_topic"),
        (
            orjson.dumps({"topic": "acme.a", "payload": "x" * (1024 * 1024)}),
            413,
            "payload_too_large",
        ),
        (b"x" * (2 * 1024 * 1024), 413, "payload_too_large"),
    ]
    async with aiohttp.ClientSession() as http:
        for body, status, code in cases:
            async with http.post(f"{node.http_url}/v1/publish", data=io.BytesIO(body)) as resp:
                assert resp.status == status, body[:40]
                assert (await resp.json())["error"]["code"] == code


async def test_health_readiness_and_metrics(node: Node) -> None:
    sub = await RawClient.open(node.ws_url)
    await sub.call("subscribe", topic="acme.a")
    await sub.call("publish", topic="acme.a", payload=1)
    await sub.next_event()
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{node.http_url}/healthz") as resp:
            assert resp.status == 200
        async with http.get(f"{node.http_url}/readyz") as resp:
            assert resp.status == 200
        node.ready = False
        async with http.get(f"{node.http_url}/readyz") as resp:
            assert resp.status == 503
        node.ready = True
        async with http.get(f"{node.http_url}/metrics") as resp:
            text = await resp.text()
    for line in (
        "agentcast_connections 1.0",
        "agentcast_subscriptions 1.0",
        "agentcast_publishes_total 1.0",
        "agentcast_deliveries_total 1.0",
        'agentcast_publish_to_write_seconds_bucket{le="+Inf"}',
        'agentcast_queue_length_bucket{le="+Inf"}',
        "process_cpu_seconds_total",
    ):
        assert line in text, line
