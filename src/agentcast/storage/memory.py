"""An in-memory :class:`~agentcast.storage.base.HistoryStore`: bounded, fast, not durable.

Each topic keeps a ring of its newest ``max_events_per_topic`` events. The store picks a new
random epoch for every topic it sees, so a new instance (a restarted node) starts every topic
on a fresh epoch: history lost on restart is announced, never silently continued.

Also home of the small helpers every store shares (:func:`rfc3339_micros`,
:func:`new_epoch`, :func:`retention_cutoff`).
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice

from agentcast.storage.base import AppendResult, EventDraft, StoredEvent, TopicPosition

_UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def rfc3339_micros(value: str) -> int:
    """Microseconds since the Unix epoch of an RFC 3339 time (no offset means UTC).

    Stores compare times through this number, never as strings, so ``...:00Z``,
    ``...:00.5Z`` and ``...:00+02:00`` order correctly against each other.
    """
    try:
        moment = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise ValueError(f"not an RFC 3339 time: {value!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - _UNIX_EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def new_epoch(previous: str | None = None) -> str:
    """A short random epoch identifier, different from ``previous``."""
    while True:
        epoch = secrets.token_hex(4)
        if epoch != previous:
            return epoch


def retention_cutoff(last_seq: int, keep_last: int, first_new_seq: int | None = None) -> int:
    """The lowest seq a trim keeps: retained events with a smaller seq are deleted.

    ``keep_last`` keeps the seqs above ``last_seq - keep_last``. With age retention,
    ``first_new_seq`` is the lowest retained seq whose event is not older than the bound
    (``last_seq + 1`` if every event is older): only the run of oldest events before it is
    deleted, so retained history stays one contiguous range of seqs even when event times
    are not monotonic.
    """
    if keep_last < 0:
        raise ValueError("keep_last must be >= 0")
    cutoff = last_seq - keep_last + 1
    return cutoff if first_new_seq is None else max(cutoff, first_new_seq)


@dataclass(slots=True)
class _Topic:
    epoch: str
    last_seq: int = 0
    events: deque[tuple[int, StoredEvent]] = field(default_factory=deque)

    @property
    def first_seq(self) -> int:
        return self.events[0][1].seq if self.events else self.last_seq + 1

    def from_seq(self, seq: int) -> Iterator[tuple[int, StoredEvent]]:
        """Retained events with ``seq >= seq`` (retained seqs are contiguous)."""
        return islice(self.events, max(0, seq - self.first_seq), None)


class MemoryHistoryStore:
    """History in process memory, bounded per topic and in idempotency keys.

    Not durable: history and keys vanish with the instance, and a new instance gives every
    topic a new epoch. ``max_events_per_topic`` bounds each topic's ring (the oldest event
    is dropped, ``first_seq`` moves, the epoch stays). Idempotency keys are scoped per topic
    and remembered for ``dedupe_window`` seconds of ``clock`` and at most
    ``max_idempotency_keys`` keys (oldest forgotten first). A duplicate returns the original
    event even if it has since left the ring.
    """

    def __init__(
        self,
        max_events_per_topic: int = 10_000,
        dedupe_window: float = 120.0,
        *,
        max_idempotency_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_events_per_topic < 1:
            raise ValueError("max_events_per_topic must be >= 1")
        if max_idempotency_keys < 1:
            raise ValueError("max_idempotency_keys must be >= 1")
        self.max_events_per_topic = max_events_per_topic
        self.dedupe_window = dedupe_window
        self.max_idempotency_keys = max_idempotency_keys
        self._clock = clock
        self._topics: dict[str, _Topic] = {}
        self._keys: OrderedDict[tuple[str, str], tuple[float, StoredEvent]] = OrderedDict()

    async def open(self) -> None:
        """Nothing to connect."""

    async def close(self) -> None:
        """Nothing to release; the history stays readable until the instance is dropped."""

    async def append(self, drafts: Sequence[EventDraft]) -> list[AppendResult]:
        times = [rfc3339_micros(draft.time) for draft in drafts]  # may raise: nothing stored
        now = self._clock()
        self._expire_keys(now)
        results: list[AppendResult] = []
        for draft, micros in zip(drafts, times, strict=True):
            topic = self._topic(draft.topic)
            key = None if draft.idempotency_key is None else (draft.topic, draft.idempotency_key)
            if key is not None:
                seen = self._keys.get(key)
                if seen is not None and seen[1].epoch == topic.epoch:
                    results.append(AppendResult(seen[1], duplicate=True))
                    continue
            topic.last_seq += 1
            event = StoredEvent.from_draft(draft, topic.epoch, topic.last_seq)
            if len(topic.events) >= self.max_events_per_topic:
                topic.events.popleft()
            topic.events.append((micros, event))
            if key is not None:
                self._remember(key, now, event)
            results.append(AppendResult(event))
        return results

    async def read(self, topic: str, after_seq: int, limit: int) -> list[StoredEvent]:
        state = self._topics.get(topic)
        if state is None or limit <= 0:
            return []
        return [event for _, event in islice(state.from_seq(after_seq + 1), limit)]

    async def read_last(self, topic: str, count: int) -> list[StoredEvent]:
        state = self._topics.get(topic)
        if state is None or count <= 0:
            return []
        return [event for _, event in islice(state.events, max(0, len(state.events) - count), None)]

    async def read_since_time(self, topic: str, time: str, limit: int) -> list[StoredEvent]:
        since = rfc3339_micros(time)
        state = self._topics.get(topic)
        if state is None or limit <= 0:
            return []
        matching = (event for micros, event in state.events if micros >= since)
        return list(islice(matching, limit))

    async def position(self, topic: str) -> TopicPosition | None:
        state = self._topics.get(topic)
        if state is None:
            return None
        return TopicPosition(state.epoch, state.last_seq, state.first_seq)

    async def trim(self, topic: str, keep_last: int, older_than: str | None) -> int:
        retention_cutoff(0, keep_last)  # validates keep_last
        state = self._topics.get(topic)
        if state is None:
            return 0
        first_new_seq = None
        if older_than is not None:
            bound = rfc3339_micros(older_than)
            first_new_seq = next(
                (event.seq for micros, event in state.events if micros >= bound),
                state.last_seq + 1,
            )
        cutoff = retention_cutoff(state.last_seq, keep_last, first_new_seq)
        deleted = 0
        while state.events and state.events[0][1].seq < cutoff:
            state.events.popleft()
            deleted += 1
        return deleted

    async def topics(self) -> list[str]:
        return sorted(self._topics)

    async def reset(self, topic: str) -> str:
        state = self._topics.get(topic)
        epoch = new_epoch(None if state is None else state.epoch)
        self._topics[topic] = _Topic(epoch)
        return epoch

    def _topic(self, name: str) -> _Topic:
        state = self._topics.get(name)
        if state is None:
            state = self._topics[name] = _Topic(new_epoch())
        return state

    def _remember(self, key: tuple[str, str], now: float, event: StoredEvent) -> None:
        keys = self._keys
        keys.pop(key, None)
        while len(keys) >= self.max_idempotency_keys:
            keys.popitem(last=False)
        keys[key] = (now + self.dedupe_window, event)

    def _expire_keys(self, now: float) -> None:
        keys = self._keys
        while keys:
            expires, _ = next(iter(keys.values()))
            if expires > now:
                break
            keys.popitem(last=False)
