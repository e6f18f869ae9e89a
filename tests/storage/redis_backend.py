"""The Redis history backend for the shared storage suites (``EXTRA_BACKENDS["redis"]``).

Redis is expected at ``AGENTCAST_TEST_REDIS_URL`` (default: the local server, database 0).
Every test gets its own key prefix (the factory's schema name), deleted afterwards. An
unreachable server fails the Redis tests, it does not skip them.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import redis.asyncio as aioredis

from agentcast.storage.base import HistoryStore
from agentcast.storage.redis_store import RedisHistoryStore, delete_prefix

if TYPE_CHECKING:
    from tests.storage.conftest import StoreFactory

REDIS_URL = os.environ.get("AGENTCAST_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


class RedisBackend:
    """Stores sharing one key prefix per factory, like nodes sharing one Redis."""

    def create(self, factory: StoreFactory, dedupe_window: float) -> HistoryStore:
        return RedisHistoryStore(
            REDIS_URL, dedupe_window=dedupe_window, prefix=factory.schema, clock=factory.clock
        )

    async def cleanup(self, factory: StoreFactory) -> None:
        client = aioredis.Redis.from_url(REDIS_URL)
        try:
            await delete_prefix(client, factory.schema)
        finally:
            await client.aclose()


BACKEND = RedisBackend()
