"""A :class:`~agentcast.storage.base.HistoryStore` on Redis 7, shared by a cluster of nodes.

Key layout, for a key prefix ``p`` and a topic ``t`` (the hash tag ``{p:t}`` puts all of a
topic's keys in one Redis Cluster slot, so each Lua script below touches one slot only):

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
import re
import struct
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, TypeVar

import orjson
import redis.asyncio as aioredis
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from agentcast.config import ConfigError
from agentcast.storage.base import AppendResult, EventDraft, StoredEvent, TopicPosition
from agentcast.storage.memory import new_epoch, retention_cutoff, rfc3339_micros

T = TypeVar("T")

PREFIX_PATTERN: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_MAX_SEQ: Final = 2**53  # Lua numbers are doubles: seqs and times stay below this
_SCAN_BUDGET: Final = 2048
_MAX_ROUNDS: Final = 100_000
_MAX_REGISTERED: Final = 100_000
_SIZES: Final = struct.Struct(">IIII")

_LUA_HELPERS: Final = """
local function id_of(seq) return string.format('%d-0', seq) end
local function seq_of(id) return tonumber(string.match(id, '^(%d+)')) end
local function field(entry, name)
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if fields[i] == name then return fields[i + 1] end
  end
  return nil
end
local function first_retained(events)
  local head = redis.call('XRANGE', events, '-', '+', 'COUNT', 1)[1]
  if head then return seq_of(head[1]) end
  return nil
end
-- The lowest seq in [first, last] whose running maximum time 'm' reaches bound (last + 1
-- if none): retained seqs are contiguous and 'm' never decreases along them.
local function first_reaching(events, first, last, bound)
  local lo, hi = first, last + 1
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    local entry = redis.call('XRANGE', events, id_of(mid), id_of(mid))[1]
    if not entry then error('agentcast: retained seqs are not contiguous') end
    if tonumber(field(entry, 'm')) >= bound then hi = mid else lo = mid + 1 end
  end
  return lo
end
"""

# KEYS: meta, events, keys, expiry. ARGV: now, expires_at, a fresh epoch, the drafts. Each
# draft is four lengths (4 bytes big-endian each) then the four fields: '' or 'k' .. its
# idempotency key, metadata JSON, payload, time in microseconds. (One argument, not four per
# draft: building and parsing thousands of arguments costs more than the script itself.)
# Returns {epoch, created (1 if the topic had no meta), first new seq, then for each
# duplicate: its index in the batch (1-based), the original seq, the original entry (0 if
# trimmed)}; the other drafts got consecutive seqs from the first new seq, in order.
# Nothing is written before every check has passed except the purge of expired keys, so
# an error leaves the topic as it was.
_APPEND: Final = (
    "#!lua\n"
    + _LUA_HELPERS
    + """
local meta, events, keys, expiry = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now, batch = tonumber(ARGV[1]), ARGV[4]
local state = redis.call('HMGET', meta, 'epoch', 'last_seq', 'max_us')
local epoch, last, max_s = state[1], tonumber(state[2]), state[3]
local created = 0
if not epoch then
  -- A new topic, or one whose meta was lost: whatever is left of it belongs to no epoch.
  epoch, last, max_s, created = ARGV[3], 0, false, 1
  redis.call('DEL', events, keys, expiry)
end
local max_n = max_s and tonumber(max_s)
local expired = redis.call('ZRANGEBYSCORE', expiry, '-inf', ARGV[1], 'LIMIT', 0, 100)
if #expired > 0 then
  redis.call('ZREM', expiry, unpack(expired))
  redis.call('HDEL', keys, unpack(expired))
end
local pos = 1
local function size_at(at)
  local a, b, c, d = string.byte(batch, at, at + 3)
  return ((a * 256 + b) * 256 + c) * 256 + d
end
local function take(size)
  pos = pos + size
  return string.sub(batch, pos - size, pos - 1)
