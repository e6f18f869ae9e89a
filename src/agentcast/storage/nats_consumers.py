"""Consumer-group progress in NATS JetStream, beside the history (a key-value bucket)."""

from __future__ import annotations

import hashlib

import nats
import orjson
from nats.aio.client import Client as NatsClient
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import APIError, BucketNotFoundError, KeyNotFoundError
from nats.js.kv import KeyValue

from agentcast.storage.consumers import GroupProgress


class NatsConsumerStore:
    """:class:`~agentcast.storage.consumers.ConsumerStore` on a JetStream key-value bucket
    ``{stream}-groups`` (one key per topic and group: a digest of both, since KV keys allow
    fewer characters than topics). A :meth:`save` is one KV put, acknowledged once JetStream
    stored it; nodes sharing a group share its key, and the last save wins."""

    def __init__(self, url: str, stream: str = "AGENTCAST", replicas: int = 1) -> None:
        self.url = url
        self.bucket = f"{stream}-groups"
        self.replicas = replicas
        self._nc: NatsClient | None = None
        self._kv: KeyValue | None = None

    async def open(self) -> None:
        servers = [part if "://" in part else f"nats://{part}" for part in self.url.split(",")]
        nc = await nats.connect(servers)
        try:
            js = nc.jetstream()
            try:
                self._kv = await js.key_value(self.bucket)
            except BucketNotFoundError:
                config = KeyValueConfig(
                    bucket=self.bucket,
                    history=1,
                    storage=StorageType.FILE,
                    replicas=self.replicas,
                )
                try:
                    self._kv = await js.create_key_value(config)
                except APIError:  # another node created it first
                    self._kv = await js.key_value(self.bucket)
        except BaseException:
            await nc.close()
            raise
        self._nc = nc

    async def close(self) -> None:
        if self._nc is not None:
            await self._nc.close()
            self._nc = None
            self._kv = None

    async def load(self, topic: str, group: str) -> GroupProgress | None:
        assert self._kv is not None, "store is not open"
        try:
            entry = await self._kv.get(_key(topic, group))
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        data = orjson.loads(entry.value)
        return GroupProgress(data["epoch"], data["floor"], frozenset(data["done"]))

    async def save(self, topic: str, group: str, progress: GroupProgress) -> None:
        assert self._kv is not None, "store is not open"
        value = {"epoch": progress.epoch, "floor": progress.floor, "done": sorted(progress.done)}
        await self._kv.put(_key(topic, group), orjson.dumps(value))


def _key(topic: str, group: str) -> str:
    return hashlib.sha256(f"{topic}\x00{group}".encode()).hexdigest()
