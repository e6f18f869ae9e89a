"""A :class:`~agentcast.storage.base.HistoryStore` on NATS JetStream, shared by a cluster.

Every node opens the same stream. Each agentcast topic is one subject of that stream, and
every message on a topic's subject is either an event or a *marker* (a reset or a full trim):
the subject alone says the topic's epoch and last seq, so positions are serialised with
appends by one server-side check, the expected last sequence per subject.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from contextlib import aclosing, suppress
from dataclasses import dataclass
from typing import Final

import nats
import orjson
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    KeyValueConfig,
    PubAck,
    RawStreamMsg,
    StorageType,
    StreamConfig,
)
from nats.js.errors import APIError, BucketNotFoundError, KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from agentcast.storage.base import AppendResult, EventDraft, StoredEvent, TopicPosition
from agentcast.storage.memory import new_epoch, retention_cutoff, rfc3339_micros

_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,200}")
_PREFIX: Final = re.compile(r"[A-Za-z0-9_-]{1,64}(?:\.[A-Za-z0-9_-]{1,64}){0,7}")
_PLAIN_TOKEN: Final = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPED: Final = re.compile(r"=([0-9A-F]{2})")

_WRONG_LAST_SEQUENCE: Final = 10071  # JetStream error code of a failed expected-last check
_H_EPOCH: Final = "Ac-Epoch"
_H_SEQ: Final = "Ac-Seq"
_H_TIME: Final = "Ac-Time"
_H_MARKER: Final = "Ac-Marker"
_H_EXPECTED: Final = "Nats-Expected-Last-Subject-Sequence"
_H_MSG_ID: Final = "Nats-Msg-Id"

_MAX_CONFLICTS: Final = 200  # failed expected-last checks in a row before an append gives up
_PUBLISH_ATTEMPTS: Final = 3  # identical publishes after an unanswered one
_MAX_SEEK_STEPS: Final = 200  # probes of one seek (about two per bit of stream sequence)
_MAX_MARKER_RUN: Final = 1_000  # markers skipped in a row (more only after many crashes)
_DIRECT_READ_MAX: Final = 4  # reads up to this many events use direct gets, not a consumer
_SCAN_PAGE: Final = 256  # messages per pull when scanning event times
_MAX_PAGE: Final = 1_024  # messages per pull when reading
_KEY_TTL_SLACK: Final = 5.0


def subject_token(topic: str) -> str:
    """The subject tokens of ``topic``: one token per dot-separated segment.

    Topic segments may hold ``: @ ~ =`` (and a store accepts any string), while the store
    keeps subject tokens to ``A-Z a-z 0-9 - _`` so that every NATS tool and client handles
    them: other bytes of a segment's UTF-8 are written ``=HH`` (upper-case hex) and an empty
    segment is the token ``=``. The mapping is one-to-one (see :func:`topic_of_token`)."""
    return ".".join(_escape_segment(segment) for segment in topic.split("."))


def topic_of_token(tokens: str) -> str:
    """The topic whose :func:`subject_token` is ``tokens``."""
    return ".".join(_unescape_segment(token) for token in tokens.split("."))


def _escape_segment(segment: str) -> str:
    if not segment:
        return "="
    if _PLAIN_TOKEN.fullmatch(segment):
        return segment
    out = []
    for char in segment:
        if _PLAIN_TOKEN.fullmatch(char):
            out.append(char)
        else:
            out.extend(f"={byte:02X}" for byte in char.encode())
    return "".join(out)


def _unescape_segment(token: str) -> str:
    if token == "=":
        return ""
    if "=" not in token:
        return token
    raw = bytearray()
    pos = 0
    for match in _ESCAPED.finditer(token):
        raw += token[pos : match.start()].encode()
        raw.append(int(match.group(1), 16))
        pos = match.end()
    raw += token[pos:].encode()
    return raw.decode()


def _digest(*parts: object) -> str:
    """A short stable identifier of ``parts`` (message ids, idempotency-record names)."""
    return hashlib.blake2b(orjson.dumps(parts), digest_size=16).hexdigest()


def _encode_event(draft: EventDraft) -> bytes:
    """Message body: the envelope fields as one JSON line, then the payload bytes as given."""
    fields = [
        draft.id,
        draft.time,
        draft.source,
        draft.headers,
        draft.correlation_id,
        draft.causation_id,
        draft.lamport,
    ]
    return orjson.dumps(fields) + b"\n" + draft.payload


@dataclass(frozen=True, slots=True)
class _Msg:
    """A message of a topic's subject as the store reads it: an event, or a marker whose
    ``seq`` is the topic's last seq when it was written (0 for a reset)."""

    stream_seq: int
    epoch: str
    seq: int
    marker: bool
    time_us: int = 0
    body: bytes | None = None

    @classmethod
    def parse(cls, stream_seq: int, headers: Mapping[str, str] | None, body: bytes | None) -> _Msg:
        if headers is None or _H_EPOCH not in headers or _H_SEQ not in headers:
            raise ValueError(f"message {stream_seq} is not a history message")
        return cls(
            stream_seq,
            headers[_H_EPOCH],
            int(headers[_H_SEQ]),
            _H_MARKER in headers,
            int(headers.get(_H_TIME, "0")),
            body,
        )

    def key(self, epoch: str) -> int:
        """Order of the message within ``epoch``'s history: events ``2 * seq``, markers
        ``2 * seq + 1`` (just after the event they follow), other epochs' messages -1.
        Keys grow with the stream sequence along a subject."""
        if self.epoch != epoch:
            return -1
        return 2 * self.seq + (1 if self.marker else 0)

    def event(self, topic: str) -> StoredEvent:
        if self.body is None or self.marker:
            raise ValueError(f"message {self.stream_seq} carries no event")
        line, _, payload = self.body.partition(b"\n")
        id_, time_, source, headers, correlation_id, causation_id, lamport = orjson.loads(line)
        return StoredEvent(
            id_,
            topic,
            self.epoch,
            self.seq,
            time_,
            source,
            payload,
            headers,
            correlation_id,
            causation_id,
            lamport,
        )


