"""NATS-specific broker behaviour: subject characters, order across overlapping
subscriptions, and surviving a ``kill -9`` of the NATS server."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import AsyncIterator

import pytest

from agentcast.brokers.nats import NatsBroker
from tests.brokers.conftest import NATS_URL
from tests.lbproxy import FailoverProxy

NATS_SERVER = "/usr/sbin/nats-server"
TIMEOUT = 20  # bounds every wait; reconnection attempts run about once a second


class Recorder:
    """A BrokerHandler that queues everything it receives, health changes included."""

    def __init__(self) -> None:
        self.events: asyncio.Queue[tuple[str, str, bytes]] = asyncio.Queue()
        self.direct: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self.heartbeats: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self.health: asyncio.Queue[bool] = asyncio.Queue()

    def on_event(self, origin: str, topic: str, envelope: bytes) -> None:
        self.events.put_nowait((origin, topic, envelope))

    def on_direct(self, origin: str, data: bytes) -> None:
        self.direct.put_nowait((origin, data))

    def on_heartbeat(self, origin: str, data: bytes) -> None:
        self.heartbeats.put_nowait((origin, data))

    def on_health(self, healthy: bool) -> None:
        self.health.put_nowait(healthy)

    async def next_event(self) -> tuple[str, str, bytes]:
        return await asyncio.wait_for(self.events.get(), TIMEOUT)

    async def next_health(self) -> bool:
        return await asyncio.wait_for(self.health.get(), TIMEOUT)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class NatsServerProcess:
    """A throwaway core-NATS server on a loopback port, started and killed at will."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.process: asyncio.subprocess.Process | None = None
        self._log_drain: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the server; returns once it logged that it accepts clients."""
        process = self.process = await asyncio.create_subprocess_exec(
            NATS_SERVER,
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        assert process.stderr is not None
        stderr = process.stderr
        async with asyncio.timeout(TIMEOUT):
            while b"Server is ready" not in (line := await stderr.readline()):
                assert line, "nats-server exited before it was ready"
        self._log_drain = asyncio.create_task(self._drain(stderr))

    async def kill(self) -> None:
        """SIGKILL the server and reap it (no-op if not running)."""
        process = self.process
        if process is None:
            return
        self.process = None
        if process.returncode is None:
            process.kill()
        await process.wait()
        if self._log_drain is not None:
            await self._log_drain
            self._log_drain = None

    @staticmethod
    async def _drain(stderr: asyncio.StreamReader) -> None:
        while await stderr.readline():
            pass


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def brokers(prefix: str) -> AsyncIterator[list[NatsBroker]]:
    """Brokers a test appends here are closed afterwards."""
    made: list[NatsBroker] = []
    yield made
    for broker in made:
        await broker.close()


async def started(
    brokers: list[NatsBroker], url: str, prefix: str, name: str, *, max_queue: int = 100_000
) -> tuple[NatsBroker, Recorder]:
    broker = NatsBroker(url, prefix=prefix, max_queue=max_queue)
    brokers.append(broker)
    recorder = Recorder()
    await broker.start(name, recorder)
    assert broker.healthy
    assert await recorder.next_health() is True
    return broker, recorder


async def settle(sender: NatsBroker, receiver: Recorder, receiver_broker: NatsBroker) -> None:
    """Wait until the receiver's subscriptions took effect: a probe event round-trips."""
    receiver_broker.add_interest("probe.x")
    for _ in range(50):  # subscribing is asynchronous
        sender.publish("probe.x", b"probe")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(receiver.events.get(), 0.2)
            break
    else:
        raise AssertionError("the probe never arrived")
    while not receiver.events.empty():
        receiver.events.get_nowait()


async def test_every_topic_character_is_a_legal_subject(
    brokers: list[NatsBroker], prefix: str
) -> None:
    a, _ = await started(brokers, NATS_URL, prefix, "a")
    b, rb = await started(brokers, NATS_URL, prefix, "b")
    odd = "Az09-_:@~="
    b.add_interest(f"{odd}.*")
    b.add_interest(f"x.{odd}.>")
    await settle(a, rb, b)
    a.publish(f"{odd}.{odd}", b"1")
    a.publish(f"x.{odd}.y.z", b"2")
    assert await rb.next_event() == ("a", f"{odd}.{odd}", b"1")
    assert await rb.next_event() == ("a", f"x.{odd}.y.z", b"2")


