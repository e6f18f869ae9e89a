"""Broker factories for the conformance suite: each backend on the real engine."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Protocol

import pytest

from agentcast.brokers.base import Broker
from agentcast.brokers.memory import LocalBus, MemoryBroker
from agentcast.brokers.nats import NatsBroker
from agentcast.brokers.redis import RedisBroker

REDIS_URL = "redis://127.0.0.1:6379/0"
NATS_URL = "nats://127.0.0.1:4222"


class BrokerBackend(Protocol):
    """Makes brokers that share one medium (one per simulated node)."""

    def __call__(self, prefix: str) -> Broker: ...


def _memory() -> Callable[[str], Broker]:
    bus = LocalBus()
    return lambda prefix: MemoryBroker(bus)


# Backends on external engines register here (kind -> factory of a broker maker).
EXTRA_BROKERS: dict[str, Callable[[], Callable[[str], Broker]]] = {}

BROKERS: dict[str, Callable[[], Callable[[str], Broker]]] = {
    "memory": _memory,
    "redis": lambda: lambda prefix: RedisBroker(REDIS_URL, prefix=prefix),
    "nats": lambda: lambda prefix: NatsBroker(NATS_URL, prefix=prefix),
    **EXTRA_BROKERS,
}


@pytest.fixture(params=list(BROKERS))
async def make_broker(request: pytest.FixtureRequest) -> AsyncIterator[Callable[[], Broker]]:
    """Call it to get another broker on the same medium (a unique prefix per test);
    every broker made is closed afterwards."""
    prefix = f"t{uuid.uuid4().hex[:12]}"
    maker = BROKERS[request.param]()
    made: list[Broker] = []

    def make() -> Broker:
        broker = maker(prefix)
        made.append(broker)
        return broker

    yield make
    for broker in made:
        await broker.close()
