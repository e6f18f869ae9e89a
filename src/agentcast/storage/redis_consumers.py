"""Consumer-group progress in Redis, beside the history (same server and key prefix)."""

from __future__ import annotations

import orjson
import redis.asyncio as aioredis

from agentcast.storage.consumers import GroupProgress
from agentcast.storage.redis_store import PREFIX_PATTERN


class RedisConsumerStore:
    """:class:`~agentcast.storage.consumers.ConsumerStore` on Redis.

    A topic's groups live in the hash ``{prefix:topic}:groups`` (field: group name, value:
    the progress as JSON), in the topic's cluster slot. A :meth:`save` is one ``HSET``,
    durable as far as Redis's persistence setting makes it (see
    :class:`~agentcast.storage.redis_store.RedisHistoryStore`); nodes sharing a group share
    its field, and the last save wins. Resetting a topic's history keeps its groups: their
    progress carries the old epoch, which the hub recognises as stale.
    """

    def __init__(self, url: str, prefix: str = "agentcast") -> None:
        if not PREFIX_PATTERN.fullmatch(prefix):
            raise ValueError(f"prefix {prefix!r} is not a valid key prefix")
        self.url = url
        self.prefix = prefix
        self._client: aioredis.Redis | None = None

    async def open(self) -> None:
        if self._client is not None:
            raise RuntimeError("store is already open")
        client = aioredis.Redis.from_url(self.url)
        try:
            await client.ping()
        except BaseException:
            await client.aclose()
            raise
        self._client = client

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def load(self, topic: str, group: str) -> GroupProgress | None:
        raw = await self._open_client().hget(self._key(topic), group)
        if raw is None:
            return None
        epoch, floor, done = orjson.loads(raw)
        return GroupProgress(epoch, floor, frozenset(done))

    async def save(self, topic: str, group: str, progress: GroupProgress) -> None:
        value = orjson.dumps([progress.epoch, progress.floor, sorted(progress.done)])
        await self._open_client().hset(self._key(topic), group, value)

    def _key(self, topic: str) -> bytes:
        return b"{" + self.prefix.encode() + b":" + topic.encode() + b"}:groups"

    def _open_client(self) -> aioredis.Redis:
        if self._client is None:
            raise RuntimeError("store is not open")
        return self._client
