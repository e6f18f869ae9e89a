"""``Orchestrator``: runs workflows against a node: consume, transition, wake, relay.

One orchestrator process (or several sharing a database and a group name):

* joins the consumer group ``group`` of every input topic of its workflows; the node hands
  each event to one member (in a cluster the group runs on its tenant's ring owner), so
  several orchestrators share the work and take it over when one dies: its unacked
  deliveries go to the others after the group's ``ack_timeout`` (at once when its
  connection closes). Order: one orchestrator applies each topic's events in ``seq``
  order; with several, give an instance's events a ``key_header`` header (default ``key``)
  equal to their correlation key, and the group never has two of them in flight at once,
  so they are applied in order whoever takes them;
* applies deliveries in batches of up to ``batch`` through the
  :class:`~agentcast.orchestration.store.WorkflowStore` (one transaction per batch) and
  acks them only after the commit. When a batch fails because a handler raised, its events
  are applied one by one so that only the failing one is nacked (with ``retry_delay``;
  after the group's ``max_deliver`` attempts the node dead-letters it). A database error
  is not the events' fault: it ends :meth:`Orchestrator.run` (nothing is nacked; the node
  redelivers the unacked events to the next orchestrator, or to this one restarted);
* fires due timers and expectations (polling the wake-up table every ``wake_interval``
  seconds at most, and right away when a transition scheduled something earlier);
* runs an outbox relay over the same database (unless ``relay=False``: then run
  ``agentcast outbox relay`` on it), nudged after every commit that wrote messages.

Counters: :attr:`stats` (a :class:`~agentcast.orchestration.store.Counts` of everything
done, plus ``batches``, ``failures`` and ``wakeups``), exposed with the relay's families
on :attr:`metrics` (``metrics.registry``; see :mod:`agentcast.orchestration.metrics`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from agentcast.client import Client
from agentcast.client.groups import GroupDelivery, GroupSubscription
from agentcast.errors import ClientError, ConnectionClosed
from agentcast.orchestration.db import open_db
from agentcast.orchestration.engine import Engine
from agentcast.orchestration.metrics import OrchestratorMetrics
from agentcast.orchestration.store import Counts, InputFailed, WorkflowStore
from agentcast.orchestration.workflow import Workflow
from agentcast.outbox.metrics import RelayMetrics
from agentcast.outbox.relay import Relay

log = logging.getLogger("agentcast.orchestration")

DEFAULT_GROUP = "orchestrator"
DEFAULT_BATCH = 256
DEFAULT_ACK_TIMEOUT = 30.0
DEFAULT_WAKE_INTERVAL = 1.0
DEFAULT_RETRY_DELAY = 1.0
WAKE_BATCH = 100


class OrchestratorStats(Counts):
    """:class:`Counts` plus the orchestrator's own counters."""

    __slots__ = ("batches", "failures", "wakeups")

    def __init__(self) -> None:
        super().__init__()
        self.batches = 0
        self.failures = 0
        self.wakeups = 0

    def to_json(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in (*Counts.__slots__, *self.__slots__)}


