"""The durable benchmark's load process: ``python -m agentcast.bench.durable_load ...``.

Two phases, chosen by ``--phase``, each bounded in time:

* ``publish``: open ``publishers`` connections (``hello`` each, in batches of 100, at most
  ``connect_timeout`` seconds in all), then every connection publishes its share of
  ``messages`` (split as evenly as possible) to its own durable topic
  ``bench.durable.p<i>`` with ``ack: true`` and at most ``window`` unanswered, until every
  publish is answered or ``phase_timeout`` seconds have passed. The wall time runs from the
  first send to the last ack; the server's CPU time is read right before the first send and
  right after the last answer.
* ``resume``: one connection publishes ``resume_events`` acked events to
  ``bench.durable.resume`` the same way (``window`` in flight), noting the epoch of the
  acks; a second connection then sends ``subscribe`` with ``since: {epoch, seq: 0}`` and the
  phase measures the time from that send to the arrival of the last event, checks that the
  events were exactly ``seq`` 1..R in order, and finally sends a ``ping`` whose reply proves
  no further event was queued.

The process prints one JSON object of raw measurements on stdout (see :func:`run_publish`
and :func:`run_resume`); progress goes to stderr unless ``quiet``. Exit status 0 with a
result, 2 when a phase could not run (message on stderr), 3 when the parent went away.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from picows import WSMsgType, WSTransport, ws_connect

from agentcast.bench.durable_clients import (
    RESUME_TOPIC,
    AckTally,
    DurablePublisher,
    ResumeSubscriber,
    hello_frame,
    ping_frame,
    publisher_topic,
    resume_frame,
)
from agentcast.bench.load import LoadError, Progress, ServerProbe, report_until_orphaned
from agentcast.bench.process import pin_to_cpu, raise_nofile_limit
from agentcast.bench.stats import latency_summary_ms
from agentcast.runtime import run

PHASES = ("publish", "resume")
CONNECT_CONCURRENCY = 100
CLIENT_READ_BUFFER = 64 * 1024
CLIENT_MAX_FRAME = 4 * 1024 * 1024
PING_TIMEOUT = 10.0


@dataclass(slots=True, frozen=True)
class DurablePlan:
    """What one load run does."""

    url: str
    server_pid: int
    phase: str
    publishers: int
    messages: int
    size: int
    window: int
    resume_events: int
    connect_timeout: float
    phase_timeout: float
    quiet: bool = False

    def to_args(self) -> list[str]:
        """The command-line arguments that :func:`parse_plan` turns back into this plan."""
        args = [
            f"--url={self.url}",
            f"--server-pid={self.server_pid}",
            f"--phase={self.phase}",
            f"--publishers={self.publishers}",
            f"--messages={self.messages}",
            f"--size={self.size}",
            f"--window={self.window}",
            f"--resume-events={self.resume_events}",
            f"--connect-timeout={self.connect_timeout}",
            f"--phase-timeout={self.phase_timeout}",
        ]
        if self.quiet:
            args.append("--quiet")
        return args


def parse_plan(argv: list[str] | None) -> tuple[DurablePlan, int | None]:
    """Parse the load's command line into a plan and the CPU to pin to."""
    parser = argparse.ArgumentParser(prog="python -m agentcast.bench.durable_load")
    parser.add_argument("--url", required=True)
    parser.add_argument("--server-pid", type=int, required=True)
    parser.add_argument("--phase", choices=PHASES, required=True)
    parser.add_argument("--publishers", type=int, default=1)
    parser.add_argument("--messages", type=int, default=0)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--resume-events", type=int, default=0)
    parser.add_argument("--connect-timeout", type=float, required=True)
    parser.add_argument("--phase-timeout", type=float, required=True)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--cpu", type=int, default=None)
    args = parser.parse_args(argv)
    plan = DurablePlan(
        url=args.url,
        server_pid=args.server_pid,
        phase=args.phase,
        publishers=max(1, args.publishers),
        messages=max(0, args.messages),
        size=max(0, args.size),
        window=max(1, args.window),
        resume_events=max(0, args.resume_events),
        connect_timeout=args.connect_timeout,
        phase_timeout=args.phase_timeout,
        quiet=args.quiet,
    )
    return plan, args.cpu