async def test_partially_overlapping_interests_keep_publisher_order(
    brokers: list[NatsBroker], prefix: str
) -> None:
    a, _ = await started(brokers, NATS_URL, prefix, "a")
    b, rb = await started(brokers, NATS_URL, prefix, "b")
    b.add_interest("acme.*.chat")
    b.add_interest("acme.run.>")
    await settle(a, rb, b)
    topics = ["acme.run.chat", "acme.run.log", "acme.other.chat"]  # both, 2nd, 1st
    count = 3000
    for n in range(count):
        a.publish(topics[n % 3], str(n).encode())
    first_seen: list[int] = []
    seen: set[int] = set()
    while len(seen) < count:
        _, topic, body = await rb.next_event()
        n = int(body)
        assert topic == topics[n % 3]
        if n not in seen:
            seen.add(n)
            first_seen.append(n)
    assert first_seen == list(range(count))


async def test_start_fails_when_nats_is_unreachable(prefix: str) -> None:
    broker = NatsBroker(f"nats://127.0.0.1:{free_port()}", prefix=prefix)
    recorder = Recorder()
    with pytest.raises(ConnectionError):
        await broker.start("a", recorder)
    assert not broker.healthy
    assert recorder.health.empty()
    await broker.close()


def test_unusable_names_are_refused() -> None:
    for prefix in ("", "a..b", "a.*", "a b", "a.>"):
        with pytest.raises(ValueError):
            NatsBroker(NATS_URL, prefix=prefix)


async def test_unusable_node_id_is_refused(prefix: str) -> None:
    broker = NatsBroker(NATS_URL, prefix=prefix)
    for node_id in ("", "a.b", "*", ">", "a b"):
        with pytest.raises(ValueError):
            await broker.start(node_id, Recorder())
    await broker.close()


async def test_survives_a_nats_restart(brokers: list[NatsBroker], prefix: str) -> None:
    port = free_port()
    server = NatsServerProcess(port)
    # ``a`` reaches the server through a proxy that can hold it off after the restart,
    # so that ``b`` is subscribed again before ``a`` sends what it queued meanwhile.
    gate = FailoverProxy([port])
    try:
        await server.start()
        await gate.start()
        a, ra = await started(brokers, f"nats://127.0.0.1:{gate.port}", prefix, "a", max_queue=2)
        b, rb = await started(brokers, f"nats://127.0.0.1:{port}", prefix, "b")
        b.add_interest("acme.>")
        b.add_interest("gone.x")
        await settle(a, rb, b)

        gate.backends = []  # connections to the gate are now closed at once
        await server.kill()
        assert await ra.next_health() is False
        assert await rb.next_health() is False
        assert not a.healthy and not b.healthy

        for n in range(3):  # max_queue=2: the oldest is dropped
            a.publish("acme.queued", str(n).encode())
        assert a.dropped == 1
        b.add_interest("late.x")
        b.remove_interest("gone.x")

        await server.start()
        assert await rb.next_health() is True
        assert b.healthy
        assert not a.healthy
        gate.backends = [port]
        assert await ra.next_health() is True
        assert a.healthy

        assert await rb.next_event() == ("a", "acme.queued", b"1")
        assert await rb.next_event() == ("a", "acme.queued", b"2")
        a.publish("gone.x", b"not for b any more")
        a.publish("acme.after", b"after")
        a.publish("late.x", b"late")
        assert await rb.next_event() == ("a", "acme.after", b"after")
        assert await rb.next_event() == ("a", "late.x", b"late")
        a.send_to("b", b"direct")
        assert await asyncio.wait_for(rb.direct.get(), TIMEOUT) == ("a", b"direct")
        a.heartbeat(b"beat")
        assert await asyncio.wait_for(rb.heartbeats.get(), TIMEOUT) == ("a", b"beat")
        assert ra.health.empty() and rb.health.empty()
    finally:
        await server.kill()
        await gate.close()


async def test_close_while_nats_is_down(brokers: list[NatsBroker], prefix: str) -> None:
    server = NatsServerProcess(free_port())
    try:
        await server.start()
        url = f"nats://127.0.0.1:{server.port}"
        a, ra = await started(brokers, url, prefix, "a")
        await server.kill()
        assert await ra.next_health() is False
        a.publish("acme.x", b"never delivered")
        await asyncio.wait_for(a.close(), TIMEOUT)
        assert not a.healthy
        assert ra.health.empty(), "closing reports no health change"
    finally:
        await server.kill()
