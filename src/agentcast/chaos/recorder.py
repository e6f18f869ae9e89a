"""SDK clients that drive traffic and write what they saw into a :class:`History`.

* :func:`publish_numbered` publishes ``count`` numbered events to one topic through an SDK
  :class:`~agentcast.client.Client`, each with its own idempotency key, at a bounded rate and
  with a bounded number in flight, and records every acknowledgement as an
  :class:`~agentcast.chaos.invariants.Ack`.
* :class:`Recorder` subscribes through the SDK (which resumes after reconnects and drops
  duplicates) and records each event the application receives as a
  :class:`~agentcast.chaos.invariants.Receipt`, with its publish-to-receipt latency and the
  phase current at receipt.
* :meth:`Recorder.wait_for_all` waits, on receipt events rather than sleeps, until every
  required subscriber received every acknowledged event, or a deadline passes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from agentcast.chaos.invariants import BASELINE, Ack, History, Receipt
from agentcast.client import Client, Envelope, Subscription
from agentcast.errors import AgentcastError

SDK_OPTIONS: dict[str, Any] = {
    "backoff_initial": 0.02,
    "backoff_max": 0.2,
    "max_reconnect_attempts": 10_000,
    "ack_timeout": 30.0,
    "connect_timeout": 5.0,
}


class Phase:
    """The scenario's current phase label (``baseline``, ``fault``, ``recovery``, ...)."""

    def __init__(self, name: str = BASELINE) -> None:
        self.name = name


def event_payload(key: str, pad: str) -> dict[str, Any]:
    """A recorded event's payload: its key and its publish time (monotonic seconds)."""
    return {"k": key, "t": time.monotonic(), "p": pad}


class Recorder:
    """Records acks and receipts into :attr:`history` as they happen."""

    def __init__(self, history: History | None = None, phase: Phase | None = None) -> None:
        self.history = history or History()
        self.phase = phase or Phase()
        self.failed_publishes = 0
        self._changed = asyncio.Event()

    # -- publishing ----------------------------------------------------------------------

    async def publish_numbered(
        self,
        client: Client,
        topic: str,
        prefix: str,
        count: int,
        *,
        rate: float,
        in_flight: int = 16,
        pad_bytes: int = 0,
        stop: asyncio.Event | None = None,
    ) -> int:
        """Publish events ``prefix-1`` .. ``prefix-count`` at ``rate`` per second (``0``:
        as fast as ``in_flight`` allows), stopping early when ``stop`` is set; return how
        many were issued. Every ack is recorded; a publish that fails is only counted."""
        pad = "x" * pad_bytes
        slots = asyncio.Semaphore(in_flight)
        start = time.monotonic()
        issued = 0

        async def one(n: int) -> None:
            key = f"{prefix}-{n}"
            try:
                ack = await client.publish(topic, event_payload(key, pad), idempotency_key=key)
            except (AgentcastError, TimeoutError, OSError):
                self.failed_publishes += 1
                return
            finally:
                slots.release()
            if ack is not None:
                self.history.acked.append(Ack(topic, key, ack.seq, ack.epoch))
                self._changed.set()

        async with asyncio.TaskGroup() as group:
            for n in range(1, count + 1):
                if stop is not None and stop.is_set():
                    break
                if rate > 0:
                    delay = start + (n - 1) / rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                await slots.acquire()
                group.create_task(one(n))
                issued += 1
        return issued

    # -- receiving -----------------------------------------------------------------------

    def record(self, name: str, event: Envelope) -> None:
        """Record ``event`` as received by subscriber ``name`` now."""
        payload = event.payload
        key, sent = "", None
        if isinstance(payload, dict):
            key = str(payload.get("k", ""))
            stamp = payload.get("t")
            if isinstance(stamp, int | float):
                sent = float(stamp)
        latency = None if sent is None else time.monotonic() - sent
        receipt = Receipt(event.topic, key, event.seq, event.epoch, latency, self.phase.name)
        self.history.received.setdefault(name, []).append(receipt)
        self._changed.set()

    async def consume(self, name: str, sub: Subscription) -> None:
        """Record every event of ``sub`` until the subscription ends (or the task is
        cancelled)."""
        self.history.received.setdefault(name, [])
        try:
            async for event in sub:
                self.record(name, event)
        except AgentcastError:
            return

    def require(self, name: str, *topics: str) -> None:
        """Subscriber ``name`` must receive every acked event of ``topics``."""
        self.history.required[name] = tuple(sorted({*self.history.required.get(name, ()), *topics}))

    def missing(self) -> int:
        """Required deliveries not received yet."""
        acked: dict[str, set[str]] = {}
        for ack in self.history.acked:
            acked.setdefault(ack.topic, set()).add(ack.key)
        total = 0
        for name, topics in self.history.required.items():
            seen = {(r.topic, r.key) for r in self.history.received.get(name, [])}
            for topic in topics:
                total += sum((topic, key) not in seen for key in acked.get(topic, ()))
        return total

    async def wait_until(self, done: Callable[[], bool], within: float) -> bool:
        """Wait until ``done()`` holds, re-checking on every recorded ack or receipt;
        whether it held within ``within`` seconds."""
        deadline = time.monotonic() + within
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(remaining, 1.0))
            except TimeoutError:
                continue
        return True

    async def wait_for_all(self, within: float) -> bool:
        """Wait until no required delivery is missing (see :meth:`missing`)."""
        return await self.wait_until(lambda: self.missing() == 0, within)
