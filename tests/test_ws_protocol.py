"""Protocol v1 over a real socket: every bad input gets its documented answer, and nothing
else on the node is disturbed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from websockets.exceptions import ConnectionClosed

from agentcast.config import ServerConfig
from agentcast.node import Node
from tests.wsclient import RawClient


@pytest.fixture
async def bystander(node: Node) -> AsyncIterator[RawClient]:
    """A subscriber that must keep receiving while other connections misbehave."""
    client = await RawClient.open(node.ws_url, "bystander")
    assert (await client.call("subscribe", topic="acme.watch"))["ok"]
    yield client
    await client.close()


async def assert_undisturbed(node: Node, bystander: RawClient) -> None:
    publisher = await RawClient.open(node.ws_url, "publisher")
    reply = await publisher.call("publish", topic="acme.watch", payload="still here")
    assert reply["ok"]
    event = await bystander.next_event()
    assert event["payload"] == "still here" and event["seq"] == reply["result"]["seq"]
    await publisher.close()


async def test_publish_subscribe_round_trip(node: Node) -> None:
    sub = await RawClient.open(node.ws_url, "sub")
    pub = await RawClient.open(node.ws_url, "planner")
    assert (await sub.call("subscribe", topic="acme.run-1.>"))["ok"]
    replies = [
        await pub.call(
            "publish",
            topic=f"acme.run-1.agent.{n % 3}",
            payload={"n": n},
            headers={"traceparent": "00-abc"},
            correlation_id="run-1",
        )
        for n in range(20)
    ]
    events = [await sub.next_event() for _ in range(20)]
    assert [e["payload"]["n"] for e in events] == list(range(20))
    assert [e["id"] for e in events] == [r["result"]["id"] for r in replies]
    assert all(e["source"] == "ac://client/planner" for e in events)
    by_topic: dict[str, list[int]] = {}
    for event in events:
        by_topic.setdefault(event["topic"], []).append(event["seq"])
    assert all(seqs == list(range(1, len(seqs) + 1)) for seqs in by_topic.values())


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", "bad_json"),
        ('"a string"', "bad_json"),
        ('{"id": 1, "cmd": "fly"}', "unknown_command"),
        ('{"id": 1}', "missing_field"),
        ('{"id": 1, "cmd": "subscribe"}', "missing_field"),
        ('{"id": 1, "cmd": "publish", "payload": 1}', "missing_field"),
        ('{"id": 1, "cmd": "subscribe", "topic": "acme..x"}', "invalid_topic"),
        ('{"id": 1, "cmd": "subscribe", "topic": "acme.run-*"}', "invalid_topic"),
        ('{"id": 1, "cmd": "publish", "topic": "acme.*", "payload": 1}', "wildcard_publish"),
        ('{"id": 1, "cmd": "publish", "topic": "acme.>", "payload": 1}', "wildcard_publish"),
        ('{"id": 1, "cmd": "publish", "topic": "ac me", "payload": 1}', "invalid_topic"),
        ('{"id": 1, "cmd": "unsubscribe", "topic": "acme.none"}', "not_subscribed"),
        ('{"id": 1, "cmd": "hello"}', "already_hello"),
    ],
)
async def test_bad_commands_are_answered_and_the_connection_stays_usable(
    node: Node, bystander: RawClient, frame: str, code: str
) -> None:
    client = await RawClient.open(node.ws_url, "bad")
    await client.ws.send(frame)
    reply = await client.recv()
    assert reply["type"] == "reply" and reply["ok"] is False
    assert reply["error"]["code"] == code and reply["error"]["message"]
    assert (await client.call("ping"))["ok"]
    await assert_undisturbed(node, bystander)
    await client.close()


async def test_commands_before_hello_are_refused(node: Node) -> None:
    client = await RawClient.open(node.ws_url, hello=False)
    reply = await client.call("subscribe", topic="acme.a")
    assert reply["error"]["code"] == "hello_required"
    reply = await client.call("publish", topic="acme.a", payload=1)
    assert reply["error"]["code"] == "hello_required"
    assert (await client.call("hello", client="late"))["ok"]
    assert (await client.call("subscribe", topic="acme.a"))["ok"]
    await client.close()


async def test_unacked_publish_gets_no_reply_but_errors_still_do(node: Node) -> None:
    sub = await RawClient.open(node.ws_url)
    pub = await RawClient.open(node.ws_url)
    await sub.call("subscribe", topic="acme.a")
    await pub.send(id=1, cmd="publish", topic="acme.a", payload=1, ack=False)
    await pub.send(id=2, cmd="publish", topic="acme.*", payload=1, ack=False)
    reply = await pub.recv()
    assert reply["id"] == 2 and reply["error"]["code"] == "wildcard_publish"
    assert (await sub.next_event())["payload"] == 1


async def close_code_after(client: RawClient, send: Any) -> int | None:
    await send
    with pytest.raises(ConnectionClosed) as info:
        while True:
            await client.ws.recv()
    received = info.value.rcvd
    return None if received is None else received.code


async def test_binary_frames_close_with_4501(node: Node, bystander: RawClient) -> None:
    client = await RawClient.open(node.ws_url)
    assert await close_code_after(client, client.ws.send(b"\x01\x02")) == 4501
    await assert_undisturbed(node, bystander)


async def test_fragmented_messages_close_with_4500(node: Node, bystander: RawClient) -> None:
    client = await RawClient.open(node.ws_url)
    fragments = iter(['{"id": 1, ', '"cmd": "ping"}'])
    assert await close_code_after(client, client.ws.send(fragments)) == 4500
    await assert_undisturbed(node, bystander)


async def test_oversized_frames_close_with_1009() -> None:
    async with Node(ServerConfig(port=0, http_port=0, max_frame_bytes=4096)) as small:
        watcher = await RawClient.open(small.ws_url)
        await watcher.call("subscribe", topic="acme.watch")
        client = await RawClient.open(small.ws_url)
        big = orjson.dumps({"cmd": "publish", "topic": "acme.a", "payload": "x" * 5000})
        assert await close_code_after(client, client.ws.send(big.decode())) == 1009
        await assert_undisturbed(small, watcher)


async def test_payload_over_the_limit_is_refused_without_closing(node: Node) -> None:
    client = await RawClient.open(node.ws_url)
    limit = node.config.hub.max_payload_bytes
    reply = await client.call("publish", topic="acme.a", payload="x" * limit)
    assert reply["error"]["code"] == "payload_too_large"
    assert (await client.call("publish", topic="acme.a", payload="ok"))["result"]["seq"] == 1


async def test_unknown_path_is_refused(node: Node) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    with pytest.raises(InvalidStatus) as info:
        await connect(node.ws_url.replace("/v1/ws", "/nope"))
    assert info.value.response.status_code == 404


async def test_shutdown_closes_clients_with_4000_after_flushing() -> None:
    node = Node(ServerConfig(port=0, http_port=0))
    await node.start()
    sub = await RawClient.open(node.ws_url)
    await sub.call("subscribe", topic="acme.a")
    pub = await RawClient.open(node.ws_url)
    for n in range(50):
        await pub.send(cmd="publish", topic="acme.a", payload=n, ack=False)
    assert (await pub.call("ping"))["ok"]  # all 50 publishes were handled
    stop = asyncio.ensure_future(node.stop())
    seen = []
    with pytest.raises(ConnectionClosed) as info:
        while True:
            message = await sub.recv()
            if message["type"] == "event":
                seen.append(message["event"]["payload"])
    await stop
    assert seen == list(range(50))
    assert info.value.rcvd is not None and info.value.rcvd.code == 4000
