"""A :class:`~agentcast.brokers.base.Broker` on core NATS (no JetStream).

Subjects (``prefix`` defaults to ``agentcast``): ``{prefix}.e.{topic}`` carries a topic's
events, ``{prefix}.n.{node}`` a node's direct messages, ``{prefix}.hb`` heartbeats. Every
character of an agentcast topic (``A-Z a-z 0-9 - _ : @ ~ =``, dot-separated) is legal in a
NATS subject token, and NATS wildcards mean what agentcast's mean (``*`` one token, ``>``
one or more trailing tokens), so each interest pattern is exactly one NATS subscription and
the server does all the routing. Every message body is ``encode_frame(origin, payload)``;
the connection is opened with ``no_echo`` and a node still drops anything carrying its own
origin.

Order: nats-py hands each subscription's messages to its own task, which would reorder a
publisher's events across two overlapping subscriptions. :class:`_BrokerClient`
dispatches every message straight from the connection's reader instead, so a node sees
messages in the order the server sent them (FIFO per publishing node).

One writer task publishes queued messages (FIFO). nats-py reconnects by itself, forever,
and replays every subscription on the new connection; its disconnected/reconnected
callbacks drive ``healthy`` and ``on_health``. While NATS is down the writer holds messages
in this broker's own queue (up to ``max_queue``, then the oldest are dropped and counted in
``dropped``: live delivery is at-most-once) and publishes them once the connection is back.
Interest changes are applied by one task that reconciles the wanted interests with the
open subscriptions, so callers never wait on the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import deque
from collections.abc import Callable

from nats import errors as nats_errors
from nats.aio.client import Client, Srv
from nats.aio.subscription import Subscription
from nats.aio.transport import TcpTransport

from agentcast.brokers.base import BrokerHandler, decode_frame, encode_frame

log = logging.getLogger(__name__)

MAX_BATCH = 512
"""Messages the writer publishes before it lets other tasks run."""
CLOSE_FLUSH_SECONDS = 1.0
"""How long :meth:`NatsBroker.close` spends delivering what is still queued."""
RECHECK_SECONDS = 1.0
"""How often a waiting writer or interest task re-checks the connection on its own."""
RECONNECT_WAIT_SECONDS = 1
"""Pause between two connection attempts to the same server."""
CONNECT_TIMEOUT_SECONDS = 2
START_TIMEOUT_SECONDS = 5.0
"""How long :meth:`NatsBroker.start` keeps trying to reach NATS before it gives up."""
PING_INTERVAL_SECONDS = 5
"""With two unanswered pings allowed, a silent (not closed) connection is noticed in ~15 s."""

_TOKEN_RE = re.compile(r"[^\s.*>]+")


class _BrokerClient(Client):
    """The nats-py client with two changes.

    * Every message of a live subscription goes to ``sink`` synchronously, in the order
      the server sent it (nats-py's own delivery runs one task per subscription, which
      reorders messages across overlapping subscriptions).
    * Each connection attempt first closes the socket of the previous one: nats-py
      otherwise abandons it, still open, when a reconnection attempt fails after the TCP
      connection was made (e.g. the server closes it during the handshake).
    """

    sink: Callable[[bytes, bytes], None] | None = None
    """Called with each message's subject and data."""

    async def _connect_to_server(self, s: Srv) -> None:
        if isinstance(self._transport, TcpTransport):
            self._transport.close()  # type: ignore[no-untyped-call]
        await super()._connect_to_server(s)

    async def _process_msg(
        self,
        sid: int,
        subject: bytes,
        reply: bytes,
        data: bytes,
        headers: bytes,
    ) -> None:
        sink = self.sink
        if sink is None:
            await super()._process_msg(sid, subject, reply, data, headers)
            return
        if sid not in self._subs:  # unsubscribed while the message was in flight
            return
        self.stats["in_msgs"] += 1
        self.stats["in_bytes"] += len(data)
        sink(subject, data)


