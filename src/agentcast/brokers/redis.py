"""A :class:`~agentcast.brokers.base.Broker` on Redis pub/sub.

Channels (``prefix`` defaults to ``agentcast``): ``{prefix}:e:{topic}`` carries a topic's
events, ``{prefix}:n:{node}`` a node's direct messages, ``{prefix}:hb`` heartbeats. An
interest in an exact topic is a SUBSCRIBE, a wildcard interest a PSUBSCRIBE whose glob is
at least as wide as the pattern (``*`` and ``>`` both become ``*``, which also crosses
dots); the node's own topic index drops what the glob over-matches, and the cluster link
drops events a node receives twice through overlapping interests.

One writer task pipelines queued messages (FIFO, so one node's events keep their order);
one reader task dispatches what arrives; one interest task brings the subscription
connection's channels in line with the interests, one change at a time (so a quick remove
and add of an interest can never end unsubscribed, and two patterns that share a glob
keep it while either is wanted). If Redis goes away the tasks retry with backoff,
``healthy`` turns False, and on reconnection every interest is subscribed again. Live
messages queued while Redis is down are kept up to ``max_queue`` and then dropped (live
delivery is at-most-once; durable events are recovered from the history store).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from agentcast.brokers.base import BrokerHandler, decode_frame, encode_frame
from agentcast.protocol.topics import is_pattern

log = logging.getLogger(__name__)

# What a broken link raises: redis-py's errors, socket errors, and (on uvloop) a
# RuntimeError from a write to a transport that the reset already closed.
_LINK_ERRORS = (RedisError, OSError, RuntimeError)

RETRY_INITIAL = 0.1
RETRY_MAX = 2.0
MAX_PIPELINE = 512


class RedisBroker:
    """Redis pub/sub broker; ``url`` as ``redis://host:port/db``."""

    def __init__(self, url: str, *, prefix: str = "agentcast", max_queue: int = 100_000):
        self.url = url
        self.prefix = prefix
        self.max_queue = max_queue
        self.node_id = ""
        self.dropped = 0
        self._handler: BrokerHandler | None = None
        self._client: Any = None
        self._pubsub: Any = None
        self._queue: deque[tuple[str, bytes]] = deque()
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._interests: set[str] = set()
        self._subscribed: set[str] = set()  # event channels the current pubsub holds
        self._interest_changed = asyncio.Event()
        self._pubsub_lock = asyncio.Lock()
        self._healthy = False
        self._closing = False

    @property
    def healthy(self) -> bool:
        return self._healthy

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self, node_id: str, handler: BrokerHandler) -> None:
        self.node_id = node_id
        self._handler = handler
        self._client = aioredis.from_url(self.url, socket_connect_timeout=2)
        await self._client.ping()
        self._pubsub = self._client.pubsub()
        await self._pubsub.subscribe(self._node_channel(node_id), self._heartbeat_channel)
        self._set_health(True)
        self._tasks = [
            asyncio.create_task(self._write_loop(), name="agentcast-redis-writer"),
            asyncio.create_task(self._read_loop(), name="agentcast-redis-reader"),
            asyncio.create_task(self._interest_loop(), name="agentcast-redis-interests"),
        ]

    async def close(self) -> None:
        self._closing = True
        self._wakeup.set()
        writer = self._tasks[0] if self._tasks else None
        if writer is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(writer), 1.0)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.aclose()
        if self._client is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._client.aclose()

    # -- sending -----------------------------------------------------------------------

    def publish(self, topic: str, envelope: bytes) -> None:
        self._enqueue(f"{self.prefix}:e:{topic}", encode_frame(self.node_id, envelope))

    def send_to(self, node_id: str, data: bytes) -> None:
        self._enqueue(self._node_channel(node_id), encode_frame(self.node_id, data))

    def heartbeat(self, data: bytes) -> None:
        self._enqueue(self._heartbeat_channel, encode_frame(self.node_id, data))

    def _enqueue(self, channel: str, message: bytes) -> None:
        if len(self._queue) >= self.max_queue:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append((channel, message))
        self._wakeup.set()

    async def _write_loop(self) -> None:
        delay = RETRY_INITIAL
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = [self._queue[i] for i in range(min(len(self._queue), MAX_PIPELINE))]
            try:
                pipe = self._client.pipeline(transaction=False)
                for channel, message in batch:
                    pipe.publish(channel, message)
                await pipe.execute()
            except _LINK_ERRORS as exc:
                if self._closing:
                    return
                self._set_health(False)
                log.warning("redis publish failed (%r); retrying in %.1fs", exc, delay)
                await self._drop_connections()
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            delay = RETRY_INITIAL
            for _ in batch:
                self._queue.popleft()

    async def _drop_connections(self) -> None:
        """Forget the command connections, so the next publish opens a fresh one instead
        of writing to a transport the failure closed."""
        with contextlib.suppress(*_LINK_ERRORS):
            await self._client.connection_pool.disconnect()

    # -- interests ---------------------------------------------------------------------

    def add_interest(self, pattern: str) -> None:
        if pattern not in self._interests:
            self._interests.add(pattern)
            self._interest_changed.set()

    def remove_interest(self, pattern: str) -> None:
        if pattern in self._interests:
            self._interests.discard(pattern)
            self._interest_changed.set()

    async def _interest_loop(self) -> None:
        while True:
            await self._interest_changed.wait()
            self._interest_changed.clear()
            if not self._healthy:
                continue  # the reader's reconnection subscribes every interest
            try:
                async with self._pubsub_lock:
                    await self._sync_interests()
            except _LINK_ERRORS as exc:
                # The reader notices the broken link and subscribes everything again.
                log.warning("redis (un)subscribe failed: %s", exc)

    async def _sync_interests(self) -> None:
        """Subscribe and unsubscribe until the connection holds exactly the wanted
        channels (called with the pubsub lock held)."""
        while True:
            wanted = {self._event_channel(p): is_pattern(p) for p in self._interests}
            removed = sorted(self._subscribed - wanted.keys())
            added = sorted(wanted.keys() - self._subscribed)
            if not removed and not added:
                return
            # An exact topic never contains "*", so a glob channel is one with a "*".
            globs = [c for c in removed if "*" in c]
            exact = [c for c in removed if "*" not in c]
            if globs:
                await self._pubsub.punsubscribe(*globs)
            if exact:
                await self._pubsub.unsubscribe(*exact)
            self._subscribed.difference_update(removed)
            globs = [c for c in added if wanted[c]]
            exact = [c for c in added if not wanted[c]]
            if globs:
                await self._pubsub.psubscribe(*globs)
            if exact:
                await self._pubsub.subscribe(*exact)
            self._subscribed.update(added)

    def _event_channel(self, pattern: str) -> str:
        glob = ".".join("*" if s in ("*", ">") else s for s in pattern.split("."))
        return f"{self.prefix}:e:{glob}"

    def _node_channel(self, node_id: str) -> str:
        return f"{self.prefix}:n:{node_id}"

    @property
    def _heartbeat_channel(self) -> str:
        return f"{self.prefix}:hb"

    # -- receiving ---------------------------------------------------------------------

    async def _read_loop(self) -> None:
        delay = RETRY_INITIAL
        event_prefix = f"{self.prefix}:e:"
        while True:
            try:
                if not self._healthy:
                    await self._resubscribe()
                    self._set_health(True)
                    delay = RETRY_INITIAL
                message = await self._pubsub.get_message(timeout=1.0)
            except _LINK_ERRORS as exc:
                self._set_health(False)
                log.warning("redis subscription lost (%r); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            if message is None or message["type"] not in ("message", "pmessage"):
                continue
            try:
                self._dispatch(message["channel"], message["data"], event_prefix)
            except Exception:  # one bad message must not stop this node's cluster traffic
                log.exception("handling a broker message failed")

    async def _resubscribe(self) -> None:
        async with self._pubsub_lock:
            with contextlib.suppress(*_LINK_ERRORS):
                await self._pubsub.aclose()
            await self._drop_connections()
            await self._client.ping()
            self._pubsub = self._client.pubsub()
            self._subscribed = set()
            await self._pubsub.subscribe(self._node_channel(self.node_id), self._heartbeat_channel)
            await self._sync_interests()

    def _dispatch(self, raw_channel: bytes | str, data: bytes, event_prefix: str) -> None:
        handler = self._handler
        assert handler is not None
        channel = raw_channel.decode() if isinstance(raw_channel, bytes) else raw_channel
        try:
            origin, body = decode_frame(data)
        except ValueError:
            log.warning("dropping a malformed message on %s", channel)
            return
        if origin == self.node_id:
            return
        if channel.startswith(event_prefix):
            handler.on_event(origin, channel[len(event_prefix) :], body)
        elif channel == self._heartbeat_channel:
            handler.on_heartbeat(origin, body)
        else:
            handler.on_direct(origin, body)

    def _set_health(self, healthy: bool) -> None:
        if healthy != self._healthy:
            self._healthy = healthy
            if self._handler is not None:
                self._handler.on_health(healthy)
