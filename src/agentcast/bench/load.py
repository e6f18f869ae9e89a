"""The fan-out load process: ``python -m agentcast.bench.load --url ... --server-pid ...``.

Phases, each bounded in time:

1. **connect**: ``subscribers`` picows connections in batches of at most ``concurrency``;
   each sends ``hello`` + ``subscribe`` and waits for the ok (``connect_timeout`` in all).
   The server's RSS is read before and after.
2. **publish** (skipped when ``messages`` is 0, the ``--idle`` mode): one publisher sends
   ``messages`` publishes with ``ack: true``: as fast as possible with at most
   :data:`MAX_IN_FLIGHT` unanswered (``rate`` 0), or at ``rate`` per second on a fixed
   schedule (message ``i`` leaves at ``start + i / rate``, so delays never accumulate).
3. **drain**: wait until every subscriber has every event, at most ``drain_timeout`` seconds
   after the last publish.

The server's CPU time (user + system) is read right before the first publish and right after
the drain. The process prints one JSON object of raw measurements on stdout (see
:func:`run_load`); progress goes to stderr unless ``quiet``. Exit status 0 with a result,
2 when a phase failed (message on stderr), 3 when the parent went away.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import psutil
from picows import ws_connect

from agentcast.bench.load_clients import Publisher, Subscriber, Tally
from agentcast.bench.peers.cdf import latency_cdf_ms
from agentcast.bench.peers.clients import WIRES, wire_classes
from agentcast.bench.process import exit_with_parent, pin_to_cpu, raise_nofile_limit
from agentcast.bench.stats import latency_summary_ms
from agentcast.runtime import run

MAX_IN_FLIGHT = 1000
CLIENT_READ_BUFFER = 4096
CLIENT_MAX_FRAME = 4 * 1024 * 1024
PROGRESS_INTERVAL = 1.0
PUBLISH_GRACE = 60.0


class LoadError(Exception):
    """A phase of the load could not complete (the message says which and why)."""


@dataclass(slots=True, frozen=True)
class LoadPlan:
    """What one load run does; ``messages`` 0 means open the connections only."""

    url: str
    server_pid: int
    subscribers: int
    messages: int
    size: int
    rate: float
    connect_timeout: float
    drain_timeout: float
    concurrency: int = 100
    quiet: bool = False
    wire: str = "agentcast"
    extra_pids: tuple[int, ...] = ()

    def to_args(self) -> list[str]:
        """The command-line arguments that :func:`parse_plan` turns back into this plan."""
        args = [
            f"--url={self.url}",
            f"--server-pid={self.server_pid}",
            f"--subscribers={self.subscribers}",
            f"--messages={self.messages}",
            f"--size={self.size}",
            f"--rate={self.rate}",
            f"--connect-timeout={self.connect_timeout}",
            f"--drain-timeout={self.drain_timeout}",
            f"--concurrency={self.concurrency}",
        ]
        if self.quiet:
            args.append("--quiet")
        if self.wire != "agentcast":
            args.append(f"--wire={self.wire}")
        args.extend(f"--extra-pid={pid}" for pid in self.extra_pids)
        return args


def parse_plan(argv: list[str] | None) -> tuple[LoadPlan, int | None]:
    """Parse the load's command line into a plan and the CPU to pin to."""
    parser = argparse.ArgumentParser(prog="python -m agentcast.bench.load")
    parser.add_argument("--url", required=True)
    parser.add_argument("--server-pid", type=int, required=True)
    parser.add_argument("--subscribers", type=int, required=True)
    parser.add_argument("--messages", type=int, required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--connect-timeout", type=float, required=True)
    parser.add_argument("--drain-timeout", type=float, required=True)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--cpu", type=int, default=None)
    parser.add_argument("--wire", choices=WIRES, default="agentcast")
    parser.add_argument("--extra-pid", type=int, action="append", default=[])
    args = parser.parse_args(argv)
    plan = LoadPlan(
        url=args.url,
        server_pid=args.server_pid,
        subscribers=args.subscribers,
        messages=args.messages,
        size=args.size,
        rate=args.rate,
        connect_timeout=args.connect_timeout,
        drain_timeout=args.drain_timeout,
        concurrency=max(1, args.concurrency),
        quiet=args.quiet,
        wire=args.wire,
        extra_pids=tuple(args.extra_pid),
    )
    return plan, args.cpu


class Progress:
    """Prints ``status()`` on stderr once a second while active (nothing when quiet)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.status: Callable[[], str] | None = None

    @contextlib.contextmanager
    def showing(self, status: Callable[[], str]) -> Iterator[None]:
        self.status = status
        try:
            yield
        finally:
            self.status = None
            self.say(status())

    def say(self, text: str) -> None:
        if not self.quiet:
            print(f"  {text}", file=sys.stderr, flush=True)

    async def tick(self, stop: asyncio.Event) -> None:
        """Report the current status every second until ``stop`` is set."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), PROGRESS_INTERVAL)
            if self.status is not None and not stop.is_set():
                self.say(self.status())


class ServerProbe:
    """CPU seconds and RSS of the server process, read from /proc through psutil.

    With ``more`` pids (a server made of several processes, such as a WebSocket front and
    its Redis), both figures are sums over all of them.
    """

    def __init__(self, pid: int, *more: int) -> None:
        self._processes = [psutil.Process(one) for one in (pid, *more)]

    def cpu_seconds(self) -> float:
        total = 0.0
        for process in self._processes:
            times = process.cpu_times()
            total += float(times.user + times.system)
        return total

    def rss_bytes(self) -> int:
        return sum(int(process.memory_info().rss) for process in self._processes)


async def _open_subscriber(
    plan: LoadPlan, tally: Tally, index: int, opened: list[Subscriber]
) -> None:
    subscribed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    subscriber = wire_classes(plan.wire)[0](tally, subscribed)
    await ws_connect(
        lambda: subscriber,
        plan.url,
        read_buffer_init_size=CLIENT_READ_BUFFER,
        max_frame_size=CLIENT_MAX_FRAME,
    )
    opened.append(subscriber)
    subscriber.start(index)
    await subscribed


async def connect_subscribers(
    plan: LoadPlan, tally: Tally, opened: list[Subscriber], progress: Progress
) -> None:
    """Open and subscribe ``plan.subscribers`` connections, appending each to ``opened``."""
    done = 0

    def status() -> str:
        return f"connecting: {done}/{plan.subscribers} subscribed"

    with progress.showing(status):
        try:
            async with asyncio.timeout(plan.connect_timeout):
                for first in range(0, plan.subscribers, plan.concurrency):
                    last = min(plan.subscribers, first + plan.concurrency)
                    await asyncio.gather(
                        *(_open_subscriber(plan, tally, i, opened) for i in range(first, last))
                    )
                    done = last
        except TimeoutError:
            raise LoadError(
                f"only {done} of {plan.subscribers} subscribers were ready after "
                f"{plan.connect_timeout:g} s"
            ) from None
        except OSError as exc:
            raise LoadError(f"connecting subscriber {done + 1} failed: {exc}") from None


async def connect_publisher(plan: LoadPlan) -> Publisher:
    """Open the publishing connection and wait for its ``hello`` reply."""
    hello_ok: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    publisher = wire_classes(plan.wire)[1](hello_ok)
    try:
        async with asyncio.timeout(plan.connect_timeout):
            await ws_connect(lambda: publisher, plan.url, read_buffer_init_size=CLIENT_READ_BUFFER)
            publisher.start()
            await hello_ok
    except (TimeoutError, OSError) as exc:
        raise LoadError(f"the publisher could not connect: {exc!r}") from None
    return publisher


async def publish_all(plan: LoadPlan, publisher: Publisher, progress: Progress) -> int:
    """Send the plan's publishes; return how many left (fewer only on a timeout)."""
    sent = 0
    publish = publisher.publish
    size = plan.size
    rate = plan.rate
    budget = (plan.messages / rate if rate > 0 else 0.0) + PUBLISH_GRACE

    def status() -> str:
        return f"publishing: {sent}/{plan.messages} sent, {publisher.acks} acked"

    with progress.showing(status), contextlib.suppress(TimeoutError):
        async with asyncio.timeout(budget):
            start = time.monotonic()
            for i in range(plan.messages):
                if publisher.disconnected:
                    break
                if rate > 0:
                    delay = start + i / rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                elif sent - publisher.answered >= MAX_IN_FLIGHT:
                    await publisher.wait_answered(sent - MAX_IN_FLIGHT + 1)
                publish(i + 1, size, time.monotonic_ns())
                sent += 1
    return sent


async def drain(plan: LoadPlan, tally: Tally, publisher: Publisher, progress: Progress) -> None:
    """Wait for every event to arrive and every publish to be answered, or the timeout."""
    expected = tally.subscribers * tally.expected_each

    def status() -> str:
        return f"draining: {tally.received}/{expected} delivered"

    with progress.showing(status), contextlib.suppress(TimeoutError):
        async with asyncio.timeout(plan.drain_timeout):
            await tally.all_complete.wait()
            await publisher.wait_answered(plan.messages)


async def run_load(plan: LoadPlan) -> dict[str, Any]:
    """Run the plan's phases; return the raw measurements.

    Keys: ``connect_s``, ``server_rss_before``/``server_rss_after`` (bytes), and unless idle
    ``published``, ``acked``, ``publish_errors``, ``first_error``, ``delivered``,
    ``out_of_order``, ``disconnects``, ``publisher_disconnected`` (the server closed the
    publisher's connection before the end), ``duration_s`` (first publish to last delivery),
    ``latency_ms`` ({p50, p99, max}), ``latency_cdf_ms`` (see
    :func:`~agentcast.bench.peers.cdf.latency_cdf_ms`), ``server_cpu_s`` and ``load_cpu_s``
    over publish + drain.
    """
    probe = ServerProbe(plan.server_pid, *plan.extra_pids)
    tally = Tally(plan.subscribers, plan.messages)
    progress = Progress(plan.quiet)
    opened: list[Subscriber] = []
    publisher: Publisher | None = None
    stop_ticking = asyncio.Event()
    ticker = asyncio.create_task(progress.tick(stop_ticking))
    try:
        rss_before = probe.rss_bytes()
        started = time.monotonic()
        await connect_subscribers(plan, tally, opened, progress)
        result: dict[str, Any] = {
            "connect_s": round(time.monotonic() - started, 3),
            "server_rss_before": rss_before,
            "server_rss_after": probe.rss_bytes(),
        }
        if plan.messages == 0:
            return result
        publisher = await connect_publisher(plan)
        cpu_before = probe.cpu_seconds()
        load_cpu_before = time.process_time()
        first_ns = time.monotonic_ns()
        published = await publish_all(plan, publisher, progress)
        await drain(plan, tally, publisher, progress)
        server_cpu = probe.cpu_seconds() - cpu_before
        load_cpu = time.process_time() - load_cpu_before
        end_ns = tally.last_receive_ns if tally.received else time.monotonic_ns()
        result.update(
            published=published,
            acked=publisher.acks,
            publish_errors=publisher.errors,
            first_error=publisher.first_error,
            delivered=tally.received,
            out_of_order=tally.out_of_order,
            disconnects=tally.disconnects,
            publisher_disconnected=publisher.disconnected,
            duration_s=round((end_ns - first_ns) / 1e9, 6),
            server_cpu_s=round(server_cpu, 3),
            load_cpu_s=round(load_cpu, 3),
            latency_ms=latency_summary_ms(tally.latencies_ns),
            latency_cdf_ms=latency_cdf_ms(tally.latencies_ns),
        )
        return result
    finally:
        stop_ticking.set()
        await ticker
        for subscriber in opened:
            subscriber.transport.disconnect(graceful=False)
        if publisher is not None:
            publisher.transport.disconnect(graceful=False)


async def run_until_orphaned(plan: LoadPlan) -> int:
    """Run the load, but give up (status 3) if the parent process exits first."""
    return await report_until_orphaned(run_load(plan))


async def report_until_orphaned(work: Coroutine[Any, Any, dict[str, Any]]) -> int:
    """Run ``work`` and print its result as one JSON line on stdout (status 0); status 2
    (message on stderr) when it raises :class:`LoadError`, 3 when the parent exits first."""
    orphaned = asyncio.Event()
    watcher = asyncio.create_task(exit_with_parent(orphaned))
    load = asyncio.create_task(work)
    try:
        await asyncio.wait({watcher, load}, return_when=asyncio.FIRST_COMPLETED)
        if not load.done():
            load.cancel()
            with contextlib.suppress(asyncio.CancelledError, LoadError):
                await load
            return 3
        try:
            result = load.result()
        except LoadError as exc:
            print(f"bench load: {exc}", file=sys.stderr, flush=True)
            return 2
        sys.stdout.write(orjson.dumps(result).decode() + "\n")
        sys.stdout.flush()
        return 0
    finally:
        orphaned.set()
        await watcher


def main(argv: list[str] | None = None) -> int:
    plan, cpu = parse_plan(argv)
    raise_nofile_limit()
    pin_to_cpu(cpu)
    return run(run_until_orphaned(plan))


if __name__ == "__main__":
    raise SystemExit(main())
