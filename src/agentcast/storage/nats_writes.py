"""The write side of the NATS history store: appends under the expected-last check,
markers, purges and idempotency-key records.

:class:`NatsWriter` extends :class:`~agentcast.storage.nats_reads.NatsReader`; see
:class:`~agentcast.storage.nats_store.NatsHistoryStore` for the contract it implements.
"""

from __future__ import annotations

import asyncio
import random
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

import orjson
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import PubAck
from nats.js.errors import APIError, KeyNotFoundError
from nats.js.kv import KeyValue

from agentcast.storage.base import AppendResult, EventDraft, StoredEvent
from agentcast.storage.memory import new_epoch
from agentcast.storage.nats_reads import NatsReader
from agentcast.storage.nats_subjects import (
    H_EPOCH,
    H_EXPECTED,
    H_MARKER,
    H_MSG_ID,
    H_SEQ,
    H_TIME,
    HistoryMsg,
    KeyRecord,
    digest,
    encode_event,
)

_WRONG_LAST_SEQUENCE: Final = 10071  # JetStream error code of a failed expected-last check
MAX_CONFLICTS: Final = 200  # failed expected-last checks in a row before an append gives up
_PUBLISH_ATTEMPTS: Final = 3  # identical publishes after an unanswered one


class NatsWriter(NatsReader):
    """Appends, markers and purges on a topic's subject, with the per-topic cache of the
    subject's last message and the per-topic queue of append calls."""

    dedupe_window: float
    max_cached_topics: int
    _clock: Callable[[], float]
    _kv: KeyValue | None
    _heads: OrderedDict[str, HistoryMsg]
    _tails: dict[str, asyncio.Future[None]]

    def _kvc(self) -> KeyValue:
        if self._kv is None:
            raise RuntimeError("store is not open")
        return self._kv

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
            record_name = digest(topic, key)
            record = await self._get_key(record_name)
            if record is not None:
                generation = record.seq
                original = await self._unexpired_original(topic, subject, draft, record)
                if original is not None:
                    seen[key] = original
                    return AppendResult(original, duplicate=True)
        body = encode_event(draft)
        head = await self._head(topic, subject)
        maybe_stored = False
        for attempt in range(MAX_CONFLICTS):
            epoch = new_epoch() if head is None else head.epoch
            seq = 1 if head is None else head.seq + 1
            if key is not None:
                msg_id = digest(topic, epoch, "key", key, generation)
            else:
                msg_id = digest(topic, epoch, "seq", seq, draft.id)
            headers = {
                H_EPOCH: epoch,
                H_SEQ: str(seq),
                H_TIME: str(micros),
                H_EXPECTED: str(0 if head is None else head.stream_seq),
                H_MSG_ID: msg_id,
            }
            ack, timed_out = await self._publish(subject, body, headers)
            maybe_stored = maybe_stored or timed_out
            if ack is None:  # another writer took this seq: look again
                head = await self._refresh(topic, subject)
                await _back_off(attempt)
                continue
            if not ack.duplicate:
                self._remember(topic, HistoryMsg(ack.seq, epoch, seq, False, micros))
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
            raise RuntimeError(f"append to {topic!r} lost {MAX_CONFLICTS} races in a row")
        if key is not None and record_name is not None:
            seen[key] = result.event
            await self._put_key(record_name, result.event)
        return result

    async def _unexpired_original(
        self, topic: str, subject: str, draft: EventDraft, record: KeyRecord
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

    def _remember(self, topic: str, head: HistoryMsg) -> None:
        heads = self._heads
        heads[topic] = head
        heads.move_to_end(topic)
        while len(heads) > self.max_cached_topics:
            heads.popitem(last=False)

    async def _head(self, topic: str, subject: str) -> HistoryMsg | None:
        head = self._heads.get(topic)
        return head if head is not None else await self._refresh(topic, subject)

    async def _refresh(self, topic: str, subject: str) -> HistoryMsg | None:
        head = await self._last(subject)
        if head is None:
            self._heads.pop(topic, None)
        else:
            self._remember(topic, head)
        return head

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
        self, topic: str, subject: str, epoch: str, seq: int, last: HistoryMsg | None
    ) -> int | None:
        """Write a marker after ``last``; its stream sequence, or ``None`` if ``last`` is no
        longer the subject's last message."""
        expected = 0 if last is None else last.stream_seq
        headers = {
            H_EPOCH: epoch,
            H_SEQ: str(seq),
            H_MARKER: "1",
            H_EXPECTED: str(expected),
            H_MSG_ID: digest(topic, epoch, "marker", seq, expected),
        }
        self._heads.pop(topic, None)
        ack, _ = await self._publish(subject, b"", headers)
        return None if ack is None else int(ack.seq)

    async def _purge(self, subject: str, below: int) -> None:
        """Delete the subject's messages with a stream sequence below ``below``."""
        await self._jsc().purge_stream(self.stream, seq=below, subject=subject)

    async def _get_key(self, name: str) -> KeyRecord | None:
        try:
            entry = await self._kvc().get(name)
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        epoch, seq, expires = orjson.loads(entry.value)
        return KeyRecord(epoch, seq, expires)

    async def _put_key(self, name: str, event: StoredEvent) -> None:
        expires = self._clock() + self.dedupe_window
        await self._kvc().put(name, orjson.dumps([event.epoch, event.seq, expires]))


async def _back_off(attempt: int) -> None:
    """Nothing for the first conflicts; then a short random pause so that writers that keep
    colliding on one topic spread out (at most 20 ms)."""
    if attempt >= 3:
        await asyncio.sleep(random.uniform(0, min(0.02, 0.001 * 2 ** (attempt - 3))))