class NatsBroker:
    """Core NATS broker; ``url`` as ``nats://host:port`` (``tls://`` for TLS)."""

    def __init__(self, url: str, *, prefix: str = "agentcast", max_queue: int = 100_000):
        if not all(_TOKEN_RE.fullmatch(token) for token in prefix.split(".")):
            raise ValueError(f"NATS subject prefix {prefix!r} must be dot-separated plain tokens")
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        self.url = url
        self.prefix = prefix
        self.max_queue = max_queue
        self.node_id = ""
        self.dropped = 0
        """Messages lost: dropped from a full queue, or refused by NATS (bad subject, too big)."""
        self._handler: BrokerHandler | None = None
        self._nc: _BrokerClient | None = None
        self._queue: deque[tuple[str, bytes]] = deque()
        self._wakeup = asyncio.Event()
        self._interests: set[str] = set()
        self._subscriptions: dict[str, Subscription] = {}
        self._interests_changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._healthy = False
        self._closing = False
        self._event_prefix = f"{prefix}.e."
        self._heartbeat_subject = f"{prefix}.hb"

    @property
    def healthy(self) -> bool:
        return self._healthy

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self, node_id: str, handler: BrokerHandler) -> None:
        """Connect, subscribe to this node's direct messages and to heartbeats, and start
        the writer and interest tasks. Raises ``ValueError`` for a node id that is not a
        plain NATS token, and a nats-py error or ``OSError`` if NATS is unreachable."""
        if not _TOKEN_RE.fullmatch(node_id):
            raise ValueError(f"node id {node_id!r} cannot be a NATS subject token")
        self.node_id = node_id
        self._handler = handler
        nc = _BrokerClient()
        nc.sink = self._dispatch
        connect = nc.connect(
            self.url,
            name=f"agentcast-{node_id}",
            no_echo=True,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=RECONNECT_WAIT_SECONDS,
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
            ping_interval=PING_INTERVAL_SECONDS,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
            closed_cb=self._on_closed,
        )
        try:
            # nats-py retries a first connection like a reconnection (forever here).
            await asyncio.wait_for(connect, START_TIMEOUT_SECONDS)
        except TimeoutError:
            await nc.close()
            raise ConnectionError(f"NATS at {self.url} unreachable: {nc.last_error!r}") from None
        try:
            await nc.subscribe(self._node_subject(node_id))
            await nc.subscribe(self._heartbeat_subject)
            await nc.flush(timeout=CONNECT_TIMEOUT_SECONDS)
        except BaseException:
            await nc.close()
            raise
        self._nc = nc
        self._set_health(True)
        self._tasks = [
            asyncio.create_task(self._write_loop(), name="agentcast-nats-writer"),
            asyncio.create_task(self._interest_loop(), name="agentcast-nats-interests"),
        ]

    async def close(self) -> None:
        """Publish what is queued (for at most ``CLOSE_FLUSH_SECONDS``), then disconnect.
        ``on_health`` is not called from here on."""
        if self._closing:
            return
        self._closing = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CLOSE_FLUSH_SECONDS
        self._wakeup.set()
        if self._tasks:
            writer = self._tasks[0]
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(writer), CLOSE_FLUSH_SECONDS)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        nc = self._nc
        if nc is not None:
            remaining = deadline - loop.time()
            if nc.is_connected and remaining > 0:
                with contextlib.suppress(nats_errors.Error, TimeoutError):
                    await asyncio.wait_for(nc.flush(timeout=1), remaining)
            await nc.close()
        self._healthy = False

    # -- sending -----------------------------------------------------------------------

    def publish(self, topic: str, envelope: bytes) -> None:
        self._enqueue(self._event_prefix + topic, encode_frame(self.node_id, envelope))

    def send_to(self, node_id: str, data: bytes) -> None:
        self._enqueue(self._node_subject(node_id), encode_frame(self.node_id, data))

    def heartbeat(self, data: bytes) -> None:
        self._enqueue(self._heartbeat_subject, encode_frame(self.node_id, data))

    def _enqueue(self, subject: str, message: bytes) -> None:
        while len(self._queue) >= self.max_queue:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append((subject, message))
        self._wakeup.set()

    async def _write_loop(self) -> None:
        """Publish queued messages in order while connected; wait while disconnected."""
        nc = self._nc
        assert nc is not None
        while True:
            if not self._queue or not nc.is_connected:
                if self._closing:
                    return
                self._wakeup.clear()
                if not self._queue:
                    await self._wakeup.wait()
                else:  # reconnected_cb wakes us; re-check now and then regardless
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wakeup.wait(), RECHECK_SECONDS)
                continue
            for _ in range(min(len(self._queue), MAX_BATCH)):
                if not self._queue:
                    break
                subject, message = self._queue.popleft()
                try:
                    await nc.publish(subject, message)
                except (nats_errors.BadSubjectError, nats_errors.MaxPayloadError) as exc:
                    self.dropped += 1
                    log.warning("NATS refused a message to %s (%r); dropped", subject, exc)
                except nats_errors.Error:
                    # The connection went away: keep the message for after reconnection.
                    self._queue.appendleft((subject, message))
                    break
            await asyncio.sleep(0)  # let the client's flusher and reader run

    # -- interests ---------------------------------------------------------------------

    def add_interest(self, pattern: str) -> None:
        if pattern not in self._interests:
            self._interests.add(pattern)
            self._interests_changed.set()

    def remove_interest(self, pattern: str) -> None:
        if pattern in self._interests:
            self._interests.discard(pattern)
            self._interests_changed.set()

    async def _interest_loop(self) -> None:
        """Open a subscription for each wanted interest and close the unwanted ones.

        nats-py keeps subscriptions across reconnections (and accepts (un)subscribing while
        reconnecting), so this only follows :meth:`add_interest`/:meth:`remove_interest`."""
        nc = self._nc
        assert nc is not None
        while True:
            self._interests_changed.clear()
            retry = False
            for pattern in [p for p in self._subscriptions if p not in self._interests]:
                subscription = self._subscriptions.pop(pattern)
                try:
                    await subscription.unsubscribe()
                except nats_errors.Error as exc:
                    log.warning("NATS unsubscribe of %s failed: %r", pattern, exc)
            for pattern in [p for p in self._interests if p not in self._subscriptions]:
                if pattern not in self._interests:  # removed meanwhile
                    continue
                try:
                    subscription = await nc.subscribe(self._event_prefix + pattern)
                except nats_errors.BadSubjectError:
                    log.warning("interest %r is not a valid NATS subject; ignored", pattern)
                    self._interests.discard(pattern)
                    continue
                except nats_errors.Error as exc:
                    log.warning("NATS subscribe to %s failed (%r); retrying", pattern, exc)
                    retry = True
                    break
                self._subscriptions[pattern] = subscription
            if retry:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._interests_changed.wait(), RECHECK_SECONDS)
            else:
                await self._interests_changed.wait()

    def _node_subject(self, node_id: str) -> str:
        return f"{self.prefix}.n.{node_id}"

    # -- receiving ---------------------------------------------------------------------

    def _dispatch(self, raw_subject: bytes, data: bytes) -> None:
        """Hand one message to the handler (runs inside the client's reader: never raises)."""
        handler = self._handler
        if handler is None:
            return
        subject = raw_subject.decode()
        try:
            origin, body = decode_frame(data)
        except (ValueError, UnicodeDecodeError):
            log.warning("dropping a malformed message on %s", subject)
            return
        if origin == self.node_id:
            return
        try:
            if subject.startswith(self._event_prefix):
                handler.on_event(origin, subject[len(self._event_prefix) :], body)
            elif subject == self._heartbeat_subject:
                handler.on_heartbeat(origin, body)
            else:
                handler.on_direct(origin, body)
        except Exception:
            log.exception("broker handler failed on a message from %s on %s", origin, subject)

    # -- connection callbacks ----------------------------------------------------------

    async def _on_error(self, exc: Exception) -> None:
        log.warning("NATS connection error: %r", exc)

    async def _on_disconnected(self) -> None:
        self._set_health(False)

    async def _on_reconnected(self) -> None:
        self._set_health(True)
        self._wakeup.set()

    async def _on_closed(self) -> None:
        if not self._closing and self._nc is not None:
            # nats-py only gives up on a connection the server refused for good (e.g. an
            # authorization violation); nothing more will be sent or received.
            log.error("NATS connection closed for good: %r", self._nc and self._nc.last_error)
        self._set_health(False)

    def _set_health(self, healthy: bool) -> None:
        if self._closing:
            self._healthy = False
            return
        if healthy != self._healthy:
            self._healthy = healthy
            if self._handler is not None:
                self._handler.on_health(healthy)
