"""A :class:`~agentcast.storage.base.HistoryStore` on Redis 7, shared by a cluster of nodes.

Key layout, for a key prefix ``p`` and a topic ``t`` (the hash tag ``{p:t}`` puts all of a
topic's keys in one Redis Cluster slot, so each Lua script of
:mod:`~agentcast.storage.redis_scripts` touches one slot only):

* ``{p:t}:events``: a stream with one entry per retained event; the entry ID is
  ``<seq>-0``, so ``XRANGE`` by seq is exact and ``XTRIM MINID`` trims by seq. Fields: ``d``
  (the envelope's metadata as a JSON array), ``p`` (the payload bytes), ``u`` (the event
  time in microseconds) and ``m`` (the largest ``u`` of the epoch so far, see below).
* ``{p:t}:meta``: a hash with ``epoch``, ``last_seq`` and ``max_us`` (the running maximum
  of event times, which the next appended event's ``m`` continues).
* ``{p:t}:keys`` (hash: idempotency key -> seq) and ``{p:t}:expiry`` (sorted set:
  idempotency key scored by its expiry time on the store's clock).
* ``{p}:topics``: a set of every topic name, for :meth:`RedisHistoryStore.topics`.
* ``{p:t}:groups``: consumer-group progress, written by
  :class:`~agentcast.storage.redis_consumers.RedisConsumerStore`.

Reading by time: event times are stamped by publishers and need not grow with ``seq``, so
a plain index by time would not give "the first ``limit`` events by seq whose time is at
least T" without reading every match. The running maximum ``m`` does grow with ``seq``; the
first event whose own time reaches T is the first whose ``m`` reaches T or after it, so a
binary search over the contiguous retained seqs (``O(log n)`` stream lookups inside one
script) finds where to start, and only events published with clocks running behind are
scanned past. Age trimming uses the same search.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from agentcast.storage.base import AppendResult, EventDraft, StoredEvent, TopicPosition
from agentcast.storage.memory import new_epoch, retention_cutoff, rfc3339_micros
from agentcast.storage.redis_admin import (
    MAX_ROUNDS,
    PREFIX_PATTERN,
    check_prefix,
    check_server,
    delete_prefix,
    key_pattern,
)
from agentcast.storage.redis_entries import append_results, pack_draft, script_entry, stream_event
from agentcast.storage.redis_scripts import APPEND_SCRIPT, RESET_SCRIPT, SINCE_SCRIPT, TRIM_SCRIPT

__all__ = [
    "PREFIX_PATTERN",
    "RedisHistoryStore",
    "check_server",
    "delete_prefix",
    "key_pattern",
]

T = TypeVar("T")

_MAX_SEQ: Final = 2**53  # Lua numbers are doubles: seqs and times stay below this
_SCAN_BUDGET: Final = 2048
_MAX_REGISTERED: Final = 100_000


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class _Activity:
    """Counts operations in flight so :meth:`RedisHistoryStore.close` can wait for them."""

    def __init__(self) -> None:
        self.count = 0
        self.idle = asyncio.Event()
        self.idle.set()

    def enter(self) -> None:
        self.count += 1
        self.idle.clear()

    def exit(self) -> None:
        self.count -= 1
        if not self.count:
            self.idle.set()


class RedisHistoryStore:
    """History in Redis streams under ``prefix``, through one redis-py asyncio client.

    Positions: each append runs one Lua script per topic of the batch (``EVALSHA`` of a
    script registered with redis-py), which reads the topic's ``last_seq``, stores the
    events as stream entries ``<seq>-0`` and writes the new ``last_seq``; Redis runs a
    script alone, so nodes appending to one topic at the same time get one gapless, unique
    sequence. A batch's scripts go out in one pipeline (one round trip for any number of
    topics), behind an ``SADD`` to the topic set for topics this instance has not added
    yet, so a topic with a position is always listed. Within one store instance, appends
    touching a topic are sent in call order (an append waits for the previous one on its
    topics to be answered), and an append already called completes even if its caller is
    cancelled.

    Atomicity is per topic: a batch spanning several topics is split into one script call
    per topic, each all-or-nothing, so the contract's "one atomic commit" holds for each
    topic's share of the batch, not across topics (a Redis Cluster cannot run one script
    over keys in several slots, and each topic's keys share one slot). Drafts are checked
    (times parsed, content encoded) before anything is sent, so an invalid draft stores
    nothing anywhere; a script or connection failure in one topic may leave the batch's
    other topics appended, and the call raises. The store connects with a standalone
    client; the key layout is ready for Redis Cluster (every script and every ``MULTI``
    touches one slot), but this store does not create a cluster client.

    Durability: an append is acknowledged when Redis has executed its script, so what it
    survives is Redis's persistence setting. With ``appendonly yes`` and
    ``appendfsync always`` the AOF is fsynced before the reply: acknowledged appends survive
    a crash of Redis or of the machine. With ``appendfsync everysec`` (Redis's default AOF
    policy) the AOF is written to the operating system before the reply and fsynced about
    once a second: they survive Redis being killed, while a power loss or kernel crash may
    lose the last second or two (more if the disk stalls and Redis postpones its writes).
    With RDB snapshots only, or no persistence (the test server), everything since the
    last snapshot is lost when Redis stops. A topic that loses its ``meta`` hash starts
    over on a new epoch with its next append (what was left is dropped), so lost history is
    announced, not continued. Replication is asynchronous: a failover to a replica that had
    not received the last appends loses them *without* an epoch change, and their seqs are
    assigned again to new events; run a single primary with AOF, or accept that risk. The
    client never resends a command on its own (a resent append whose first reply was lost
    would store its events twice): a connection error fails the call, and publishers retry
    with idempotency keys.

    Idempotency keys are scoped per topic and kept ``dedupe_window`` seconds of ``clock``
    (wall time; nodes need roughly synchronised clocks), passed into the script rather
    than read from Redis. Expired keys are purged by appends, at most 100 per topic and
    call. A duplicate returns the original event, or the original position with the
    duplicate draft's content if the original was trimmed.

    ``scan_budget`` bounds how many stream entries one script call may scan past for
    :meth:`read_since_time` and age trimming (only events published with a clock behind
    an earlier event's are scanned past); a longer scan continues in further calls.
    """

    def __init__(
        self,
        url: str,
        dedupe_window: float = 120.0,
        prefix: str = "agentcast",
        *,
        clock: Callable[[], float] = time.time,
        scan_budget: int = _SCAN_BUDGET,
    ) -> None:
        check_prefix(prefix)
        parse_url(url)  # raises ValueError for a URL redis-py cannot use
        if scan_budget < 1:
            raise ValueError("scan_budget must be >= 1")
        self.url = url
        self.prefix = prefix
        self.dedupe_window = dedupe_window
        self.scan_budget = scan_budget
        self._clock = clock
        self._client: aioredis.Redis | None = None
        self._closing = False
        self._scripts: dict[str, AsyncScript] = {}
        self._topics_key = f"{{{prefix}}}:topics".encode()
        self._registered: set[str] = set()  # topics this instance has added to the set
        # topic -> future done once the latest ordered call on the topic has been answered
        self._tails: dict[str, asyncio.Future[None]] = {}
        self._activity = _Activity()
        self._work: set[asyncio.Task[Any]] = set()

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        if self._client is not None:
            raise RuntimeError("store is already open")
        client = aioredis.Redis.from_url(self.url, retry=Retry(NoBackoff(), 0))
        try:
            async with client.pipeline(transaction=False) as pipe:
                pipe.info("server")
                pipe.info("memory")
                server, memory = await pipe.execute()
            check_server(server, memory)
            scripts = {
                "append": APPEND_SCRIPT,
                "since": SINCE_SCRIPT,
                "trim": TRIM_SCRIPT,
                "reset": RESET_SCRIPT,
            }
            self._scripts = {name: client.register_script(text) for name, text in scripts.items()}
            async with client.pipeline(transaction=False) as pipe:
                for text in scripts.values():
                    pipe.script_load(text)
                await pipe.execute()
        except BaseException:
            await client.aclose()
            raise
        self._client = client
        self._closing = False

    async def close(self) -> None:
        """Wait for the calls already made (appends commit), then disconnect."""
        client = self._client
        if client is None or self._closing:
            return
        self._closing = True
        await self._activity.idle.wait()
        if self._work:
            await asyncio.gather(*self._work, return_exceptions=True)
        self._client = None
        await client.aclose()

    # -- HistoryStore ----------------------------------------------------------------------

    async def append(self, drafts: Sequence[EventDraft]) -> list[AppendResult]:
        if not drafts:
            return []
        client = self._open_client()
        drafts = list(drafts)
        packed = [pack_draft(draft) for draft in drafts]  # may raise ValueError: nothing sent
        groups: dict[str, list[int]] = {}
        for index, draft in enumerate(drafts):
            groups.setdefault(draft.topic, []).append(index)

        async def commit() -> list[AppendResult]:
            blobs = {
                topic: b"".join(packed[i] for i in indexes) for topic, indexes in groups.items()
            }
            replies = await self._run_appends(client, blobs)
            by_index: dict[int, AppendResult] = {}
            for topic, indexes in groups.items():
                by_index.update(
                    zip(indexes, append_results(drafts, indexes, replies[topic]), strict=True)
                )
            return [by_index[index] for index in range(len(drafts))]

        return await self._in_turn(list(groups), commit)

    async def read(self, topic: str, after_seq: int, limit: int) -> list[StoredEvent]:
        if limit <= 0 or after_seq >= _MAX_SEQ:
            return []
        client = self._open_client()
        meta, events = self._keys(topic)[:2]
        start = "-" if after_seq < 0 else f"{after_seq + 1}-0"
        with self._tracked():
            async with client.pipeline(transaction=True) as pipe:
                pipe.hget(meta, "epoch")
                pipe.xrange(events, start, "+", count=limit)
                epoch, entries = await pipe.execute()
        if epoch is None:
            return []
        return [stream_event(topic, epoch.decode(), eid, fields) for eid, fields in entries]

    async def read_last(self, topic: str, count: int) -> list[StoredEvent]:
        if count <= 0:
            return []
        client = self._open_client()
        meta, events = self._keys(topic)[:2]
        with self._tracked():
            async with client.pipeline(transaction=True) as pipe:
                pipe.hget(meta, "epoch")
                pipe.xrevrange(events, "+", "-", count=count)
                epoch, entries = await pipe.execute()
        if epoch is None:
            return []
        return [
            stream_event(topic, epoch.decode(), eid, fields) for eid, fields in reversed(entries)
        ]

    async def read_since_time(self, topic: str, time: str, limit: int) -> list[StoredEvent]:
        since = rfc3339_micros(time)
        if limit <= 0:
            return []
        self._open_client()
        script = self._scripts["since"]
        keys = self._keys(topic)[:2]
        found: list[StoredEvent] = []
        epoch: bytes | None = None
        resume = b""
        with self._tracked():
            for _ in range(MAX_ROUNDS):
                args: list[int | bytes] = [since, limit - len(found), self.scan_budget, resume]
                reply = await script(keys=keys, args=args)
                if not reply[0]:
                    return []
                if epoch is not None and reply[0] != epoch:  # reset meanwhile: start over
                    found, resume = [], b""
                    epoch = reply[0]
                    continue
                epoch = reply[0]
                found.extend(script_entry(topic, epoch.decode(), raw) for raw in reply[2:])
                if not reply[1] or len(found) >= limit:
                    return found
                resume = str(reply[1]).encode()
        raise RuntimeError(f"read_since_time on {topic!r} did not finish")

    async def position(self, topic: str) -> TopicPosition | None:
        client = self._open_client()
        meta, events = self._keys(topic)[:2]
        with self._tracked():
            async with client.pipeline(transaction=True) as pipe:
                pipe.hmget(meta, ["epoch", "last_seq"])
                pipe.xrange(events, "-", "+", count=1)
                (epoch, last), head = await pipe.execute()
        if epoch is None:
            return None
        last_seq = int(last)
        first_seq = int(head[0][0].split(b"-", 1)[0]) if head else last_seq + 1
        return TopicPosition(epoch.decode(), last_seq, first_seq)

    async def trim(self, topic: str, keep_last: int, older_than: str | None) -> int:
        retention_cutoff(0, keep_last)  # validates keep_last
        bound = b"" if older_than is None else str(rfc3339_micros(older_than)).encode()
        self._open_client()
        script = self._scripts["trim"]
        keys = self._keys(topic)[:2]
        deleted = 0
        epoch = b""
        with self._tracked():
            for _ in range(MAX_ROUNDS):
                count, more, epoch = await script(
                    keys=keys, args=[keep_last, bound, self.scan_budget, epoch]
                )
                deleted += int(count)
                if not more:
                    return deleted
        raise RuntimeError(f"trim of {topic!r} did not finish")

    async def topics(self) -> list[str]:
        client = self._open_client()
        with self._tracked():
            names = sorted(map(_text, await client.smembers(self._topics_key)))
            if not names:
                return []
            async with client.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.exists(self._keys(name)[0])
                exists = await pipe.execute()
        # A name is registered before its first script runs: skip any whose script never did.
        return [name for name, found in zip(names, exists, strict=True) if found]

    async def reset(self, topic: str) -> str:
        client = self._open_client()
        first = new_epoch()
        candidates = [first, new_epoch(first)]

        async def run() -> str:
            await client.sadd(self._topics_key, topic)
            epoch = await self._scripts["reset"](keys=self._keys(topic), args=candidates)
            return bytes(epoch).decode()

        return await self._in_turn([topic], run)

    # -- internals -------------------------------------------------------------------------

    def _open_client(self) -> aioredis.Redis:
        if self._client is None or self._closing:
            raise RuntimeError("store is not open")
        return self._client

    def _keys(self, topic: str) -> list[bytes]:
        """The topic's meta, events, keys and expiry keys, in one hash slot."""
        tag = b"{" + self.prefix.encode() + b":" + topic.encode() + b"}:"
        return [tag + b"meta", tag + b"events", tag + b"keys", tag + b"expiry"]

    def _tracked(self) -> _Tracked:
        return _Tracked(self._activity)

    async def _in_turn(self, topics: list[str], work: Callable[[], Awaitable[T]]) -> T:
        """Run ``work`` once every earlier ordered call on ``topics`` has been answered.

        ``work`` runs in its own task, so a cancelled caller neither skips the queue nor
        lets the next call overtake a command already sent."""
        loop = asyncio.get_running_loop()
        tails = self._tails
        done: asyncio.Future[None] = loop.create_future()
        previous = list({id(f): f for t in topics if (f := tails.get(t)) is not None}.values())
        for topic in topics:
            tails[topic] = done

        def forget(_: object) -> None:
            for topic in topics:
                if tails.get(topic) is done:
                    del tails[topic]

        done.add_done_callback(forget)

        async def ordered() -> T:
            if previous:
                await asyncio.gather(*previous)
            return await work()

        self._activity.enter()
        task = loop.create_task(ordered())
        self._work.add(task)

        def finished(task: asyncio.Task[T]) -> None:
            self._work.discard(task)
            done.set_result(None)
            self._activity.exit()
            if not task.cancelled():
                task.exception()  # retrieved here too, in case the caller went away

        task.add_done_callback(finished)
        return await asyncio.shield(task)

    async def _run_appends(
        self, client: aioredis.Redis, blobs: Mapping[str, bytes]
    ) -> dict[str, Any]:
        """Run the append script once per topic and return each topic's reply.

        Topics this instance has not registered yet are added to the topic set first, in
        the same pipeline (so a topic with a position is always listed); a topic the script
        had to create (its keys were lost) is added again afterwards."""
        script = self._scripts["append"]
        now = self._clock()
        head = [repr(now), repr(now + self.dedupe_window)]
        unregistered = [topic for topic in blobs if topic not in self._registered]
        replies: dict[str, Any] = {}
        pending = list(blobs)
        for attempt in range(2):  # a second round only if Redis lost the script
            register = unregistered if not attempt else []
            outcomes = await self._evalsha_all(
                client,
                register,
                [[*self._keys(topic), *head, new_epoch(), blobs[topic]] for topic in pending],
            )
            missing = []
            for topic, outcome in zip(pending, outcomes, strict=True):
                if isinstance(outcome, NoScriptError):
                    missing.append(topic)
                elif isinstance(outcome, Exception):
                    raise outcome
                else:
                    replies[topic] = outcome
            if not missing:
                break
            script.sha = await client.script_load(script.script)
            pending = missing
        else:
            raise RuntimeError("Redis keeps losing the append script")
        recreated = [t for t, reply in replies.items() if reply[1] and t not in unregistered]
        if recreated:
            await client.sadd(self._topics_key, *recreated)
        if len(self._registered) + len(unregistered) > _MAX_REGISTERED:
            self._registered.clear()
        self._registered.update(unregistered)
        return replies

    async def _evalsha_all(
        self, client: aioredis.Redis, register: list[str], calls: list[list[Any]]
    ) -> list[Any]:
        """``SADD`` of ``register`` (if any), then one append ``EVALSHA`` per call, in one
        round trip; returns the scripts' replies or errors. (Running the script object in a
        pipeline would add a ``SCRIPT EXISTS`` round trip to every call.)"""
        sha = self._scripts["append"].sha
        if not register and len(calls) == 1:  # the common case, without a pipeline's cost
            try:
                return [await client.evalsha(sha, 4, *calls[0])]
            except NoScriptError as exc:
                return [exc]
        async with client.pipeline(transaction=False) as pipe:
            if register:
                pipe.sadd(self._topics_key, *register)
            for call in calls:
                pipe.evalsha(sha, 4, *call)
            outcomes = await pipe.execute(raise_on_error=False)
        if register:
            registered = outcomes.pop(0)
            if isinstance(registered, Exception):
                raise registered
        return outcomes


class _Tracked:
    """``with`` block counted by an :class:`_Activity`."""

    def __init__(self, activity: _Activity) -> None:
        self._activity = activity

    def __enter__(self) -> None:
        self._activity.enter()

    def __exit__(self, *_: object) -> None:
        self._activity.exit()
