"""A :class:`~agentcast.storage.base.HistoryStore` on NATS JetStream, shared by a cluster.

Every node opens the same stream. Each agentcast topic is one subject of that stream, and
every message on a topic's subject is either an event or a *marker* (a reset or a full trim):
the subject alone says the topic's epoch and last seq, so positions are serialised with
appends by one server-side check, the expected last sequence per subject.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import aclosing
from typing import Final

import nats
import orjson
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType, StreamConfig
from nats.js.errors import APIError, BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from agentcast.storage.base import AppendResult, EventDraft, StoredEvent, TopicPosition
from agentcast.storage.memory import new_epoch, retention_cutoff, rfc3339_micros
from agentcast.storage.nats_subjects import (
    STREAM_NAME,
    SUBJECT_PREFIX,
    HistoryMsg,
    subject_token,
    topic_of_token,
)
from agentcast.storage.nats_writes import MAX_CONFLICTS, NatsWriter

__all__ = ["NatsHistoryStore", "subject_token", "topic_of_token"]

_KEY_TTL_SLACK: Final = 5.0


class NatsHistoryStore(NatsWriter):
    """History in one JetStream stream (file storage) whose subjects are
    ``{subject_prefix}.>``; ``subject_prefix`` defaults to ``agentcast-history.{stream}``.
    :meth:`open` creates the stream (with ``replicas`` replicas) and the key bucket if they
    do not exist; every server request waits at most ``request_timeout`` seconds; each
    instance remembers the last message of at most ``max_cached_topics`` topics.

    **Subjects.** Topic ``a.b`` is subject ``{subject_prefix}.a.b`` (segments escaped by
    :func:`subject_token`). Every message on a subject carries the headers ``Ac-Epoch`` and
    ``Ac-Seq``; an event also ``Ac-Time`` (its time in microseconds) and its envelope in the
    body; a *marker* (header ``Ac-Marker``) carries no event: ``reset`` writes one with the new
    epoch and seq 0, a trim that removes every event writes one with the current epoch and
    ``last_seq``. The subject's last message therefore always names the topic's epoch and
    last seq, and a topic is known exactly when its subject holds a message.

    **How the per-topic seq is derived.** JetStream numbers messages per stream, so the store
    numbers each topic itself: it reads the subject's last message L (a direct get by
    subject, cached per topic after each append of this instance), and publishes the event
    with ``Ac-Seq = L.seq + 1``, L's epoch (a new random epoch if the subject is empty) and
    the header ``Nats-Expected-Last-Subject-Sequence = L's stream sequence`` (0 for an empty
    subject). The server stores the message only if L is still the subject's last message,
    so of several nodes appending to one topic exactly one wins each seq; a loser gets
    "wrong last sequence", reads L again and retries (up to 200 times in a row, with a short
    random back-off after the third). Resets and full trims write their markers under the
    same check, so an appender holding a stale view never continues an epoch that was reset.
    The stream sequences of a topic's messages therefore grow with its seqs, and seqs are
    gapless and unique per epoch.

    **Atomicity and durability.** The unit JetStream makes atomic and durable is one message:
    each event is stored on its own, under its own expected-last check, and is durable once
    the stream acknowledges it: the server has written it to its file store (fsynced only
    every ``sync_interval``, two minutes by default, unless the server runs with
    ``sync_interval: always``), so with one replica an acknowledged event survives the
    server process being killed but not a power loss; with ``replicas=3`` a quorum of
    servers holds it before the acknowledgement. A multi-event :meth:`append` is *not* one
    atomic unit: the store publishes a call's events in list order, one topic's events one
    after another, different topics concurrently, and if publishing fails midway (server
    unreachable, a node crash) the call raises with a prefix of each topic's events stored.
    What the contract still guarantees: drafts are validated before anything is published
    (an invalid time stores nothing); a stored prefix never has holes; events are
    never reordered; within one instance, appends to a topic are applied in call order; and
    every event that a returned result names is durable. A caller that sees an exception
    must treat the call as "some events may be stored" and retry with idempotency keys,
    which then return the stored ones as duplicates.

    **Detecting gaps.** A reader never needs JetStream's numbering: seqs are gapless per
    epoch, so a missing seq in what a client receives is a gap, retained history is one
    gap-free range (``first_seq`` to ``last_seq``), an older seq than ``first_seq`` was
    trimmed, and a changed epoch means the history was reset.

    **Idempotency.** Keys live in the KV bucket ``{stream}-keys`` (name ``hash(topic, key)``,
    value: epoch, seq and expiry time by ``clock``; the bucket's TTL, ``dedupe_window`` plus
    a small slack, only removes records that have surely expired). A draft whose key has an
    unexpired record for the topic's current epoch returns that position (with the event if
    still retained). Otherwise the event is published with ``Nats-Msg-Id = hash(topic,
    epoch, key, generation)`` (generation: the seq of the record the key had, if any), and
    the stream's ``duplicate_window`` is ``dedupe_window``: if two nodes append the same key
    at once, or a node crashed after publishing but before writing the record, the server
    answers "duplicate" with the original's stream sequence, and the store returns that
    original (and writes the missing record). Expiry follows the store's clock: a key whose
    record expired is a new generation, hence a new message id, even if the server's window
    (wall time) has not passed. The one case the store cannot serve exactly: a crash between
    publish and record *and* the original trimmed before the retry; the retry is then
    appended again. Events without a key carry ``Nats-Msg-Id = hash(topic, epoch, seq,
    id)``, so re-sending a publish whose acknowledgement was lost is recognised, never
    stored twice. A keyed draft costs a key-record read and write besides its publish.

    **Reads.** Finding the stream sequence of topic seq ``n`` uses direct gets with
    ``next_by_subj`` (the first message of the subject at or after a stream sequence): an
    interpolation search between the subject's first and last message, alternating with
    bisection steps, so it takes one or two probes on a densely written topic and at most
    about two per bit of the stream's sequence range otherwise; it needs no index that an
    append would have to keep in step. The events themselves then come from an ephemeral
    filtered pull consumer starting at that sequence (batches of exactly the events wanted,
    at most 1024 per pull; the consumer is deleted after the read), or from direct gets for
    reads of up to four events. So :meth:`read` and :meth:`read_last` cost a few round trips
    plus the events returned, and :meth:`position` two or three direct gets. Event times are
    not ordered (a publisher's clock may run ahead), so :meth:`read_since_time` and age-based
    :meth:`trim` scan the topic's retained events from the oldest, in pages, until they have
    what they need.

    **Retention.** :meth:`trim` purges the subject below the stream sequence of the first
    kept event (or writes a marker first when it removes every event), never touching
    ``last_seq`` or the epoch. Its count is exact unless two nodes trim one topic at the same
    moment, when both may count the same events.
    """

    def __init__(
        self,
        url: str,
        dedupe_window: float = 120.0,
        stream: str = "AGENTCAST",
        *,
        clock: Callable[[], float] = time.time,
        subject_prefix: str | None = None,
        replicas: int = 1,
        request_timeout: float = 5.0,
        max_cached_topics: int = 100_000,
    ) -> None:
        if not STREAM_NAME.fullmatch(stream):
            raise ValueError(f"stream {stream!r} must be 1-200 characters of A-Z a-z 0-9 - _")
        prefix = f"agentcast-history.{stream}" if subject_prefix is None else subject_prefix
        if not SUBJECT_PREFIX.fullmatch(prefix):
            raise ValueError(
                f"subject prefix {prefix!r} must be 1-8 dot-separated tokens of A-Z a-z 0-9 - _"
            )
        if replicas < 1:
            raise ValueError("replicas must be >= 1")
        self.url = url
        self.dedupe_window = dedupe_window
        self.stream = stream
        self.subject_prefix = prefix
        self.keys_bucket = f"{stream}-keys"
        self.replicas = replicas
        self.request_timeout = request_timeout
        self.max_cached_topics = max_cached_topics
        self._clock = clock
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._kv: KeyValue | None = None
        self._closing = False
        # topic -> the subject's last message as this instance last saw or wrote it
        self._heads: OrderedDict[str, HistoryMsg] = OrderedDict()
        # topic -> future done once the latest append call on the topic is finished with it
        self._tails: dict[str, asyncio.Future[None]] = {}
        self._calls = 0
        self._idle = asyncio.Event()
        self._idle.set()

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect (``url`` may list several servers, comma-separated), and create the stream
        and the key bucket unless they exist."""
        if self._nc is not None:
            raise RuntimeError("store is already open")
        servers = [part if "://" in part else f"nats://{part}" for part in self.url.split(",")]
        nc = await nats.connect(servers, connect_timeout=self.request_timeout)
        try:
            js = nc.jetstream(timeout=self.request_timeout)
            await self._ensure_stream(js)
            self._kv = await self._ensure_bucket(js)
        except BaseException:
            await nc.close()
            raise
        self._nc, self._js = nc, js

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        subjects = f"{self.subject_prefix}.>"
        try:
            info = await js.stream_info(self.stream)
        except NotFoundError:
            config = StreamConfig(
                name=self.stream,
                subjects=[subjects],
                storage=StorageType.FILE,
                num_replicas=self.replicas,
                duplicate_window=self.dedupe_window,
                allow_direct=True,
            )
            try:
                await js.add_stream(config)
                return
            except APIError:  # another node created it first, or a real conflict
                info = await js.stream_info(self.stream)
        if subjects not in (info.config.subjects or []) or not info.config.allow_direct:
            raise RuntimeError(
                f"stream {self.stream!r} exists without subjects {subjects!r} "
                "or without direct get: it is not an agentcast history stream"
            )

    async def _ensure_bucket(self, js: JetStreamContext) -> KeyValue:
        try:
            return await js.key_value(self.keys_bucket)
        except BucketNotFoundError:
            pass
        config = KeyValueConfig(
            bucket=self.keys_bucket,
            history=1,
            ttl=self.dedupe_window + max(_KEY_TTL_SLACK, self.dedupe_window / 10),
            storage=StorageType.FILE,
            replicas=self.replicas,
            direct=True,
        )
        try:
            return await js.create_key_value(config)
        except APIError:  # created meanwhile by another node
            return await js.key_value(self.keys_bucket)

    async def close(self) -> None:
        """Let calls already made finish, then disconnect."""
        if self._nc is None or self._closing:
            return
        self._closing = True
        await self._idle.wait()
        nc, self._nc, self._js, self._kv = self._nc, None, None, None
        self._closing = False
        self._heads.clear()
        await nc.close()

    def _enter(self) -> None:
        if self._nc is None or self._closing:
            raise RuntimeError("store is not open")
        self._calls += 1
        self._idle.clear()

    def _leave(self) -> None:
        self._calls -= 1
        if not self._calls:
            self._idle.set()

    # -- HistoryStore ----------------------------------------------------------------------

    async def append(self, drafts: Sequence[EventDraft]) -> list[AppendResult]:
        self._enter()
        try:
            if not drafts:
                return []
            runs: dict[str, list[tuple[int, EventDraft, int]]] = {}
            for index, draft in enumerate(drafts):  # validate all before publishing any
                runs.setdefault(draft.topic, []).append((index, draft, rfc3339_micros(draft.time)))
            results: list[AppendResult | None] = [None] * len(drafts)
            turns = {topic: self._take_turn(topic) for topic in runs}
            outcomes = await asyncio.gather(
                *(self._append_run(t, runs[t], results, *turns[t]) for t in runs),
                return_exceptions=True,
            )
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome
            return [result for result in results if result is not None]
        finally:
            self._leave()

    async def read(self, topic: str, after_seq: int, limit: int) -> list[StoredEvent]:
        self._enter()
        try:
            if limit <= 0:
                return []
            subject = self._subject(topic)
            last = await self._last(subject)
            if last is None:
                return []
            return await self._read_after(topic, subject, last, after_seq, limit)
        finally:
            self._leave()

    async def read_last(self, topic: str, count: int) -> list[StoredEvent]:
        self._enter()
        try:
            if count <= 0:
                return []
            subject = self._subject(topic)
            last = await self._last(subject)
            if last is None:
                return []
            return await self._read_after(topic, subject, last, max(0, last.seq - count), count)
        finally:
            self._leave()

    async def read_since_time(self, topic: str, time: str, limit: int) -> list[StoredEvent]:
        since = rfc3339_micros(time)
        self._enter()
        try:
            if limit <= 0:
                return []
            subject = self._subject(topic)
            last = await self._last(subject)
            first = None if last is None else await self._first_event(subject, last)
            if last is None or first is None:
                return []
            events: list[StoredEvent] = []
            async with aclosing(self._scan(subject, last, first)) as scan:
                async for msg in scan:
                    if msg.time_us >= since:
                        events.append(msg.event(topic))
                        if len(events) >= limit:
                            break
            return events
        finally:
            self._leave()

    async def position(self, topic: str) -> TopicPosition | None:
        self._enter()
        try:
            subject = self._subject(topic)
            last = await self._last(subject)
            if last is None:
                return None
            first = await self._first_event(subject, last)
            first_seq = last.seq + 1 if first is None else first.seq
            return TopicPosition(last.epoch, last.seq, first_seq)
        finally:
            self._leave()

    async def trim(self, topic: str, keep_last: int, older_than: str | None) -> int:
        retention_cutoff(0, keep_last)  # validates keep_last
        bound = None if older_than is None else rfc3339_micros(older_than)
        self._enter()
        try:
            subject = self._subject(topic)
            for _ in range(MAX_CONFLICTS):
                last = await self._last(subject)
                first = None if last is None else await self._first_event(subject, last)
                if last is None or first is None:
                    return 0
                first_new_seq = None
                if bound is not None:
                    first_new_seq = last.seq + 1
                    async with aclosing(self._scan(subject, last, first)) as scan:
                        async for msg in scan:
                            if msg.time_us >= bound:
                                first_new_seq = msg.seq
                                break
                cutoff = retention_cutoff(last.seq, keep_last, first_new_seq)
                if cutoff <= first.seq:
                    return 0
                if cutoff <= last.seq:
                    kept = await self._seek(subject, last.epoch, 2 * cutoff, last)
                    if kept is None:
                        continue  # reset or trimmed meanwhile: look again
                    await self._purge(subject, kept.stream_seq)
                    return cutoff - first.seq
                # Every event goes: leave a marker so the subject still says epoch and last_seq.
                marker = await self._publish_marker(topic, subject, last.epoch, last.seq, last)
                if marker is None:
                    continue  # an append came first: look again
                await self._purge(subject, marker)
                return last.seq - first.seq + 1
            raise RuntimeError(f"trim of {topic!r} lost {MAX_CONFLICTS} races in a row")
        finally:
            self._leave()

    async def topics(self) -> list[str]:
        self._enter()
        try:
            nc = self._ncc()
            prefix = f"{self.subject_prefix}."
            names: set[str] = set()
            offset = 0
            while True:  # one page per call: the server pages long subject lists
                request = orjson.dumps({"subjects_filter": f"{prefix}>", "offset": offset})
                reply = await nc.request(
                    f"$JS.API.STREAM.INFO.{self.stream}", request, timeout=self.request_timeout
                )
                info = orjson.loads(reply.data)
                if "error" in info:
                    raise APIError.from_error(info["error"])
                page = (info.get("state") or {}).get("subjects") or {}
                names.update(topic_of_token(s[len(prefix) :]) for s in page if s.startswith(prefix))
                offset += len(page)
                if not page or offset >= int(info.get("total", 0)):
                    return sorted(names)
        finally:
            self._leave()

    async def reset(self, topic: str) -> str:
        self._enter()
        try:
            subject = self._subject(topic)
            for _ in range(MAX_CONFLICTS):
                last = await self._last(subject)
                epoch = new_epoch(None if last is None else last.epoch)
                marker = await self._publish_marker(topic, subject, epoch, 0, last)
                if marker is None:
                    continue  # an append came first: reset what is there now
                await self._purge(subject, marker)
                return epoch
            raise RuntimeError(f"reset of {topic!r} lost {MAX_CONFLICTS} races in a row")
        finally:
            self._leave()
