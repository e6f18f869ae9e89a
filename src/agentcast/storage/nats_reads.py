"""The read side of the NATS history store: finding a topic's messages in the stream.

:class:`NatsReader` holds the direct gets, the seek by topic seq and the scans through an
ephemeral pull consumer (:class:`_Cursor`);
:class:`~agentcast.storage.nats_store.NatsHistoryStore` builds on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from contextlib import aclosing, suppress
from typing import Final

import orjson
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from agentcast.storage.base import StoredEvent
from agentcast.storage.nats_subjects import HistoryMsg, from_raw, subject_token

_MAX_SEEK_STEPS: Final = 200  # probes of one seek (about two per bit of stream sequence)
_MAX_MARKER_RUN: Final = 1_000  # markers skipped in a row (more only after many crashes)
_DIRECT_READ_MAX: Final = 4  # reads up to this many events use direct gets, not a consumer
_SCAN_PAGE: Final = 256  # messages per pull when scanning event times
_MAX_PAGE: Final = 1_024  # messages per pull when reading


class _Cursor:
    """An ephemeral, filtered, unacknowledged pull consumer reading one subject forward from
    a stream sequence, deleted on exit (and by the server after 30 s of inactivity if the
    delete is lost)."""

    def __init__(self, store: NatsReader, subject: str, start: int) -> None:
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

    async def pull(self, count: int) -> list[HistoryMsg]:
        """Up to ``count`` next messages; fewer only at the end of the subject."""
        nc = self._store._ncc()
        received: list[HistoryMsg] = []
        errors: list[Exception] = []
        done = asyncio.Event()

        async def collect(msg: Msg) -> None:
            if msg.headers is not None and "Status" in msg.headers:
                done.set()  # no more messages (404) or the request expired (408)
                return
            try:
                received.append(
                    HistoryMsg.parse(msg.metadata.sequence.stream, msg.headers, msg.data)
                )
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


class NatsReader:
    """Reads of a topic's subject in the stream ``stream`` (subjects under
    ``subject_prefix``), for a connection that the subclass opens and closes."""

    stream: str
    subject_prefix: str
    request_timeout: float
    _nc: NatsClient | None
    _js: JetStreamContext | None

    def _ncc(self) -> NatsClient:
        if self._nc is None:
            raise RuntimeError("store is not open")
        return self._nc

    def _jsc(self) -> JetStreamContext:
        if self._js is None:
            raise RuntimeError("store is not open")
        return self._js

    def _subject(self, topic: str) -> str:
        return f"{self.subject_prefix}.{subject_token(topic)}"

    async def _last(self, subject: str) -> HistoryMsg | None:
        try:
            raw = await self._jsc().get_last_msg(self.stream, subject, direct=True)
        except NotFoundError:
            return None
        return from_raw(raw)

    async def _next(self, subject: str, stream_seq: int) -> HistoryMsg | None:
        """The subject's first message at or after ``stream_seq``."""
        try:
            raw = await self._jsc().get_msg(
                self.stream, seq=stream_seq, subject=subject, direct=True, next=True
            )
        except NotFoundError:
            return None
        return from_raw(raw)

    async def _message_at(self, stream_seq: int, subject: str) -> HistoryMsg | None:
        """The message at ``stream_seq`` if it is still there and on ``subject``."""
        try:
            raw = await self._jsc().get_msg(self.stream, seq=stream_seq, direct=True)
        except NotFoundError:
            return None
        return from_raw(raw) if raw.subject == subject else None

    async def _seek(
        self, subject: str, epoch: str, target: int, last: HistoryMsg
    ) -> HistoryMsg | None:
        """The first message of ``subject`` whose :meth:`HistoryMsg.key` is ``>= target``, given
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

    async def _skip_markers(
        self, subject: str, epoch: str, msg: HistoryMsg | None
    ) -> HistoryMsg | None:
        for _ in range(_MAX_MARKER_RUN):
            if msg is None or msg.epoch != epoch:
                return None  # the end, or a reset happened meanwhile
            if not msg.marker:
                return msg
            msg = await self._next(subject, msg.stream_seq + 1)
        raise RuntimeError(f"more than {_MAX_MARKER_RUN} markers in a row on {subject!r}")

    async def _first_event(self, subject: str, last: HistoryMsg) -> HistoryMsg | None:
        """The oldest retained event of ``last``'s epoch."""
        found = await self._seek(subject, last.epoch, 0, last)
        return await self._skip_markers(subject, last.epoch, found)

    async def _read_after(
        self, topic: str, subject: str, last: HistoryMsg, after_seq: int, limit: int
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
        self, topic: str, subject: str, last: HistoryMsg, start: HistoryMsg, wanted: int
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
        self, subject: str, last: HistoryMsg, start: HistoryMsg, page_size: int = _SCAN_PAGE
    ) -> AsyncGenerator[HistoryMsg, None]:
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