class Orchestrator:
    """Runs ``workflows`` on the node at ``url`` with state in ``dsn`` (see module doc)."""

    def __init__(
        self,
        workflows: Sequence[Workflow],
        *,
        dsn: str,
        url: str,
        token: str | None = None,
        group: str = DEFAULT_GROUP,
        batch: int = DEFAULT_BATCH,
        ack_timeout: float = DEFAULT_ACK_TIMEOUT,
        max_deliver: int | None = None,
        key_header: str = "key",
        wake_interval: float = DEFAULT_WAKE_INTERVAL,
        retry_delay: float = DEFAULT_RETRY_DELAY,
        relay: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if batch < 1 or wake_interval <= 0 or ack_timeout <= 0:
            raise ValueError("batch, wake_interval and ack_timeout must be positive")
        self.engine = Engine(workflows)
        self.dsn = dsn
        self.url = url
        self.token = token
        self.group = group
        self.batch = batch
        self.ack_timeout = ack_timeout
        self.max_deliver = max_deliver
        self.key_header = key_header
        self.wake_interval = wake_interval
        self.retry_delay = retry_delay
        self.clock = clock
        self.store = WorkflowStore(open_db(dsn), self.engine)
        self.stats = OrchestratorStats()
        self.metrics = OrchestratorMetrics(self.stats)
        self.relay = (
            Relay.from_dsn(dsn, url, token=token, metrics=RelayMetrics(self.metrics.registry))
            if relay
            else None
        )
        self.ready = asyncio.Event()
        self._wake = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Open the store, connect, join the groups, and work until ``stop`` is set.

        Raises :class:`~agentcast.errors.ConnectionClosed` when the client gives up on the
        node, and the store's errors when the database fails (run it supervised).
        """
        await self.store.open()
        try:
            async with Client(self.url, token=self.token, name="orchestrator") as client:
                memberships = [
                    await client.join_group(
                        topic,
                        self.group,
                        ack_timeout=self.ack_timeout,
                        max_deliver=self.max_deliver,
                        max_in_flight=self.batch,
                        key_header=self.key_header,
                    )
                    for topic in self.engine.topics()
                ]
                async with asyncio.TaskGroup() as tasks:
                    workers = [tasks.create_task(self._consume(m)) for m in memberships]
                    workers.append(tasks.create_task(self._wake_loop()))
                    if self.relay is not None:
                        workers.append(tasks.create_task(self.relay.run(stop)))
                    self.ready.set()
                    log.info(
                        "orchestrating %s on %s (group %s)",
                        ", ".join(self.engine.workflows),
                        ", ".join(self.engine.topics()),
                        self.group,
                    )
                    await stop.wait()
                    for worker in workers[: len(memberships) + 1]:
                        worker.cancel()
        finally:
            await self.store.close()

    async def _consume(self, membership: GroupSubscription) -> None:
        while True:
            try:
                first = await membership.get()
            except (ClientError, ConnectionClosed) as exc:
                log.warning("group %s of %s ended: %s", self.group, membership.topic, exc)
                raise
            deliveries = [first]
            while len(deliveries) < self.batch:
                more = membership.get_nowait()
                if more is None:
                    break
                deliveries.append(more)
            await self._apply(deliveries)

    async def _apply(self, deliveries: list[GroupDelivery]) -> None:
        started = time.perf_counter()
        try:
            counts = await self.store.process([d.envelope for d in deliveries])
        except InputFailed:
            if len(deliveries) == 1:
                await self._failed(deliveries[0])
                return
            for delivery in deliveries:
                await self._apply([delivery])
            return
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        self.stats.batches += 1
        self._done(counts)
        await asyncio.gather(*(self._settle(d.ack()) for d in deliveries))

    async def _failed(self, delivery: GroupDelivery) -> None:
        envelope = delivery.envelope
        self.stats.failures += 1
        log.exception(
            "workflow input %s (%s#%d, attempt %d) failed",
            envelope.id,
            envelope.topic,
            envelope.seq,
            delivery.attempt,
        )
        await self._settle(delivery.nack(self.retry_delay, "workflow handler failed"))

    @staticmethod
    async def _settle(settling: Awaitable[bool]) -> None:
        """Ack or nack; a stale delivery or a lost connection is the node's to redeliver."""
        with contextlib.suppress(ClientError, TimeoutError, ConnectionClosed):
            await settling

    def _done(self, counts: Counts) -> None:
        self.stats.add(counts)
        if counts.sent and self.relay is not None:
            self.relay.nudge()
        if counts.rescheduled:
            self._wake.set()  # a wake-up may now be due earlier than the loop thinks

    async def _wake_loop(self) -> None:
        while True:
            now_us = int(self.clock() * 1_000_000)
            due = await self.store.due(now_us, WAKE_BATCH)
            failed = False
            for wakeup in due:
                try:
                    counts = await self.store.wake(wakeup)
                except InputFailed:
                    failed = True
                    self.stats.failures += 1
                    log.exception(
                        "wake-up %s of %s/%s failed", wakeup.wakeup, wakeup.workflow, wakeup.key
                    )
                    continue
                self.stats.wakeups += 1
                self._done(counts)
            if len(due) == WAKE_BATCH and not failed:
                continue
            next_us = await self.store.next_due_us()
            wait = self.wake_interval
            if next_us is not None and not failed:
                wait = min(wait, max(0.0, next_us / 1_000_000 - self.clock()))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
