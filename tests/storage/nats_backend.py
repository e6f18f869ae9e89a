"""The NATS JetStream backend of the history-store suites (registered in ``conftest.py``).

JetStream is expected at ``AGENTCAST_TEST_NATS_URL`` (default: the local server). Every test
gets its own stream and key bucket, named after the factory's schema and deleted afterwards;
an unreachable server fails the NATS tests, it does not skip them.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

import nats
from nats.js.errors import NotFoundError

from agentcast.storage.base import HistoryStore
from agentcast.storage.nats_store import NatsHistoryStore

if TYPE_CHECKING:
    from tests.storage.conftest import StoreFactory

NATS_URL = os.environ.get("AGENTCAST_TEST_NATS_URL", "nats://127.0.0.1:4222")


def stream_name(factory: StoreFactory) -> str:
    """The stream of one test's stores."""
    return f"AC_{factory.schema}"


class NatsBackend:
    """Stores on one stream per test; ``cleanup`` deletes the stream and its key bucket."""

    def create(self, factory: StoreFactory, dedupe_window: float) -> HistoryStore:
        return NatsHistoryStore(
            NATS_URL, dedupe_window, stream=stream_name(factory), clock=factory.clock
        )

    async def cleanup(self, factory: StoreFactory) -> None:
        stream = stream_name(factory)
        nc = await nats.connect(NATS_URL)
        try:
            js = nc.jetstream()
            for name in (stream, f"KV_{stream}-keys"):
                with contextlib.suppress(NotFoundError):
                    await js.delete_stream(name)
        finally:
            await nc.close()


BACKEND = NatsBackend()
