"""One load process of the sessions benchmark: ``python -m agentcast.bench.sessions_load``.

It drives the sessions ``[--first, --first + --count)`` of the plan
(:mod:`agentcast.bench.sessions_plan`), in phases bounded in time:

1. **connect**: every observer, then every agent, in batches of ``--concurrency``; each
   sends ``hello`` and its subscribes and waits for the oks. Then it prints ``CONNECTED <n>``
   on stdout and waits for ``GO <t0>`` on stdin (``t0`` in ``time.monotonic_ns()``, shared
   by every process of the machine), so several load processes start together.
2. **publish**: open-loop, ``--rate`` publishes per second from ``t0`` for ``--warmup`` +
   ``--seconds`` seconds; latencies are kept for messages sent in the measured window
   ``[t0 + warmup, t0 + warmup + seconds)``. When the loop falls behind, the due messages
   leave at once; how late they left is recorded (the send lag), so a saturated load shows.
3. **drain**: wait until every expected delivery arrived and every publish was answered, at
   most ``--drain-timeout`` seconds.

It then writes its raw latencies (native ``int64`` nanoseconds) to ``<--out>.e2e``,
``<--out>.ack`` and ``<--out>.lag`` and prints them as one JSON line (see :func:`run_load`).
Exit status 0 with a result, 2 when a phase failed (message on stderr), 3 when the parent
went away.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import sys
import time
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from picows import WSMsgType, ws_connect

from agentcast.bench.process import exit_with_parent, pin_to_cpu, raise_nofile_limit
from agentcast.bench.sessions_clients import Client, Tally, hello_frame, subscribe_frame
from agentcast.bench.sessions_plan import (
    chat_deliveries,
    chat_topic,
    direct_deliveries,
    global_pattern,
    inbox_topic,
    message_of,
    messages_due,
    messages_of,
    observer_pattern,
)
from agentcast.runtime import run

CLIENT_READ_BUFFER = 4096
CLIENT_MAX_FRAME = 4 * 1024 * 1024
FIRST_PUBLISH_ID = 100
CONNECTED_PREFIX = "CONNECTED "
GO_PREFIX = "GO "
PAD_FIXED = 13  # len('{"t":,"p":""}') without the digits of the time


class LoadError(Exception):
    """A phase could not complete (the message says which and why)."""


class GcClock:
    """Total and longest time spent in the garbage collector while :meth:`watching`."""

    def __init__(self) -> None:
        self.total_ns = 0
        self.longest_ns = 0
        self._started = 0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        now = time.perf_counter_ns()
        if phase == "start":
            self._started = now
        elif self._started:
            spent = now - self._started
            self.total_ns += spent
            self.longest_ns = max(self.longest_ns, spent)

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        gc.callbacks.append(self._callback)
        try:
            yield
        finally:
            gc.callbacks.remove(self._callback)


@dataclass(slots=True, frozen=True)
class LoadArgs:
    """What one load process does."""

    url: str
    first: int
    count: int
    agents: int
    observers: int
    rate: float
    seconds: float
    warmup: float
    size: int
    direct: float
    policy: str | None
    out: str
    connect_timeout: float
    go_timeout: float
    drain_timeout: float
    concurrency: int
    global_observers: int = 0
    global_messages: int = 0

    def to_args(self) -> list[str]:
        """The command line that :func:`parse_args` turns back into these arguments."""
        args = [
            f"--url={self.url}",
            f"--first={self.first}",
            f"--count={self.count}",
            f"--agents={self.agents}",
            f"--observers={self.observers}",
            f"--rate={self.rate!r}",
            f"--seconds={self.seconds!r}",
            f"--warmup={self.warmup!r}",
            f"--size={self.size}",
            f"--direct={self.direct!r}",
            f"--out={self.out}",
            f"--connect-timeout={self.connect_timeout!r}",
            f"--go-timeout={self.go_timeout!r}",
            f"--drain-timeout={self.drain_timeout!r}",
            f"--concurrency={self.concurrency}",
            f"--global-observers={self.global_observers}",
            f"--global-messages={self.global_messages}",
        ]
        if self.policy is not None:
            args.append(f"--policy={self.policy}")
        return args


def parse_args(argv: list[str] | None) -> tuple[LoadArgs, int | None]:
    """Parse the command line into the load's arguments and the CPU to pin to."""
    parser = argparse.ArgumentParser(prog="python -m agentcast.bench.sessions_load")
    for name in ("--url", "--out"):
        parser.add_argument(name, required=True)
    for name in ("--first", "--count", "--agents", "--observers", "--size", "--concurrency"):
        parser.add_argument(name, type=int, required=True)
    parser.add_argument("--global-observers", type=int, default=0)
    parser.add_argument("--global-messages", type=int, default=0)
    for name in ("--rate", "--seconds", "--warmup", "--direct"):
        parser.add_argument(name, type=float, required=True)
    for name in ("--connect-timeout", "--go-timeout", "--drain-timeout"):
        parser.add_argument(name, type=float, required=True)
    parser.add_argument("--policy", default=None)
    parser.add_argument("--cpu", type=int, default=None)
    a = parser.parse_args(argv)
    load = LoadArgs(
        a.url, a.first, a.count, a.agents, a.observers, a.rate, a.seconds, a.warmup, a.size,
        a.direct, a.policy, a.out, a.connect_timeout, a.go_timeout, a.drain_timeout,
        max(1, a.concurrency), a.global_observers, a.global_messages,
    )  # fmt: skip
    return load, a.cpu