@dataclass(frozen=True, slots=True)
class _KeyRecord:
    """An idempotency key's record: the position it names and when it expires (store clock)."""

    epoch: str
    seq: int
    expires: float


class _Cursor:
    """An ephemeral, filtered, unacknowledged pull consumer reading one subject forward from
    a stream sequence, deleted on exit (and by the server after 30 s of inactivity if the
    delete is lost)."""

    def __init__(self, store: NatsHistoryStore, subject: str, start: int) -> None:
        self._store = store
        self._subject = subject
        self._start = start
        self._name: str | None = None

    async def __aenter__(self) -> _Cursor:
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self._start,
            ack_policy=AckPolicy.NONE,
            filter_subject=self._subject,
            mem_storage=True,
            num_replicas=1,
            inactive_threshold=30.0,
        )
        info = await self._store._jsc().add_consumer(self._store.stream, config)
        self._name = info.name
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._name is not None:
            # Gone already, or it expires by itself after a lost delete.
            with suppress(NotFoundError, NatsTimeoutError):
                await self._store._jsc().delete_consumer(self._store.stream, self._name)

    async def pull(self, count: int) -> list[_Msg]:
        """Up to ``count`` next messages; fewer only at the end of the subject."""
        nc = self._store._ncc()
        received: list[_Msg] = []
        errors: list[Exception] = []
        done = asyncio.Event()

        async def collect(msg: Msg) -> None:
            if msg.headers is not None and "Status" in msg.headers:
                done.set()  # no more messages (404) or the request expired (408)
                return
            try:
                received.append(_Msg.parse(msg.metadata.sequence.stream, msg.headers, msg.data))
            except ValueError as exc:  # not a history message: stop, and say so
                errors.append(exc)
                done.set()
            if len(received) >= count:
                done.set()

        sub = await nc.subscribe(nc.new_inbox(), cb=collect)
        try:
            request = orjson.dumps({"batch": count, "no_wait": True})
            api = f"$JS.API.CONSUMER.MSG.NEXT.{self._store.stream}.{self._name}"
            await nc.publish(api, request, reply=sub.subject)
            async with asyncio.timeout(self._store.request_timeout):
                await done.wait()
        finally:
            await sub.unsubscribe()
        if errors:
            raise errors[0]
        return received[:count]


