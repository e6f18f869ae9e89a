"""Publish CrewAI's events onto agentcast session topics (the ``agentcast[crewai]`` extra).

:class:`AgentcastCrewListener` registers one handler on CrewAI's event bus for the crew,
agent, task, tool, LLM (including stream chunks) and flow events, maps each event with
:mod:`agentcast.integrations.crewai_mapping`, and publishes it with an agentcast
:class:`~agentcast.client.Client` to ``<tenant>.<session>.<prefix>.<kind>``.

Contracts:

* **Never blocks CrewAI.** The handler is a coroutine, so the bus runs it on its own event
  loop thread, never on the thread that runs the crew. It maps the event (bounded work)
  and offers the result to a bounded :class:`~agentcast.integrations.handoff.ThreadHandoff`
  feeding the listener's loop; it never waits for the network. When ``max_queue`` events
  are already waiting, the event is dropped and counted in :attr:`ListenerStats.dropped`
  (and logged once per burst): the crew is never slowed down.
* **Order.** The bus starts coroutine handlers in emission order on its single loop thread,
  and the hand-off is FIFO with one publishing task, which awaits each publish's ack before
  the next: events reach the node, and so every subscriber, in emission order.
  (CrewAI runs *sync* handlers on a thread pool, which could reorder them: that is why the
  handler is a coroutine.)
* **Resends are deduplicated.** Every publish carries the idempotency key
  ``crewai/<session>/<crewai event id>``, so an event emitted or replayed twice is
  delivered once within the node's dedupe window (on durable topics, the store's).
* **Failures.** A publish the node refuses or that times out is logged and counted in
  :attr:`ListenerStats.failed`; the events after it are still published.
* **Lifecycle.** :meth:`start` (or ``async with``) registers the handlers;
  :meth:`flush` waits until everything emitted so far is acked (or failed);
  :meth:`aclose` unregisters the handlers, flushes, stops the publishing task and closes
  the client if the listener opened it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from agentcast.client import Client
from agentcast.integrations.crewai_mapping import (
    EVENT_CLASSES,
    KINDS,
    CorrelationTracker,
    CrewEventRecord,
    TopicLayout,
    map_event,
)
from agentcast.integrations.handoff import ThreadHandoff
from agentcast.integrations.summary import SummaryLimits

log = logging.getLogger(__name__)

DEFAULT_MAX_QUEUE = 10_000
_INSTALL_HINT = "the CrewAI bridge needs the crewai package: pip install 'agentcast[crewai]'"


@dataclass(slots=True)
class ListenerStats:
    """What a listener did so far.

    ``queued``: events handed to the publisher; ``dropped``: events refused because the
    queue was full or the listener closed; ``published``: acked publishes (``duplicates``
    of them were resends the node had already sequenced); ``failed``: publishes refused or
    timed out; ``ignored``: events of kinds not bridged, or replays when ``replays=False``;
    ``mapping_errors``: events whose mapping raised (logged).
    """

    queued: int = 0
    dropped: int = 0
    published: int = 0
    duplicates: int = 0
    failed: int = 0
    ignored: int = 0
    mapping_errors: int = 0


def crewai_event_bus() -> Any:
    """CrewAI's process-wide event bus (imports CrewAI; raises ``ImportError`` with the
    install hint if it is missing)."""
    try:
        from crewai.events import crewai_event_bus as bus
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc
    return bus


def crewai_event_classes(kinds: Iterable[str]) -> list[type[Any]]:
    """The installed CrewAI event classes of ``kinds`` (names missing there are skipped)."""
    try:
        import crewai.events as events
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc
    classes: list[type[Any]] = []
    for kind in kinds:
        for name in EVENT_CLASSES[kind]:
            cls = getattr(events, name, None)
            if isinstance(cls, type):
                classes.append(cls)
    return classes


def _is_replaying() -> bool:
    """Whether CrewAI is dispatching a replayed (checkpoint-restored) event."""
    try:
        from crewai.events.event_bus import is_replaying
    except ImportError:
        return False
    return bool(is_replaying())


class AgentcastCrewListener:
    """Bridges CrewAI's event bus to one agentcast session.

    ``target`` is a connected :class:`~agentcast.client.Client` (the caller owns it) or a
    node WebSocket URL (the listener opens a client with ``token`` and closes it).
    Events go to ``<tenant>.<session>.<topic_prefix>.<kind>`` for each of ``kinds`` (default:
    all of :data:`~agentcast.integrations.crewai_mapping.KINDS`). ``correlation_id`` fixes
    the envelopes' correlation id; by default it is the root of each event's scope chain
    (the crew run's ``crew_kickoff_started`` event id). ``max_queue`` bounds the events
    waiting to be published; ``limits`` bounds each payload. ``replays=False`` skips
    events CrewAI replays from a checkpoint. ``close_timeout`` bounds the flush in
    :meth:`aclose` and each wait for the bus in :meth:`flush`. ``bus`` is the CrewAI event
    bus (default: the process-wide ``crewai_event_bus``).

    Raises :class:`~agentcast.errors.InvalidTopic` at construction if the topics would be
    invalid and ``ValueError`` for an unknown kind.
    """

    def __init__(
        self,
        target: Client | str,
        *,
        tenant: str,
        session: str,
        topic_prefix: str = "crewai",
        kinds: Iterable[str] | None = None,
        correlation_id: str | None = None,
        max_queue: int = DEFAULT_MAX_QUEUE,
        limits: SummaryLimits | None = None,
        replays: bool = True,
        close_timeout: float = 30.0,
        token: str | None = None,
        bus: Any = None,
    ) -> None:
        self.layout = TopicLayout(tenant, session, topic_prefix)
        self.kinds = tuple(KINDS if kinds is None else kinds)
        unknown = set(self.kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown kinds {sorted(unknown)}; known: {', '.join(KINDS)}")
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        self.correlation_id = correlation_id
        self.max_queue = max_queue
        self.limits = limits or SummaryLimits()
        self.replays = replays
        self.close_timeout = close_timeout
        self._stats = ListenerStats()
        self._unsent_at_close = 0
        self._owns_client = isinstance(target, str)
        self.client = Client(target, token=token) if isinstance(target, str) else target
        self._bus = bus
        self._classes: list[type[Any]] = []
        self._handoff: ThreadHandoff[CrewEventRecord] | None = None
        self._publisher: asyncio.Task[None] | None = None
        self._tracker = CorrelationTracker()
        self._done = 0
        self._progress = asyncio.Event()
        self._counter_lock = threading.Lock()
        self._dropping = False
        self._closed = False
        # One bound method, so the bus can find it again in ``off``.
        self._handler = self._on_event

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def stats(self) -> ListenerStats:
        """A snapshot of the listener's counters."""
        handoff = self._handoff
        with self._counter_lock:
            snapshot = ListenerStats(
                **{name: getattr(self._stats, name) for name in ListenerStats.__slots__}
            )
        if handoff is not None:
            snapshot.queued = handoff.accepted
            snapshot.dropped = handoff.dropped + self._unsent_at_close
        return snapshot

    @property
    def started(self) -> bool:
        """Whether the handlers are registered on the bus."""
        return self._publisher is not None and bool(self._classes)

    async def start(self) -> None:
        """Connect the client if the listener owns it, start the publishing task and
        register the handlers on the bus. Call it on the loop that should publish; a
        listener is started once (raises ``RuntimeError`` after that)."""
        if self._publisher is not None or self._closed:
            raise RuntimeError("a listener is started once")
        bus = self._bus if self._bus is not None else crewai_event_bus()
        classes = crewai_event_classes(self.kinds)
        if self._owns_client:
            await self.client.connect()
        self._bus = bus
        self._handoff = ThreadHandoff(asyncio.get_running_loop(), self.max_queue)
        self._publisher = asyncio.create_task(self._publish_loop(), name="agentcast-crewai")
        for cls in classes:
            bus.register_handler(cls, self._handler)
        self._classes = classes

    async def flush(self) -> None:
        """Wait until every event emitted before this call is acked or failed.

        First waits for the bus to finish dispatching what is pending (CrewAI's ``flush``,
        in a worker thread, for at most ``close_timeout`` seconds), then for the publishing
        task. Bound the whole wait with ``asyncio.timeout`` if needed.
        """
        handoff = self._handoff
        if handoff is None:
            return
        bus_flush = getattr(self._bus, "flush", None)
        if callable(bus_flush):
            await asyncio.to_thread(bus_flush, self.close_timeout)
        target = handoff.accepted
        while self._done < target:
            self._progress.clear()
            await self._progress.wait()

    async def aclose(self) -> None:
        """Unregister the handlers, flush (for at most ``close_timeout`` seconds; what is
        left then is counted as dropped), stop the publishing task and close an owned
        client. Idempotent."""
        for cls in self._classes:
            self._bus.off(cls, self._handler)
        self._classes = []
        publisher, handoff = self._publisher, self._handoff
        if publisher is None or handoff is None:
            return
        self._closed = True
        try:
            async with asyncio.timeout(self.close_timeout):
                await self.flush()
        except TimeoutError:
            log.warning("crewai listener closed with %d events unpublished", len(handoff))
        handoff.close()
        self._unsent_at_close = len(handoff)
        publisher.cancel()
        await asyncio.wait([publisher])
        self._publisher = None
        if self._owns_client:
            await self.client.close()

    async def __aenter__(self) -> AgentcastCrewListener:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- from CrewAI's threads ---------------------------------------------------------------

    async def _on_event(self, source: Any, event: Any) -> None:
        """The bus handler: a coroutine so the bus runs it in emission order on its loop."""
        self.offer(event)

    def offer(self, event: Any) -> bool:
        """Map ``event`` and queue it for publishing; return whether it was queued (not if
        the listener is not started, the event is not bridged, or the queue is full).

        Callable from any thread; never waits. Also usable without the bus, e.g. to
        publish events restored from elsewhere.
        """
        handoff = self._handoff
        if handoff is None:
            return False
        if not self.replays and _is_replaying():
            self._count("ignored")
            return False
        try:
            record = map_event(event, self.layout, self.limits)
        except Exception:
            log.exception("could not map the CrewAI event %r", getattr(event, "type", event))
            self._count("mapping_errors")
            return False
        if record is None or record.kind not in self.kinds:
            self._count("ignored")
            return False
        queued = handoff.offer(record)
        if queued:
            self._dropping = False
        elif not self._dropping and not handoff.closed:
            self._dropping = True
            log.warning(
                "crewai listener queue is full (%d events): dropping events", handoff.maxsize
            )
        return queued

    def _count(self, name: str) -> None:
        with self._counter_lock:
            setattr(self._stats, name, getattr(self._stats, name) + 1)

    # -- on the listener's loop ----------------------------------------------------------------

    async def _publish_loop(self) -> None:
        assert self._handoff is not None
        while True:
            record = await self._handoff.take()
            try:
                await self._publish(record)
            finally:
                self._done += 1
                self._progress.set()

    async def _publish(self, record: CrewEventRecord) -> None:
        correlation = self.correlation_id or self._tracker.root_of(record)
        try:
            ack = await self.client.publish(
                record.topic,
                record.payload,
                headers=record.headers,
                idempotency_key=record.idempotency_key,
                correlation_id=correlation,
                causation_id=record.causation_id,
            )
        except Exception as exc:
            self._count("failed")
            log.warning("could not publish the CrewAI event %s: %s", record.event_id, exc)
            return
        self._count("published")
        if ack is not None and ack.duplicate:
            self._count("duplicates")