async def _open(url: str, tally: Tally, name: str, topics: list[str], policy: str | None) -> Client:
    ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    client = Client(tally, len(topics), ready)
    await ws_connect(
        lambda: client,
        url,
        read_buffer_init_size=CLIENT_READ_BUFFER,
        max_frame_size=CLIENT_MAX_FRAME,
    )
    client.transport.send(WSMsgType.TEXT, hello_frame(name))
    for index, topic in enumerate(topics):
        client.transport.send(WSMsgType.TEXT, subscribe_frame(index, topic, policy))
    await ready
    return client


async def connect_all(load: LoadArgs, tally: Tally, opened: list[Client]) -> list[list[Client]]:
    """Open the observers (the tenant-wide ones first), then the agents; return the agents
    of each local session."""
    specs = [(f"ui-{g}", [global_pattern()]) for g in range(load.global_observers)]
    for n in range(load.first, load.first + load.count):
        specs += [(f"s{n}-ui-{o}", [observer_pattern(n)]) for o in range(load.observers)]
    for n in range(load.first, load.first + load.count):
        specs += [(f"s{n}-a{a}", [chat_topic(n), inbox_topic(n, a)]) for a in range(load.agents)]
    try:
        async with asyncio.timeout(load.connect_timeout):
            for start in range(0, len(specs), load.concurrency):
                batch = specs[start : start + load.concurrency]
                opened += await asyncio.gather(
                    *(_open(load.url, tally, name, topics, load.policy) for name, topics in batch)
                )
    except TimeoutError:
        raise LoadError(
            f"only {len(opened)} of {len(specs)} connections were ready after "
            f"{load.connect_timeout:g} s"
        ) from None
    except OSError as exc:
        raise LoadError(f"connection {len(opened) + 1} failed: {exc}") from None
    agents = opened[load.global_observers + load.count * load.observers :]
    return [agents[j * load.agents : (j + 1) * load.agents] for j in range(load.count)]