class NatsHistoryStore:
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
        if not _NAME.fullmatch(stream):
            raise ValueError(f"stream {stream!r} must be 1-200 characters of A-Z a-z 0-9 - _")
        prefix = f"agentcast-history.{stream}" if subject_prefix is None else subject_prefix
        if not _PREFIX.fullmatch(prefix):
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
        self._heads: OrderedDict[str, _Msg] = OrderedDict()
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

    def _ncc(self) -> NatsClient:
        if self._nc is None:
            raise RuntimeError("store is not open")
        return self._nc

    def _jsc(self) -> JetStreamContext:
        if self._js is None:
            raise RuntimeError("store is not open")
        return self._js

    def _kvc(self) -> KeyValue:
        if self._kv is None:
            raise RuntimeError("store is not open")
        return self._kv

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

    def _take_turn(self, topic: str) -> tuple[asyncio.Future[None] | None, asyncio.Future[None]]:
        """Queue this call behind earlier calls on ``topic`` (synchronously, so in call order)."""
        previous = self._tails.get(topic)
        mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._tails[topic] = mine
        return previous, mine

    async def _append_run(
        self,
        topic: str,
        run: list[tuple[int, EventDraft, int]],
        results: list[AppendResult | None],
        previous: asyncio.Future[None] | None,
        mine: asyncio.Future[None],
    ) -> None:
        try:
            if previous is not None:
                await asyncio.shield(previous)
            subject = self._subject(topic)
            seen: dict[str, StoredEvent] = {}
            for index, draft, micros in run:
                results[index] = await self._append_one(topic, subject, draft, micros, seen)
        except BaseException:
            self._heads.pop(topic, None)
            raise
        finally:
            mine.set_result(None)
            if self._tails.get(topic) is mine:
                del self._tails[topic]

    async def _append_one(
        self, topic: str, subject: str, draft: EventDraft, micros: int, seen: dict[str, StoredEvent]
    ) -> AppendResult:
        key = draft.idempotency_key
        record_name = None
        generation: object = 0
        if key is not None:
            if key in seen:
                return AppendResult(seen[key], duplicate=True)
            record_name = _digest(topic, key)
            record = await self._get_key(record_name)
            if record is not None:
                generation = record.seq
                original = await self._unexpired_original(topic, subject, draft, record)
                if original is not None:
                    seen[key] = original
                    return AppendResult(original, duplicate=True)
        body = _encode_event(draft)
        head = await self._head(topic, subject)
        maybe_stored = False
        for attempt in range(_MAX_CONFLICTS):
            epoch = new_epoch() if head is None else head.epoch
            seq = 1 if head is None else head.seq + 1
            if key is not None:
                msg_id = _digest(topic, epoch, "key", key, generation)
            else:
                msg_id = _digest(topic, epoch, "seq", seq, draft.id)
            headers = {
                _H_EPOCH: epoch,
                _H_SEQ: str(seq),
                _H_TIME: str(micros),
                _H_EXPECTED: str(0 if head is None else head.stream_seq),
                _H_MSG_ID: msg_id,
            }
            ack, timed_out = await self._publish(subject, body, headers)
            maybe_stored = maybe_stored or timed_out
            if ack is None:  # another writer took this seq: look again
                head = await self._refresh(topic, subject)
                await _back_off(attempt)
                continue
            if not ack.duplicate:
                self._remember(topic, _Msg(ack.seq, epoch, seq, False, micros))
                result = AppendResult(StoredEvent.from_draft(draft, epoch, seq))
                break
            # The same message id is stored already, at ack.seq.
            self._heads.pop(topic, None)
            found = await self._message_at(ack.seq, subject)
            if found is None or found.epoch != epoch or found.marker:
                generation = f"{generation}/{ack.seq}"  # original trimmed: position unknown
                head = await self._refresh(topic, subject)
                continue
            original = found.event(topic)
            own = key is None or (maybe_stored and original.id == draft.id)
            result = AppendResult(original, duplicate=not own)
            break
        else:
            raise RuntimeError(f"append to {topic!r} lost {_MAX_CONFLICTS} races in a row")
        if key is not None and record_name is not None:
            seen[key] = result.event
            await self._put_key(record_name, result.event)
        return result

    async def _unexpired_original(
        self, topic: str, subject: str, draft: EventDraft, record: _KeyRecord
    ) -> StoredEvent | None:
        """The event ``record`` names if it is unexpired and of the topic's current epoch
        (with ``draft``'s content if that event is no longer retained)."""
        if record.expires <= self._clock():
            return None
        head = await self._refresh(topic, subject)  # the epoch must be current, not cached
        if head is None or head.epoch != record.epoch or record.seq > head.seq:
            return None
        found = await self._seek(subject, head.epoch, 2 * record.seq, head)
        if found is not None and not found.marker and found.seq == record.seq:
            return found.event(topic)
        return StoredEvent.from_draft(draft, record.epoch, record.seq)

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
            for _ in range(_MAX_CONFLICTS):
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
            raise RuntimeError(f"trim of {topic!r} lost {_MAX_CONFLICTS} races in a row")
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
            for _ in range(_MAX_CONFLICTS):
                last = await self._last(subject)
                epoch = new_epoch(None if last is None else last.epoch)
                marker = await self._publish_marker(topic, subject, epoch, 0, last)
                if marker is None:
                    continue  # an append came first: reset what is there now
                await self._purge(subject, marker)
                return epoch
            raise RuntimeError(f"reset of {topic!r} lost {_MAX_CONFLICTS} races in a row")
        finally:
            self._leave()

    # -- subjects and messages -------------------------------------------------------------

    def _subject(self, topic: str) -> str:
        return f"{self.subject_prefix}.{subject_token(topic)}"

    def _remember(self, topic: str, head: _Msg) -> None:
        heads = self._heads
        heads[topic] = head
        heads.move_to_end(topic)
        while len(heads) > self.max_cached_topics:
            heads.popitem(last=False)

    async def _head(self, topic: str, subject: str) -> _Msg | None:
        head = self._heads.get(topic)
        return head if head is not None else await self._refresh(topic, subject)

    async def _refresh(self, topic: str, subject: str) -> _Msg | None:
        head = await self._last(subject)
        if head is None:
            self._heads.pop(topic, None)
        else:
            self._remember(topic, head)
        return head

    async def _last(self, subject: str) -> _Msg | None:
        try:
            raw = await self._jsc().get_last_msg(self.stream, subject, direct=True)
        except NotFoundError:
            return None
        return _from_raw(raw)

    async def _next(self, subject: str, stream_seq: int) -> _Msg | None:
        """The subject's first message at or after ``stream_seq``."""
        try:
            raw = await self._jsc().get_msg(
                self.stream, seq=stream_seq, subject=subject, direct=True, next=True
            )
        except NotFoundError:
            return None
        return _from_raw(raw)

    async def _message_at(self, stream_seq: int, subject: str) -> _Msg | None:
        """The message at ``stream_seq`` if it is still there and on ``subject``."""
        try:
            raw = await self._jsc().get_msg(self.stream, seq=stream_seq, direct=True)
        except NotFoundError:
            return None
        return _from_raw(raw) if raw.subject == subject else None

    async def _seek(self, subject: str, epoch: str, target: int, last: _Msg) -> _Msg | None:
        """The first message of ``subject`` whose :meth:`_Msg.key` is ``>= target``, given
        ``last``, the subject's last message (``None`` if there is none)."""
        if last.key(epoch) < target:
            return None
        if last.key(epoch) == target:
            return last
        first = await self._next(subject, 1)
        if first is None or first.key(epoch) >= target:
            return first
        # lo: a message below target; the answer is the first message after stream seq lo.
        # hi: a stream seq whose next message (hi_msg) is at or above target.
        lo, lo_key = first.stream_seq, first.key(epoch)
        hi, hi_msg = last.stream_seq, last
        for step in range(_MAX_SEEK_STEPS):
            if hi - lo <= 1:
                return hi_msg
            hi_key = hi_msg.key(epoch)
            if step % 2 == 0 and lo_key >= 0:  # interpolate on even steps, bisect on odd
                guess = lo + (target - lo_key) * (hi_msg.stream_seq - lo) // (hi_key - lo_key)
            else:
                guess = (lo + hi) // 2
            probe = min(max(guess, lo + 1), hi - 1)
            found = await self._next(subject, probe)
            if found is None:
                return None  # purged under our feet: the caller looks again
            found_key = found.key(epoch)
            if found_key == target:  # keys are unique and grow along the subject
                return found
            if found_key > target:
                hi, hi_msg = probe, found
            else:
                lo, lo_key = found.stream_seq, found_key
        raise RuntimeError(f"seek on {subject!r} did not converge")

    async def _skip_markers(self, subject: str, epoch: str, msg: _Msg | None) -> _Msg | None:
        for _ in range(_MAX_MARKER_RUN):
            if msg is None or msg.epoch != epoch:
                return None  # the end, or a reset happened meanwhile
            if not msg.marker:
                return msg
            msg = await self._next(subject, msg.stream_seq + 1)
        raise RuntimeError(f"more than {_MAX_MARKER_RUN} markers in a row on {subject!r}")

    async def _first_event(self, subject: str, last: _Msg) -> _Msg | None:
        """The oldest retained event of ``last``'s epoch."""
        found = await self._seek(subject, last.epoch, 0, last)
        return await self._skip_markers(subject, last.epoch, found)

    async def _read_after(
        self, topic: str, subject: str, last: _Msg, after_seq: int, limit: int
    ) -> list[StoredEvent]:
        if after_seq >= last.seq:
            return []
        start = await self._seek(subject, last.epoch, 2 * (after_seq + 1), last)
        start = await self._skip_markers(subject, last.epoch, start)
        if start is None:
            return []
        wanted = min(limit, last.seq - start.seq + 1)
        if wanted > _DIRECT_READ_MAX:
            events: list[StoredEvent] = []
            async with aclosing(self._scan(subject, last, start, min(wanted, _MAX_PAGE))) as scan:
                async for msg in scan:
                    events.append(msg.event(topic))
                    if len(events) >= wanted:
                        break
            return events
        return await self._read_direct(topic, subject, last, start, wanted)

    async def _read_direct(
        self, topic: str, subject: str, last: _Msg, start: _Msg, wanted: int
    ) -> list[StoredEvent]:
        """Up to ``wanted`` events from ``start`` on, one direct get each."""
        events = [start.event(topic)]
        current = start
        while len(events) < wanted:
            found = await self._next(subject, current.stream_seq + 1)
            found = await self._skip_markers(subject, last.epoch, found)
            if found is None or found.stream_seq > last.stream_seq:
                break
            events.append(found.event(topic))
            current = found
        return events

    async def _scan(
        self, subject: str, last: _Msg, start: _Msg, page_size: int = _SCAN_PAGE
    ) -> AsyncGenerator[_Msg, None]:
        """The events of ``last``'s epoch from ``start`` up to ``last``, pulled in pages of
        ``page_size`` messages; a reset happening meanwhile ends the scan."""
        pages = (last.stream_seq - start.stream_seq) // page_size + 2  # each page moves on
        async with _Cursor(self, subject, start.stream_seq) as cursor:
            for _ in range(pages):
                page = await cursor.pull(page_size)
                for msg in page:
                    if msg.epoch != last.epoch or msg.stream_seq > last.stream_seq:
                        return
                    if not msg.marker:
                        yield msg
                if len(page) < page_size:
                    return

    # -- writes ----------------------------------------------------------------------------

    async def _publish(
        self, subject: str, body: bytes, headers: dict[str, str]
    ) -> tuple[PubAck | None, bool]:
        """Publish, re-sending the identical message if no acknowledgement came (its message
        id makes a re-send harmless). Returns ``(ack, timed_out)``; ``ack`` is ``None`` if the
        expected-last check failed."""
        js = self._jsc()
        timed_out = False
        for attempt in range(_PUBLISH_ATTEMPTS):
            try:
                ack = await js.publish(
                    subject, body, timeout=self.request_timeout, headers=dict(headers)
                )
                return ack, timed_out
            except NatsTimeoutError:
                timed_out = True
                if attempt == _PUBLISH_ATTEMPTS - 1:
                    raise
            except APIError as exc:
                if exc.err_code == _WRONG_LAST_SEQUENCE:
                    return None, timed_out
                raise
        raise AssertionError("unreachable")

    async def _publish_marker(
        self, topic: str, subject: str, epoch: str, seq: int, last: _Msg | None
    ) -> int | None:
        """Write a marker after ``last``; its stream sequence, or ``None`` if ``last`` is no
        longer the subject's last message."""
        expected = 0 if last is None else last.stream_seq
        headers = {
            _H_EPOCH: epoch,
            _H_SEQ: str(seq),
            _H_MARKER: "1",
            _H_EXPECTED: str(expected),
            _H_MSG_ID: _digest(topic, epoch, "marker", seq, expected),
        }
        self._heads.pop(topic, None)
        ack, _ = await self._publish(subject, b"", headers)
        return None if ack is None else int(ack.seq)

    async def _purge(self, subject: str, below: int) -> None:
        """Delete the subject's messages with a stream sequence below ``below``."""
        await self._jsc().purge_stream(self.stream, seq=below, subject=subject)

    async def _get_key(self, name: str) -> _KeyRecord | None:
        try:
            entry = await self._kvc().get(name)
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        epoch, seq, expires = orjson.loads(entry.value)
        return _KeyRecord(epoch, seq, expires)

    async def _put_key(self, name: str, event: StoredEvent) -> None:
        expires = self._clock() + self.dedupe_window
        await self._kvc().put(name, orjson.dumps([event.epoch, event.seq, expires]))


def _from_raw(raw: RawStreamMsg) -> _Msg:
    if raw.seq is None:
        raise ValueError("a direct get answered without a stream sequence")
    return _Msg.parse(raw.seq, raw.headers, raw.data)


async def _back_off(attempt: int) -> None:
    """Nothing for the first conflicts; then a short random pause so that writers that keep
    colliding on one topic spread out (at most 20 ms)."""
    if attempt >= 3:
        await asyncio.sleep(random.uniform(0, min(0.02, 0.001 * 2 ** (attempt - 3))))