end
local out = {epoch, created, last + 1}
local index = 0
while pos <= #batch do
  index = index + 1
  local s1, s2, s3, s4 = size_at(pos), size_at(pos + 4), size_at(pos + 8), size_at(pos + 12)
  pos = pos + 16
  local marker, d, p, u = take(s1), take(s2), take(s3), take(s4)
  local key, original = nil, nil
  if marker ~= '' then
    key = string.sub(marker, 2)
    local expires = redis.call('ZSCORE', expiry, key)
    if expires and tonumber(expires) > now then original = redis.call('HGET', keys, key) end
  end
  if original then
    local seq = tonumber(original)
    local entry = redis.call('XRANGE', events, id_of(seq), id_of(seq))[1]
    out[#out + 1] = index
    out[#out + 1] = seq
    out[#out + 1] = entry or 0
  else
    last = last + 1
    local u_n = tonumber(u)
    if not max_n or u_n > max_n then max_s, max_n = u, u_n end
    redis.call('XADD', events, id_of(last), 'd', d, 'p', p, 'u', u, 'm', max_s)
    if key then
      redis.call('HSET', keys, key, string.format('%d', last))
      redis.call('ZADD', expiry, ARGV[2], key)
    end
  end
end
if max_s then
  redis.call('HSET', meta, 'epoch', epoch, 'last_seq', string.format('%d', last), 'max_us', max_s)
else
  redis.call('HSET', meta, 'epoch', epoch, 'last_seq', string.format('%d', last))
end
return out
"""
)

# KEYS: meta, events. ARGV: since (microseconds), limit, scan budget, '' or the seq to go
# on from. Returns {epoch ('' if unknown), next seq to go on from (0: done), entry...}.
_SINCE: Final = (
    "#!lua flags=no-writes\n"
    + _LUA_HELPERS
    + """
local meta, events = KEYS[1], KEYS[2]
local state = redis.call('HMGET', meta, 'epoch', 'last_seq')
if not state[1] then return {'', 0} end
local last = tonumber(state[2])
local since, want, budget = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local scan = tonumber(ARGV[4])
if not scan then
  local first = first_retained(events)
  if not first then return {state[1], 0} end
  scan = first_reaching(events, first, last, since)
end
local out = {state[1], 0}
while scan <= last and want > 0 do
  if budget <= 0 then
    out[2] = scan
    break
  end
  local chunk = redis.call('XRANGE', events, id_of(scan), '+', 'COUNT', math.min(budget, 256))
  if #chunk == 0 then break end
  for _, entry in ipairs(chunk) do
    scan = seq_of(entry[1]) + 1
    budget = budget - 1
    if tonumber(field(entry, 'u')) >= since then
      out[#out + 1] = entry
      want = want - 1
      if want == 0 then break end
    end
  end
end
return out
"""
)

# KEYS: meta, events. ARGV: keep_last, '' or the age bound (microseconds), scan budget,
# '' or the epoch the trim must still see. Deletes the events below the cutoff of
# retention_cutoff(); if the budget runs out before the scan finds an event as new as the
# bound, deletes only the events before the scan's end (all older than the bound) and
# reports more = 1. Returns {deleted, more, epoch}.
_TRIM: Final = (
    "#!lua\n"
    + _LUA_HELPERS
    + """
local meta, events = KEYS[1], KEYS[2]
local state = redis.call('HMGET', meta, 'epoch', 'last_seq')
if not state[1] or (ARGV[4] ~= '' and state[1] ~= ARGV[4]) then return {0, 0, ''} end
local last = tonumber(state[2])
local first = first_retained(events)
if not first then return {0, 0, state[1]} end
local cutoff = last - tonumber(ARGV[1]) + 1
local more = 0
if ARGV[2] ~= '' then
  local bound, budget = tonumber(ARGV[2]), tonumber(ARGV[3])
  local scan = first_reaching(events, first, last, bound)
  local found = false
  while scan <= last and not found do
    if budget <= 0 then
      more = 1
      break
    end
    local chunk = redis.call('XRANGE', events, id_of(scan), '+', 'COUNT', math.min(budget, 256))
    if #chunk == 0 then
      scan = last + 1
      break
    end
    for _, entry in ipairs(chunk) do
      scan = seq_of(entry[1])
      if tonumber(field(entry, 'u')) >= bound then
        found = true
        break
      end
      scan = scan + 1
      budget = budget - 1
    end
  end
  if more == 1 then
    cutoff = scan -- the age cut lies further on: delete only the older events scanned
  elseif scan > cutoff then
    cutoff = scan
  end
end
if cutoff <= first then return {0, more, state[1]} end
return {redis.call('XTRIM', events, 'MINID', id_of(cutoff)), more, state[1]}
"""
)

# KEYS: meta, events, keys, expiry. ARGV: two different fresh epochs. Returns the new epoch.
_RESET: Final = """#!lua
local old = redis.call('HGET', KEYS[1], 'epoch')
local epoch = ARGV[1]
if old == epoch then epoch = ARGV[2] end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
redis.call('HDEL', KEYS[1], 'max_us')
redis.call('HSET', KEYS[1], 'epoch', epoch, 'last_seq', '0')
return epoch
"""


def key_pattern(prefix: str) -> str:
    """A ``SCAN MATCH`` pattern for every key a store with ``prefix`` writes, and no other
    prefix's (prefixes hold no ``:``, ``{``, ``}`` or glob characters)."""
    return "{" + prefix + "[:}]*"


async def delete_prefix(client: aioredis.Redis, prefix: str, *, batch: int = 500) -> int:
    """Delete every key of ``prefix`` (``SCAN`` + ``DEL``) and return how many were deleted.

    Meant for tests and for dropping a prefix that no node uses any more: a store still
    appending would recreate its topics."""
    _check_prefix(prefix)
    deleted = 0
    cursor = 0
    for _ in range(_MAX_ROUNDS):  # SCAN returns cursor 0 once it has visited every key
        cursor, found = await client.scan(cursor, match=key_pattern(prefix), count=batch)
        if found:
            deleted += int(await client.delete(*found))
        if cursor == 0:
            return deleted
    raise RuntimeError(f"SCAN for prefix {prefix!r} did not finish")


def _check_prefix(prefix: str) -> None:
    if not PREFIX_PATTERN.fullmatch(prefix):
        raise ValueError(
            f"prefix {prefix!r} must be 1 to 64 characters of letters, digits, '_', '.', '-'"
        )


def check_server(server: Mapping[str, Any], memory: Mapping[str, Any]) -> None:
    """Refuse a Redis server that cannot hold history: before 7.0 (no script flags), or with
    an ``allkeys-*`` eviction policy (it would delete events or positions silently)."""
    version = str(server.get("redis_version", "0"))
    major = version.split(".", 1)[0]
    if not major.isdigit() or int(major) < 7:
        raise ConfigError(f"the Redis history store needs Redis 7 or newer, not {version}")
    policy = str(memory.get("maxmemory_policy", "noeviction"))
    if policy.startswith("allkeys"):
        raise ConfigError(
            f"Redis evicts any key under maxmemory-policy {policy}: the history store needs "
            "noeviction (or a volatile-* policy; history keys carry no expiry)"
        )


def _metadata(draft: EventDraft) -> bytes:
    return orjson.dumps(
        [
            draft.id,
            draft.time,
            draft.source,
            draft.headers,
            draft.correlation_id,
            draft.causation_id,
            draft.lamport,
        ]
    )


def _pack(draft: EventDraft) -> bytes:
    """A draft as the append script reads it (raises ValueError for a bad time)."""
    micros = str(rfc3339_micros(draft.time)).encode()
    key = draft.idempotency_key
    marker = b"" if key is None else b"k" + key.encode()
    metadata, payload = _metadata(draft), draft.payload
    sizes = _SIZES.pack(len(marker), len(metadata), len(payload), len(micros))
    return b"".join((sizes, marker, metadata, payload, micros))


def _results(
    drafts: Sequence[EventDraft], indexes: Sequence[int], reply: Any
) -> list[AppendResult]:
    """The results for one topic's drafts (``indexes`` into ``drafts``) from its script's
    reply: ``[epoch, created, first new seq, (position, seq, entry or 0)...]``."""
    epoch = reply[0].decode()
    seq = int(reply[2])
    duplicates = {
        int(reply[i]) - 1: (int(reply[i + 1]), reply[i + 2]) for i in range(3, len(reply), 3)
    }
    results = []
    for position, index in enumerate(indexes):
        draft = drafts[index]
        duplicate = duplicates.get(position)
        if duplicate is None:
            results.append(AppendResult(StoredEvent.from_draft(draft, epoch, seq)))
            seq += 1
        elif duplicate[1]:
            results.append(AppendResult(_script_entry(draft.topic, epoch, duplicate[1]), True))
        else:  # the original was trimmed: its position is all that is left
            results.append(AppendResult(StoredEvent.from_draft(draft, epoch, duplicate[0]), True))
    return results


def _event(topic: str, epoch: str, entry_id: bytes, fields: Mapping[bytes, bytes]) -> StoredEvent:
    """A stored event from a stream entry."""
    id_, time_, source, headers, correlation_id, causation_id, lamport = orjson.loads(fields[b"d"])
    return StoredEvent(
        id_,
        topic,
        epoch,
        int(entry_id.split(b"-", 1)[0]),
        time_,
        source,
        bytes(fields[b"p"]),
        headers,
        correlation_id,
        causation_id,
        lamport,
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _script_entry(topic: str, epoch: str, raw: Sequence[Any]) -> StoredEvent:
    """A stored event from an entry as a script returns it: ``[id, [field, value, ...]]``."""
    flat = raw[1]
    return _event(topic, epoch, raw[0], dict(zip(flat[::2], flat[1::2], strict=True)))


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
        _check_prefix(prefix)
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
                "append": _APPEND,
                "since": _SINCE,
                "trim": _TRIM,
                "reset": _RESET,
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
        packed = [_pack(draft) for draft in drafts]  # may raise ValueError: nothing sent
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
                    zip(indexes, _results(drafts, indexes, replies[topic]), strict=True)
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
        return [_event(topic, epoch.decode(), eid, fields) for eid, fields in entries]

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
        return [_event(topic, epoch.decode(), eid, fields) for eid, fields in reversed(entries)]

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
            for _ in range(_MAX_ROUNDS):
                args: list[int | bytes] = [since, limit - len(found), self.scan_budget, resume]
                reply = await script(keys=keys, args=args)
                if not reply[0]:
                    return []
                if epoch is not None and reply[0] != epoch:  # reset meanwhile: start over
                    found, resume = [], b""
                    epoch = reply[0]
                    continue
                epoch = reply[0]
                found.extend(_script_entry(topic, epoch.decode(), raw) for raw in reply[2:])
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
            for _ in range(_MAX_ROUNDS):
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