async def wait_go(within: float) -> int:
    """Read ``GO <t0>`` from stdin (within ``within`` seconds); return ``t0``."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    try:
        async with asyncio.timeout(within):
            line = (await reader.readline()).decode()
    except TimeoutError:
        raise LoadError(f"no GO within {within:g} s") from None
    finally:
        transport.close()
    if not line.startswith(GO_PREFIX):
        raise LoadError(f"expected GO, got {line!r}")
    return int(line[len(GO_PREFIX) :])


async def publish_all(
    load: LoadArgs, tally: Tally, agents: list[list[Client]], t0: int, lag: array[int]
) -> int:
    """Send every message on its schedule; return how many were sent."""
    total = messages_of(load.rate, load.warmup + load.seconds)
    chat = [chat_topic(n).encode() for n in range(load.first, load.first + load.count)]
    inbox = [
        [inbox_topic(n, a).encode() for a in range(load.agents)]
        for n in range(load.first, load.first + load.count)
    ]
    pad = b"x" * max(0, load.size - PAD_FIXED - 19)
    to_chat = chat_deliveries(load.agents, load.observers)
    to_inbox = direct_deliveries(load.observers)
    # The tenant-wide observers of the first process receive every process's messages.
    tally.expected += load.global_observers * load.global_messages
    start = t0 / 1e9
    sent = 0
    while sent < total:
        now = time.monotonic()
        due = messages_due(now - start, load.rate, total)
        while sent < due:
            msg = message_of(sent, load.count, load.agents, load.direct)
            sender = agents[msg.session][msg.sender]
            if msg.target is None:
                topic, fanout = chat[msg.session], to_chat
            else:
                topic, fanout = inbox[msg.session][msg.target], to_inbox
            tally.expected += fanout
            sent_ns = sender.publish(FIRST_PUBLISH_ID + sent, topic, pad)
            if tally.in_window(sent_ns):
                lag.append(sent_ns - (t0 + int(sent * 1e9 / load.rate)))
            sent += 1
        if sent < total:
            delay = start + sent / load.rate - time.monotonic()
            await asyncio.sleep(max(0.0, delay))
    return sent


def write_samples(prefix: str, samples: dict[str, array[int]]) -> None:
    """Write each array of nanoseconds to ``<prefix>.<name>`` (native int64)."""
    for name, values in samples.items():
        Path(f"{prefix}.{name}").write_bytes(values.tobytes())


async def run_load(load: LoadArgs, opened: list[Client]) -> dict[str, Any]:
    """Run the phases with the connections in ``opened`` (the caller closes them once the
    result is out); return the raw measurements.

    Keys: ``connections``, ``connect_s``, ``published``, ``expected``, ``received``,
    ``received_in_window``, ``acked``, ``publish_errors``, ``first_error``, ``disconnects``
    (before the end), ``settled`` (everything arrived within the drain timeout),
    ``drain_s``, ``load_cpu_s`` (publish + drain), ``gc_s`` and ``gc_longest_ms`` (time in
    the garbage collector, publish + drain), ``e2e``/``ack``/``lag`` (sample counts).
    """
    tally = Tally()
    lag: array[int] = array("q")
    started = time.monotonic()
    agents = await connect_all(load, tally, opened)
    connect_s = time.monotonic() - started
    # The connections live until the end: keep the collector from walking them again.
    gc.collect()
    gc.freeze()
    sys.stdout.write(f"{CONNECTED_PREFIX}{len(opened)}\n")
    sys.stdout.flush()
    t0 = await wait_go(load.go_timeout)
    tally.window_start_ns = t0 + int(load.warmup * 1e9)
    tally.window_end_ns = tally.window_start_ns + int(load.seconds * 1e9)
    cpu_before = time.process_time()
    collector = GcClock()
    with collector.watching():
        published = await publish_all(load, tally, agents, t0, lag)
        tally.finish()
        drain_started = time.monotonic()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(load.drain_timeout):
                await tally.settled.wait()
    result: dict[str, Any] = {
        "connections": len(opened),
        "connect_s": round(connect_s, 3),
        "published": published,
        "expected": tally.expected,
        "received": tally.received,
        "received_in_window": tally.received_in_window,
        "acked": tally.acked,
        "publish_errors": tally.publish_errors,
        "first_error": tally.first_error,
        "disconnects": tally.disconnects,
        "settled": tally.settled.is_set(),
        "drain_s": round(time.monotonic() - drain_started, 3),
        "load_cpu_s": round(time.process_time() - cpu_before, 3),
        "gc_s": round(collector.total_ns / 1e9, 3),
        "gc_longest_ms": round(collector.longest_ns / 1e6, 3),
        "e2e": len(tally.e2e_ns),
        "ack": len(tally.ack_ns),
        "lag": len(lag),
    }
    write_samples(load.out, {"e2e": tally.e2e_ns, "ack": tally.ack_ns, "lag": lag})
    return result


async def report_until_orphaned(load: LoadArgs) -> int:
    """Run the load and print its result as one JSON line on stdout (status 0); status 2
    (message on stderr) on a :class:`LoadError`, 3 when the parent exits first."""
    orphaned = asyncio.Event()
    watcher = asyncio.create_task(exit_with_parent(orphaned))
    opened: list[Client] = []
    work = asyncio.create_task(run_load(load, opened))
    try:
        await asyncio.wait({watcher, work}, return_when=asyncio.FIRST_COMPLETED)
        if not work.done():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError, LoadError):
                await work
            return 3
        try:
            result = work.result()
        except LoadError as exc:
            print(f"bench sessions load: {exc}", file=sys.stderr, flush=True)
            return 2
        sys.stdout.write(orjson.dumps(result).decode() + "\n")
        sys.stdout.flush()
        return 0
    finally:
        for client in opened:
            client.transport.disconnect(graceful=False)
        orphaned.set()
        await watcher


def main(argv: list[str] | None = None) -> int:
    load, cpu = parse_args(argv)
    raise_nofile_limit()
    pin_to_cpu(cpu)
    return run(report_until_orphaned(load))


if __name__ == "__main__":
    raise SystemExit(main())
