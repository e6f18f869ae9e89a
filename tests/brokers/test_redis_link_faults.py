"""A Redis broker whose link is reset under uvloop (as `agentcast serve` runs it) keeps
publishing and receiving: a write to a transport the reset closed raises RuntimeError
there, which must count as a broken link like any socket error."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import uvloop

from agentcast.brokers.redis import RedisBroker
from agentcast.chaos.proxy import FaultProxy
from tests.brokers.conftest import REDIS_URL
from tests.brokers.test_broker_conformance import node, settle


@pytest.mark.timeout(120)
# redis-py leaves the reset connection's read future unretrieved; that is noise here
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_publishing_and_receiving_survive_link_resets() -> None:
    uvloop.run(asyncio.wait_for(resets(), 100))


async def resets() -> None:
    prefix = f"t{uuid.uuid4().hex[:12]}"
    async with FaultProxy("127.0.0.1", 6379) as proxy:
        through_proxy = RedisBroker(f"redis://127.0.0.1:{proxy.port}/0", prefix=prefix)
        direct = RedisBroker(REDIS_URL, prefix=prefix)
        try:
            a, ra = await node(lambda: through_proxy, "a")
            b, rb = await node(lambda: direct, "b")
            a.add_interest("acme.in")
            b.add_interest("acme.out")
            stop = asyncio.Event()

            async def chatter() -> None:  # writes in flight when the resets hit
                while not stop.is_set():
                    a.publish("acme.noise", b"x")
                    await asyncio.sleep(0.0005)

            noise = asyncio.ensure_future(chatter())
            try:
                for _ in range(10):
                    await asyncio.sleep(0.05)
                    proxy.reset()
                    # a's publishes and a's subscription both cross the reset link
                    await settle(a, rb, b)
                    await settle(b, ra, a)
            finally:
                stop.set()
                await noise
        finally:
            await through_proxy.close()
            await direct.close()
