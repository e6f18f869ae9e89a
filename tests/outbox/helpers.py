"""Reading what a node delivered on the outbox topic."""

from __future__ import annotations

import asyncio
from typing import Any

from agentcast.client import Client, Envelope, Subscription

SENTINEL = {"sentinel": True}


async def drain_until_sentinel(client: Client, sub: Subscription, topic: str) -> list[Any]:
    """Publish a sentinel straight to ``topic`` and return every payload ``sub`` received
    before it: the node delivers a topic's events in order, so this is everything relayed
    before the call."""
    await client.publish(topic, SENTINEL)
    payloads: list[Any] = []
    async with asyncio.timeout(20):
        while True:
            event: Envelope = await sub.get()
            if event.payload == SENTINEL:
                return payloads
            payloads.append(event.payload)


async def history(client: Client, topic: str, count: int) -> list[Envelope]:
    """The last ``count`` retained events of the durable ``topic`` (fails if fewer)."""
    sub = await client.subscribe(topic, last=count, dedupe_window=0)
    events: list[Envelope] = []
    async with asyncio.timeout(60):
        while len(events) < count:
            events.append(await sub.get())
    await sub.unsubscribe()
    return events
