"""Security enforced by a real node: tokens, capabilities and tenants on every command,
Origin, limits, API keys, TLS and token refresh."""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from agentcast.config import ServerConfig
from agentcast.hub.durability import DurableRule
from agentcast.node import Node
from agentcast.security.apikeys import mint_api_key
from agentcast.security.config import parse_security_config
from tests.security.support import write_self_signed
from tests.wsclient import RawClient

SECRET = "test-secret-that-is-long-enough-for-hs256"


def token(
    sub: str = "planner-1",
    tenant: str = "acme",
    ttl: float = 3600,
    caps: dict[str, list[str]] | None = None,
) -> str:
    claims = {
        "sub": sub,
        "tenant": tenant,
        "exp": int(time.time() + ttl),
        "caps": caps if caps is not None else {"acme.run-1.>": ["publish", "subscribe", "history"]},
    }
    return jwt.encode(claims, SECRET, algorithm="HS256")


def secure_config(**security: Any) -> ServerConfig:
    values = {"auth": "token", "jwt_secrets": [SECRET], **security}
    return ServerConfig(
        port=0,
        http_port=0,
        security=parse_security_config(values),
        history="memory",
        durable=(DurableRule("acme.run-1.log"),),
    )


@pytest.fixture
async def snode() -> AsyncIterator[Node]:
    async with Node(secure_config()) as node:
        yield node


async def closed_with(client: RawClient) -> int | None:
    with pytest.raises(ConnectionClosed) as info:
        while True:
            await client.ws.recv()
    return None if info.value.rcvd is None else info.value.rcvd.code


async def test_hello_without_or_with_a_bad_token_is_refused_and_closed(snode: Node) -> None:
    for bad in (None, "not-a-jwt", token(ttl=-60), jwt.encode({"sub": "x"}, "w" * 40, "HS256")):
        client = await RawClient.open(snode.ws_url, hello=False)
        fields = {} if bad is None else {"token": bad}
        reply = await client.call("hello", **fields)
        assert reply["error"]["code"] == "unauthorized"
        assert await closed_with(client) == 4502


async def test_capabilities_and_tenant_are_checked_on_every_command(snode: Node) -> None:
    client = await RawClient.open(snode.ws_url, hello=False)
    reply = await client.call("hello", token=token())
    assert reply["ok"] and reply["result"]["principal"]["tenant"] == "acme"
    ok = await client.call("subscribe", topic="acme.run-1.>")
    assert ok["ok"]
    for topic in ("acme.run-2.x", "other.run-1.x", ">", "*.run-1.>", "acme.>"):
        reply = await client.call("subscribe", topic=topic)
        assert reply["error"]["code"] == "forbidden", topic
    for topic in ("acme.run-2.x", "other.run-1.x"):
        reply = await client.call("publish", topic=topic, payload=1)
        assert reply["error"]["code"] == "forbidden", topic
    reply = await client.call("publish", topic="acme.run-1.chat", payload=1)
    assert reply["ok"]
    assert (await client.next_event())["payload"] == 1
    reply = await client.call(
        "subscribe", topic="acme.run-1.log", group="g", dead_letter_topic="other.dead"
    )
    assert reply["error"]["code"] == "forbidden"


async def test_history_needs_its_own_capability(snode: Node) -> None:
    reader = await RawClient.open(snode.ws_url, hello=False)
    caps = {"acme.run-1.>": ["subscribe", "publish"]}
    assert (await reader.call("hello", token=token(caps=caps)))["ok"]
    reply = await reader.call("subscribe", topic="acme.run-1.log", last=5)
    assert reply["error"]["code"] == "forbidden"
    resumed = await RawClient.open(snode.ws_url, hello=False)
    reply = await resumed.call(
        "hello", token=token(caps=caps), resume={"acme.run-1.log": {"epoch": "e", "seq": 0}}
    )
    assert reply["result"]["resume"]["acme.run-1.log"]["error"]["code"] == "forbidden"


async def test_token_in_the_url_query(snode: Node) -> None:
    client = RawClient(await connect(f"{snode.ws_url}?token={token()}"))
    assert (await client.call("hello"))["ok"]
    with pytest.raises(InvalidStatus) as info:
        await connect(f"{snode.ws_url}?token=forged")
    assert info.value.response.status_code == 401