def shares(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` counts that differ by at most one (larger first)."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


async def _connect(
    url: str, factory: Callable[[asyncio.Future[None]], Any], client: str
) -> tuple[WSTransport, Any]:
    """Open one connection whose listener ``factory(hello_ok)`` builds; send ``hello`` and
    wait for its ok."""
    hello_ok: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    transport, listener = await ws_connect(
        lambda: factory(hello_ok),
        url,
        read_buffer_init_size=CLIENT_READ_BUFFER,
        max_frame_size=CLIENT_MAX_FRAME,
    )
    transport.send(WSMsgType.TEXT, hello_frame(client))
    await hello_ok
    return transport, listener


async def _connect_all(
    plan: DurablePlan,
    count: int,
    opener: Callable[[int], Awaitable[tuple[WSTransport, Any]]],
    opened: list[WSTransport],
    progress: Progress,
) -> list[Any]:
    """Open ``count`` connections with ``opener(i)``, at most 100 at a time, within the
    plan's connect timeout; every transport is appended to ``opened`` (for cleanup)."""
    listeners: list[Any] = []

    async def one(index: int) -> None:
        transport, listener = await opener(index)
        opened.append(transport)
        listeners.append(listener)

    def status() -> str:
        return f"connecting: {len(listeners)}/{count} ready"

    with progress.showing(status):
        try:
            async with asyncio.timeout(plan.connect_timeout):
                for first in range(0, count, CONNECT_CONCURRENCY):
                    last = min(count, first + CONNECT_CONCURRENCY)
                    await asyncio.gather(*(one(i) for i in range(first, last)))
        except TimeoutError:
            raise LoadError(
                f"only {len(listeners)} of {count} connections were ready after "
                f"{plan.connect_timeout:g} s"
            ) from None
        except (OSError, ConnectionError) as exc:
            raise LoadError(f"connecting failed: {exc!r}") from None
    return listeners


async def _publish(
    publishers: list[DurablePublisher], tally: AckTally, budget: float, progress: Progress
) -> tuple[int, int]:
    """Start every publisher, wait for every answer (at most ``budget`` seconds); return the
    ``time.monotonic_ns()`` of the first send and of the end (last ack, or the timeout)."""
    total = sum(p.count for p in publishers)

    def status() -> str:
        sent = sum(p.sent for p in publishers)
        return f"publishing: {sent}/{total} sent, {tally.acks} acked, {tally.errors} refused"

    with progress.showing(status):
        first_ns = time.monotonic_ns()
        for publisher in publishers:
            publisher.start()
        try:
            async with asyncio.timeout(budget):
                await tally.all_done.wait()
        except TimeoutError:
            for publisher in publishers:
                publisher.stop()
            return first_ns, time.monotonic_ns()
    return first_ns, tally.last_ack_ns or time.monotonic_ns()


def _publish_figures(
    tally: AckTally, publishers: list[DurablePublisher], first_ns: int, end_ns: int
) -> dict[str, Any]:
    return {
        "sent": sum(p.sent for p in publishers),
        "acked": tally.acks,
        "publish_errors": tally.errors,
        "first_error": tally.first_error,
        "seq_errors": tally.seq_errors,
        "disconnects": tally.disconnects,
        "duration_s": round((end_ns - first_ns) / 1e9, 6),
        "latency_ms": latency_summary_ms(tally.latencies_ns),
    }


async def run_publish(
    plan: DurablePlan, opened: list[WSTransport], progress: Progress
) -> dict[str, Any]:
    """The ``publish`` phase; keys: ``connect_s``, ``sent``, ``acked``, ``publish_errors``,
    ``first_error``, ``seq_errors`` (acks whose ``seq`` did not follow the previous one of
    the same topic), ``disconnects``, ``duration_s`` (first send to last ack),
    ``latency_ms`` ({p50, p99, max} of send to ack), ``server_cpu_s`` and ``load_cpu_s``."""
    probe = ServerProbe(plan.server_pid)
    counts = shares(plan.messages, plan.publishers)
    tally = AckTally(plan.publishers)

    def opener(i: int) -> Awaitable[tuple[WSTransport, Any]]:
        def factory(hello_ok: asyncio.Future[None]) -> DurablePublisher:
            return DurablePublisher(
                hello_ok, tally, publisher_topic(i), counts[i], plan.size, plan.window
            )

        return _connect(plan.url, factory, f"bench-pub-{i}")

    started = time.monotonic()
    publishers = await _connect_all(plan, plan.publishers, opener, opened, progress)
    connect_s = round(time.monotonic() - started, 3)
    cpu_before = probe.cpu_seconds()
    load_cpu_before = time.process_time()
    first_ns, end_ns = await _publish(publishers, tally, plan.phase_timeout, progress)
    server_cpu = probe.cpu_seconds() - cpu_before
    load_cpu = time.process_time() - load_cpu_before
    return {
        "connect_s": connect_s,
        **_publish_figures(tally, publishers, first_ns, end_ns),
        "server_cpu_s": round(server_cpu, 3),
        "load_cpu_s": round(load_cpu, 3),
    }


async def run_resume(
    plan: DurablePlan, opened: list[WSTransport], progress: Progress
) -> dict[str, Any]:
    """The ``resume`` phase; keys: ``events``, ``published`` (figures of the R publishes:
    ``acked``, ``duration_s``, ...), ``epoch``, ``recovered`` (the reply's flag),
    ``received``, ``out_of_order`` (events whose ``seq`` was not their position in 1..R),
    ``extra`` (events after the R-th), ``reply_ms``, ``first_event_ms``, ``resume_s`` (send of
    the subscribe to the R-th event; ``None`` if it never came), ``server_cpu_s``, ``error``."""
    probe = ServerProbe(plan.server_pid)
    events = plan.resume_events
    tally = AckTally(1)

    def publisher_factory(hello_ok: asyncio.Future[None]) -> DurablePublisher:
        return DurablePublisher(hello_ok, tally, RESUME_TOPIC, events, plan.size, plan.window)

    publishers = await _connect_all(
        plan,
        1,
        lambda _: _connect(plan.url, publisher_factory, "bench-resume-pub"),
        opened,
        progress,
    )
    first_ns, end_ns = await _publish(publishers, tally, plan.phase_timeout, progress)
    result: dict[str, Any] = {
        "events": events,
        "published": _publish_figures(tally, publishers, first_ns, end_ns),
        "epoch": tally.epoch,
    }
    if tally.acks != events or (events and tally.epoch is None):
        raise LoadError(f"only {tally.acks} of {events} resume events were acked")
    subscribers = await _connect_all(
        plan,
        1,
        lambda _: _connect(plan.url, lambda ok: ResumeSubscriber(ok, events), "bench-resume-sub"),
        opened,
        progress,
    )
    subscriber: ResumeSubscriber = subscribers[0]

    def status() -> str:
        return f"resuming: {subscriber.received}/{events} events"

    cpu_before = probe.cpu_seconds()
    sent_ns = time.monotonic_ns()
    with progress.showing(status), contextlib.suppress(TimeoutError):
        async with asyncio.timeout(plan.phase_timeout):
            subscriber.transport.send(
                WSMsgType.TEXT, resume_frame(RESUME_TOPIC, tally.epoch or "", 0)
            )
            await subscriber.complete.wait()
    server_cpu = probe.cpu_seconds() - cpu_before
    if not subscriber.disconnected:
        subscriber.transport.send(WSMsgType.TEXT, ping_frame())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(PING_TIMEOUT):
                await subscriber.pinged.wait()
    reply = subscriber.reply or {}

    def since_sent(ns: int) -> float | None:
        return round((ns - sent_ns) / 1e6, 3) if ns else None

    last = since_sent(subscriber.last_ns)
    result.update(
        recovered=(reply.get("result") or {}).get("recovered"),
        error=reply.get("error"),
        received=subscriber.received,
        out_of_order=subscriber.out_of_order,
        extra=subscriber.extra,
        disconnected=subscriber.disconnected,
        reply_ms=since_sent(subscriber.reply_ns),
        first_event_ms=since_sent(subscriber.first_ns),
        resume_s=None if last is None else round(last / 1e3, 6),
        server_cpu_s=round(server_cpu, 3),
    )
    return result


async def run_load(plan: DurablePlan) -> dict[str, Any]:
    """Run the plan's phase and return its raw measurements; always closes every socket."""
    progress = Progress(plan.quiet)
    opened: list[WSTransport] = []
    stop_ticking = asyncio.Event()
    ticker = asyncio.create_task(progress.tick(stop_ticking))
    try:
        if plan.phase == "publish":
            return await run_publish(plan, opened, progress)
        return await run_resume(plan, opened, progress)
    finally:
        stop_ticking.set()
        await ticker
        for transport in opened:
            transport.disconnect(graceful=False)


async def run_until_orphaned(plan: DurablePlan) -> int:
    """Run the load, but give up (status 3) if the parent process exits first."""
    return await report_until_orphaned(run_load(plan))


def main(argv: list[str] | None = None) -> int:
    plan, cpu = parse_plan(argv)
    raise_nofile_limit()
    pin_to_cpu(cpu)
    return run(run_until_orphaned(plan))


if __name__ == "__main__":
    raise SystemExit(main())
