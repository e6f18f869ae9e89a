"""An agent-side consumer-group worker: run a handler for every delivery, ack or nack it.

Contracts:

* **At-least-once.** The handler may run more than once for one event: after an ack timeout,
  a reconnect, a node restart, or when another member took over. Make it idempotent, or
  pass ``idempotent=True`` (ids in memory) or ``idempotent=<path>`` (ids in a SQLite file,
  surviving a restart of the agent) to wrap it in an
  :class:`~agentcast.client.idempotent.IdempotentHandler`, which skips an event id it has
  already processed (and then serialises handler runs).
* **Success** (the handler returned): the delivery is acked, i.e. the event is done for the
  group and will not be delivered again.
* **Failure** (the handler raised an ``Exception``): the delivery is nacked with the
  exception text as reason and a delay of ``retry_initial * 2 ** (attempt - 1)`` seconds,
  capped at ``retry_max``; after the group's ``max_deliver`` attempts the node moves the
  event to the dead-letter topic with reason ``nack: <text>``.
* **Timeout.** A handler still running when the group's ``ack_timeout`` passes does not stop
  it, but the node gives the event to a member again; the late ack then fails with
  ``not_in_flight`` (counted in :attr:`Worker.not_in_flight`), or, when the event came back
  to this same connection, acks it for the new attempt too. Set ``ack_timeout`` above the
  slowest handler.
* **Concurrency.** At most ``concurrency`` handler runs at a time. ``max_in_flight`` (the
  deliveries the node sends ahead) defaults to ``concurrency``, so events do not wait in the
  local buffer while their ack timeout runs; the group's settings are fixed by the member
  that created it.
* **Stopping.** :meth:`Worker.stop` stops taking deliveries, lets running handlers finish
  (and settles them), leaves the group and returns from :meth:`Worker.run`. Cancelling
  :meth:`Worker.run` cancels running handlers without settling them; leaving the group then
  makes the node redeliver them at once to the other members. When the client is closed,
  :meth:`Worker.run` returns; when it fails, :meth:`Worker.run` raises its
  :class:`~agentcast.errors.ConnectionClosed`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from agentcast.client.dedupe import DEFAULT_DEDUPE_WINDOW
from agentcast.client.groups import GroupDelivery, GroupSubscription
from agentcast.client.idempotent import IdempotentHandler
from agentcast.errors import ClientError, ConnectionClosed
from agentcast.protocol.envelope import Envelope

if TYPE_CHECKING:
    from agentcast.client.client import Client

log = logging.getLogger("agentcast.client")

GroupHandler = Callable[[Envelope], Awaitable[object]]

MAX_NACK_DELAY = 86_400.0  # the node refuses longer nack delays


class Worker:
    """Competing-consumer processing of one group of one durable topic.

    ``await worker.run()`` joins the group and processes deliveries until :meth:`stop`, a
    cancellation, or the end of the client; or ``async with Worker(...)`` runs it in the
    background and stops it (gracefully) at the end of the block. See the module docstring
    for the contracts.

    ``ack_timeout``, ``max_deliver``, ``max_in_flight``, ``key_header`` and
    ``dead_letter_topic`` are the join options of
    :meth:`~agentcast.client.client.Client.join_group`.

    Counters: :attr:`handled` (handler runs that succeeded, including ids the idempotent
    wrapper skipped), :attr:`failed` (handler runs that raised), :attr:`acked` and
    :attr:`nacked` (settlements the node confirmed), :attr:`not_in_flight` (settlements the
    node refused because the delivery had moved on) and :attr:`settle_errors` (settlements
    that timed out or were refused otherwise). :attr:`joined` is set once the group is
    joined; :attr:`membership` is the group subscription.
    """

    def __init__(
        self,
        client: Client,
        topic: str,
        group: str,
        handler: GroupHandler,
        *,
        concurrency: int = 1,
        retry_initial: float = 1.0,
        retry_max: float = 60.0,
        idempotent: bool | str | Path = False,
        idempotent_window: int = DEFAULT_DEDUPE_WINDOW,
        ack_timeout: float | None = None,
        max_deliver: int | None = None,
        max_in_flight: int | None = None,
        key_header: str = "key",
        dead_letter_topic: str | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if retry_initial < 0 or retry_max < 0:
            raise ValueError("retry delays must be non-negative")
        self.client = client
        self.topic = topic
        self.group = group
        self.handler = handler
        self.concurrency = concurrency
        self.retry_initial = retry_initial
        self.retry_max = max(retry_initial, retry_max)
        self.idempotent = idempotent
        self.idempotent_window = idempotent_window
        self.ack_timeout = ack_timeout
        self.max_deliver = max_deliver
        self.max_in_flight = concurrency if max_in_flight is None else max_in_flight
        self.key_header = key_header
        self.dead_letter_topic = dead_letter_topic
        self.membership: GroupSubscription | None = None
        self.idempotent_handler: IdempotentHandler | None = None
        self.joined = asyncio.Event()
        self.handled = 0
        self.failed = 0
        self.acked = 0
        self.nacked = 0
        self.not_in_flight = 0
        self.settle_errors = 0
        self._stopping = asyncio.Event()
        self._started = False
        self._task: asyncio.Task[None] | None = None

    def retry_delay(self, attempt: int) -> float:
        """The nack delay after a failed ``attempt`` (1-based): exponential, capped."""
        exponent = min(max(attempt - 1, 0), 60)
        return min(self.retry_max, self.retry_initial * 2.0**exponent, MAX_NACK_DELAY)

    def stop(self) -> None:
        """Stop taking deliveries; :meth:`run` returns once running handlers are settled
        and the group is left. Idempotent; may be called before :meth:`run`."""
        self._stopping.set()

    async def run(self) -> None:
        """Join the group and process deliveries until stopped (see the class docstring).

        Raises what :meth:`~agentcast.client.client.Client.join_group` raises, and the
        client's :class:`~agentcast.errors.ConnectionClosed` if it fails while running.
        """
        if self._started:
            raise RuntimeError("a Worker runs once")
        self._started = True
        handler = self._wrapped_handler()
        try:
            membership = await self.client.join_group(
                self.topic,
                self.group,
                ack_timeout=self.ack_timeout,
                max_deliver=self.max_deliver,
                max_in_flight=self.max_in_flight,
                key_header=self.key_header,
                dead_letter_topic=self.dead_letter_topic,
            )
        except BaseException:
            self._close_idempotent()
            raise
        self.membership = membership
        self.joined.set()
        failure: ConnectionClosed | ClientError | None = None
        try:
            slots = asyncio.Semaphore(self.concurrency)
            async with asyncio.TaskGroup() as tasks:
                while not self._stopping.is_set():
                    await slots.acquire()
                    try:
                        delivery = await self._next(membership)
                    except (ConnectionClosed, ClientError) as exc:
                        failure = exc
                        delivery = None
                    if delivery is None:
                        slots.release()
                        break
                    tasks.create_task(self._process(handler, delivery, slots))
        finally:
            self._close_idempotent()
            await self._leave(membership)
        if failure is not None:
            raise failure

    async def __aenter__(self) -> Worker:
        """Run in the background; return once the group is joined (or raise why not)."""
        task = self._task = asyncio.create_task(self.run(), name="agentcast-worker")
        joined = asyncio.ensure_future(self.joined.wait())
        try:
            await asyncio.wait({task, joined}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            task.cancel()
            await asyncio.wait({task})
            raise
        finally:
            joined.cancel()
            await asyncio.wait({joined})
        if task.done():
            task.result()  # raises the join failure
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop gracefully (cancel instead if the block raised) and wait for the end."""
        task = self._task
        if task is None:
            return
        if exc is None:
            self.stop()
        else:
            task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if exc is None or (current is not None and current.cancelling()):
                raise

    # -- internals -----------------------------------------------------------------------

    def _wrapped_handler(self) -> GroupHandler:
        option = self.idempotent
        if option is False:
            return self.handler
        path = None if option is True else option
        wrapped = IdempotentHandler(self.handler, window=self.idempotent_window, path=path)
        self.idempotent_handler = wrapped
        return wrapped

    def _close_idempotent(self) -> None:
        if self.idempotent_handler is not None:
            self.idempotent_handler.close()

    async def _next(self, membership: GroupSubscription) -> GroupDelivery | None:
        """The next delivery, or ``None`` once stopping or the membership ended."""
        if self._stopping.is_set():
            return None
        getter = asyncio.ensure_future(_receive(membership))
        stopper = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (getter, stopper):
                if not waiter.done():
                    waiter.cancel()
            await asyncio.wait({getter, stopper})
        if getter.cancelled():
            return None
        return getter.result()

    async def _process(
        self, handler: GroupHandler, delivery: GroupDelivery, slots: asyncio.Semaphore
    ) -> None:
        """Run the handler for one delivery and settle it; never raises an ``Exception``."""
        try:
            try:
                await handler(delivery.envelope)
            except Exception as exc:
                self.failed += 1
                reason = str(exc) or type(exc).__name__
                delay = self.retry_delay(delivery.attempt)
                if await self._settle(delivery, delivery.nack(delay, reason)):
                    self.nacked += 1
            else:
                self.handled += 1
                if await self._settle(delivery, delivery.ack()):
                    self.acked += 1
        finally:
            slots.release()

    async def _settle(self, delivery: GroupDelivery, settling: Awaitable[bool]) -> bool:
        try:
            return await settling
        except ClientError as exc:
            if exc.code == "not_in_flight":
                self.not_in_flight += 1
                log.info("agentcast worker: %r moved on before it was settled", delivery)
            else:
                self.settle_errors += 1
                log.warning("agentcast worker: settling %r was refused: %s", delivery, exc)
        except TimeoutError:
            self.settle_errors += 1
            log.warning("agentcast worker: settling %r timed out", delivery)
        return False

    async def _leave(self, membership: GroupSubscription) -> None:
        try:
            await membership.leave()
        except (ClientError, TimeoutError, ConnectionClosed) as exc:
            log.warning("agentcast worker could not leave group %r: %s", self.group, exc)


async def _receive(membership: GroupSubscription) -> GroupDelivery | None:
    """The next delivery, or ``None`` after a requested end (a failed end raises)."""
    return await anext(membership, None)