async def test_expired_connection_is_closed_and_refresh_keeps_it_open(snode: Node) -> None:
    short = await RawClient.open(snode.ws_url, hello=False)
    assert (await short.call("hello", token=token(ttl=1.5)))["ok"]
    kept = await RawClient.open(snode.ws_url, hello=False)
    assert (await kept.call("hello", token=token(ttl=1.5)))["ok"]
    await kept.call("subscribe", topic="acme.run-1.a")
    await kept.call("subscribe", topic="acme.run-1.b")
    narrower = token(ttl=3600, caps={"acme.run-1.a": ["subscribe"]})
    reply = await kept.call("refresh", token=narrower)
    assert reply["ok"] and reply["result"]["revoked"] == ["acme.run-1.b"]
    grouped = await RawClient.open(snode.ws_url, hello=False)
    assert (await grouped.call("hello", token=token()))["ok"]
    assert (await grouped.call("subscribe", topic="acme.run-1.log", group="g"))["ok"]
    reply = await grouped.call("refresh", token=narrower)
    assert reply["result"]["revoked"] == ["acme.run-1.log#g"]
    reply = await grouped.call("ack", topic="acme.run-1.log", group="g", seq=1)
    assert reply["error"]["code"] == "not_in_flight"
    mismatch = await kept.call("refresh", token=token(sub="someone-else"))
    assert mismatch["error"]["code"] == "unauthorized"
    assert await closed_with(short) == 4004
    assert (await kept.call("ping"))["ok"]


async def test_disallowed_origin_is_refused_at_the_upgrade() -> None:
    async with Node(secure_config(allowed_origins=["https://app.example.com"])) as node:
        good = await connect(node.ws_url, origin="https://app.example.com")  # type: ignore[arg-type]
        await good.close()
        for origin in (
            "https://evil-app.example.com",
            "https://app.example.com.evil.net",
            "http://app.example.com",
        ):
            with pytest.raises(InvalidStatus) as info:
                await connect(node.ws_url, origin=origin)  # type: ignore[arg-type]
            assert info.value.response.status_code == 403


async def test_publish_rate_limit_refuses_without_closing() -> None:
    async with Node(secure_config(publish_rate=2, publish_burst=3)) as node:
        client = await RawClient.open(node.ws_url, hello=False)
        await client.call("hello", token=token())
        codes = [
            (await client.call("publish", topic="acme.run-1.x", payload=n))
            .get("error", {})
            .get("code")
            for n in range(5)
        ]
        assert codes[:3] == [None, None, None] and "rate_limited" in codes[3:]
        other = await RawClient.open(node.ws_url, hello=False)
        await other.call("hello", token=token(sub="other"))
        assert (await other.call("publish", topic="acme.run-1.x", payload=1))["ok"]


async def test_connections_per_tenant_limit_closes_only_the_extra_one() -> None:
    async with Node(secure_config(max_connections_per_tenant=1)) as node:
        first = await RawClient.open(node.ws_url, hello=False)
        assert (await first.call("hello", token=token()))["ok"]
        second = await RawClient.open(node.ws_url, hello=False)
        reply = await second.call("hello", token=token(sub="b"))
        assert reply["error"]["code"] == "too_many_connections"
        assert await closed_with(second) == 4429
        assert (await first.call("ping"))["ok"]
        await first.close()  # returns once the node answered the close: the slot is free
        third = await RawClient.open(node.ws_url, hello=False)
        assert (await third.call("hello", token=token(sub="c")))["ok"]


async def test_http_api_keys_carry_the_same_capabilities() -> None:
    minted = mint_api_key("acme", {"acme.run-1.>": ["publish"]})
    entry = minted.entry
    api_keys = {
        entry.key_id: {
            "hash": entry.hash,
            "tenant": entry.tenant,
            "caps": {p: list(ops) for p, ops in entry.caps},
        }
    }
    async with Node(secure_config(api_keys=api_keys)) as node, aiohttp.ClientSession() as http:
        url = f"{node.http_url}/v1/publish"
        body = {"topic": "acme.run-1.x", "payload": 1}
        auth = {"Authorization": f"Bearer {minted.key}"}
        async with http.post(url, json=body, headers=auth) as resp:
            assert resp.status == 200
        async with http.post(url, json=body) as resp:
            assert resp.status == 401 and resp.headers["WWW-Authenticate"] == "Bearer"
        async with http.post(url, json={"topic": "other.x"}, headers=auth) as resp:
            assert resp.status == 403
            assert (await resp.json())["error"]["code"] == "forbidden"
        wrong = {"Authorization": f"Bearer {minted.key[:-2]}xx"}
        async with http.post(url, json=body, headers=wrong) as resp:
            assert resp.status == 401


async def test_tls_serves_wss_and_https(tmp_path: Path) -> None:
    cert, key = write_self_signed(tmp_path)
    async with Node(secure_config(tls_cert=str(cert), tls_key=str(key))) as node:
        assert node.ws_url.startswith("wss://") and node.http_url.startswith("https://")
        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False
        ws = await connect(node.ws_url, ssl=context)
        client = RawClient(ws)
        assert (await client.call("hello", token=token()))["ok"]
        await client.close()
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{node.http_url}/healthz", ssl=context) as resp,
        ):
            assert resp.status == 200
